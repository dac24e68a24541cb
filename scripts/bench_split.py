#!/usr/bin/env python3
"""A model split over machines (issue 35, `make bench-split`): generation tokens/s of the real demo
model (SmolLM2-135M-Instruct) split over two RPC workers on loopback against the same file loaded
whole, side by side, and the ratio.

Four Corral nodes on one throw-away PostgreSQL: `w1` and `w2` offer their CPU as RPC workers
(`cluster.rpc`: a ggml-rpc-server each behind Corral's gate), `main` has a memory budget of half
what the model needs, so it loads the model split over itself and both workers (llama-server with
`--rpc` through Corral's tunnels); a single Corral loads the same file whole. Both are warmed, then
each round asks both the same prompts at temperature 0, alternating which goes first; every pair of
answers must be identical, or the run stops.

On this machine the run shows the mechanism and its cost, not a gain: the "machines" are processes
on the same two cores, so the split adds the RPC round trips (every token crosses to the workers
and back for each of their layers) and takes nothing off anyone's plate. A split pays where a model
does not fit one machine at all, or where the workers bring accelerators; run it across GPU
machines for that.

Usage: CORRAL_BIN=.build-release/release/corral .venv-test/bin/python scripts/bench_split.py
[--rounds 3] [--tokens 64]"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

import httpx

from corral_harness import corral as harness
from corral_harness.corral import start_corral, stop_corral
from corral_harness.postgres import Postgres
from corral_harness.results import record
from corral_harness.rpc_cluster import reservations, start_node, stop_nodes
from corral_harness.waiting import wait_until

PROMPTS = [
    "List the planets of the solar system in order from the sun, one per line.",
    "Explain step by step how to make a cup of tea.",
    "Write a short story about a fox who learns to read.",
]
CONTEXT = 2048


def ask(base: str, prompt: str, tokens: int) -> tuple[dict, float]:
    body = {"model": "big", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0}
    started = time.perf_counter()
    r = httpx.post(base + "/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    return r.json(), time.perf_counter() - started


def instance(c, token: str) -> dict:
    h = {"authorization": f"Bearer {token}"}
    return next(i for i in httpx.get(c.base + "/admin/instances", headers=h).json() if i["model"] == "big")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    args = ap.parse_args()
    root = os.path.join(os.path.dirname(__file__), "..")
    model = subprocess.run([os.path.join(root, "scripts", "get-demo-model.sh")], check=True, capture_output=True, text=True).stdout.strip()
    whole = start_corral(directory=tempfile.mkdtemp(prefix="corral-bench-split-"),
                         extra_models=[{"name": "big", "path": model, "contextSize": CONTEXT, "parallel": 1}], extra_config={"cache": {"ramMiB": 0}})
    pg = Postgres()
    nodes = []
    seen = {"whole": {"server": [], "client": []}, "split": {"server": [], "client": []}}
    pairs = {"server": [], "client": []}
    try:
        ask(whole.base, "Hello", 4)
        need = instance(whole, whole.admin_token)["projectedMiB"]
        # This node keeps its compute buffer and the embeddings (about half of it here) and a few layers.
        budget = int(need * 0.65)
        for name in ("w1", "w2"):
            nodes.append(start_node(pg, name, rpc_port=harness.free_port(), worker_mib=need))
        main_node = start_node(pg, "main", model=model, budget=budget, context=CONTEXT)
        nodes.append(main_node)
        wait_until(lambda: pg.query("SELECT COUNT(*) FROM rpc_worker") == "2", 30, "both workers in the registry")
        ask(main_node.base, "Hello", 4)
        parts = instance(main_node, nodes[0].admin_token)["split"]  # the first node wrote the cluster's token
        assert parts and len(parts) == 3, parts
        where = ", ".join(f"{p['node']} {p['layers']} layers {p['memoryMiB']} MiB" for p in parts)
        print(f"whole: {need} MiB projected; main's budget {budget} MiB; split: {where}; reserved {reservations(pg)}", flush=True)
        bases = {"whole": whole.base, "split": main_node.base}
        for r in range(args.rounds):
            for p, prompt in enumerate(PROMPTS):
                answers = {}
                for name in ("whole", "split") if (r + p) % 2 == 0 else ("split", "whole"):
                    body, wall = ask(bases[name], prompt, args.tokens)
                    seen[name]["server"].append(body["timings"]["predicted_per_second"])
                    seen[name]["client"].append(body["usage"]["completion_tokens"] / wall)
                    answers[name] = body["choices"][0]["message"]["content"]
                assert answers["whole"] == answers["split"], ("the split model answered differently", answers)
                for k in pairs:
                    pairs[k].append(seen["split"][k][-1] / seen["whole"][k][-1])
                print(f"round {r + 1} prompt {p + 1}: {seen['whole']['server'][-1]:.1f} tokens/s whole, "
                      f"{seen['split']['server'][-1]:.1f} split (same answer): {pairs['server'][-1]:.2f}x", flush=True)
    finally:
        stop_nodes(nodes)
        pg.close()
        stop_corral(whole)
    med = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in seen.items()}
    ratio = statistics.median(pairs["server"])
    client_ratio = statistics.median(pairs["client"])
    print(f"medians over {args.rounds} rounds x {len(PROMPTS)} prompts ({args.tokens} tokens each, SmolLM2-135M-Instruct, split: {where}):")
    for m in ("whole", "split"):
        print(f"  {m}: {med[m]['server']:.1f} tokens/s (llama-server), {med[m]['client']:.1f} tokens/s (client, wall time)")
    print(f"split / whole, median of the pairs' ratios: {ratio:.2f}x (llama-server), {client_ratio:.2f}x (client)")
    print("On this machine this shows the mechanism and the RPC cost on loopback, not a gain: the workers are processes on the same "
          "two cores, so a split only adds round trips. A split pays where the model fits no single machine, or the workers bring GPUs.")
    bench = "bench-split"
    notes = (f"SmolLM2-135M-Instruct over two loopback RPC workers ({where}), {args.rounds} rounds x {len(PROMPTS)} prompts x "
             f"{args.tokens} tokens, one slot; on 2 shared CPU cores: the mechanism and the loopback RPC cost, not a gain")
    record(bench, "split.tokens_per_second_ratio", "Split over two RPC workers: generation tokens/s split over whole (llama-server's rate, median of back-to-back pairs)",
           round(ratio, 3), "×", notes=notes)
    record(bench, "split.client_tokens_per_second_ratio", "Split over two RPC workers: tokens/s split over whole, client wall time (median of back-to-back pairs)",
           round(client_ratio, 3), "×", notes=notes)
    record(bench, "split.tokens_per_second_split", "Split over two RPC workers: generation tokens/s split", round(med["split"]["server"], 1), "tokens/s", notes=notes)
    record(bench, "split.tokens_per_second_whole", "Split over two RPC workers: generation tokens/s whole", round(med["whole"]["server"], 1), "tokens/s", notes=notes)


if __name__ == "__main__":
    main()
