#!/usr/bin/env python3
"""The quant ladder on the real demo model: SmolLM2-135M-Instruct (its Q4_1 file dequantized to
F32 with llama-quantize, the only unquantized weights we can ship), laddered through Corral on an
English text (Debian's GPL-3 licence by default) and printed as a table with the wall time.
KL divergence is measured against that F32 copy: the ladder shows what each type loses relative to
the weights it starts from, here Q4_1's. Usage: CORRAL_BIN=.build/debug/corral .venv-test/bin/python
scripts/bench_quant_ladder.py [--text FILE] [--context 512] [--chunks 8] [--max-kld 0.05]"""
import argparse
import hashlib
import json
import os
import subprocess
import tempfile
import time

import httpx

from corral_harness.corral import llama_tool, start_corral, stop_corral
from corral_harness.results import record


def record_ladder(args, result: dict, elapsed: float) -> None:
    """The ladder's headline measures, appended to the results file."""
    bench = "bench-quant-ladder"
    notes = f"{os.path.basename(args.text)}, {args.chunks} chunks of {args.context} tokens"
    rungs = {x["type"]: x for x in result["rungs"]}
    best = rungs.get(result.get("recommended"))
    if best:
        record(bench, "quant_ladder.recommended_kld", "The recommended type's mean KL divergence against the F32 base",
               round(best["meanKLD"], 5), "", goal=f"≤ {args.max_kld:g}", met=best["meanKLD"] <= args.max_kld, notes=best["type"])
        record(bench, "quant_ladder.recommended_size_pct", "The recommended type's size, share of the F32 base",
               round(best["sizeRatio"] * 100, 1), "%", notes=best["type"])
    record(bench, "quant_ladder.base_perplexity", "The F32 base's perplexity on the text", round(result["basePerplexity"], 3), "", notes=notes)
    record(bench, "quant_ladder.wall_s", "The whole ladder, wall time", round(elapsed), "s", notes=notes)
    for kind, x in rungs.items():
        record(bench, f"quant_ladder.{kind.lower()}_mean_kld", f"{kind}: mean KL divergence against the F32 base", round(x["meanKLD"], 5), "",
               notes=notes)
        record(bench, f"quant_ladder.{kind.lower()}_size_mib", f"{kind}: file size", round(x["bytes"] / 2**20, 1), "MiB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--max-kld", type=float, default=0.05)
    args = ap.parse_args()
    root = os.path.join(os.path.dirname(__file__), "..")
    source = subprocess.run([os.path.join(root, "scripts", "get-demo-model.sh")], check=True, capture_output=True, text=True).stdout.strip()
    directory = tempfile.mkdtemp(prefix="corral-bench-ladder-")
    f32 = os.path.join(directory, "smollm2-f32.gguf")
    subprocess.run([llama_tool("llama-quantize"), "--allow-requantize", source, f32, "F32"], check=True, capture_output=True)
    c = start_corral(directory=directory, extra_models=[{"name": "smollm2-f32", "path": f32, "contextSize": 2048, "parallel": 1}])
    try:
        text = open(args.text, encoding="utf-8").read()
        started = time.perf_counter()
        r = httpx.post(c.base + "/admin/quant-ladder", headers={"authorization": f"Bearer {c.admin_token}"}, timeout=60,
                       json={"model": "smollm2-f32", "text": text, "contextSize": args.context, "chunks": args.chunks, "maxKLD": args.max_kld})
        r.raise_for_status()
        job_id = r.json()["id"]
        while True:
            job = httpx.get(c.base + f"/admin/jobs/{job_id}", headers={"authorization": f"Bearer {c.admin_token}"}).json()
            if job["state"] in ("succeeded", "failed", "cancelled", "interrupted"):
                break
            time.sleep(1)
        elapsed = time.perf_counter() - started
        assert job["state"] == "succeeded", job
        result = job["result"]
        print(f"SmolLM2-135M-Instruct (F32 from Q4_1, {result['baseBytes'] / 2**20:.0f} MiB), text {os.path.basename(args.text)} "
              f"(sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]}), {args.chunks} chunks of {args.context} tokens; "
              f"base perplexity {result['basePerplexity']:.3f}; ladder wall time {elapsed:.0f} s")
        print("| type | size MiB | of base | fit | prompt tok/s | generation tok/s | perplexity | mean KLD | same top token | fallback tensors |")
        print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
        for x in result["rungs"]:
            print(f"| {x['type']} | {x['bytes'] / 2**20:.1f} | {x['sizeRatio'] * 100:.0f}% | {x['fit']} | {x['promptTPS']:.0f} | "
                  f"{x['generationTPS']:.0f} | {x['perplexity']:.3f} | {x['meanKLD']:.5f} | {x['sameTopPercent']:.1f}% | {x['fallbackTensors']} |")
        print(f"recommended: {result.get('recommended')} — {result['reason']}")
        print(json.dumps({"wallSeconds": elapsed, "result": result}))
        record_ladder(args, result, elapsed)
    finally:
        stop_corral(c)


if __name__ == "__main__":
    main()
