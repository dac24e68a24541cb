#!/usr/bin/env python3
"""Warm swaps on the real demo model (issue 34, `make bench-cache`): the time to first token of a
conversation's next turn after its model was swapped out and back in, with its KV cache restored
(warm) against the same model with warm swaps off (cold), and against the turn before the swap
(never swapped); and what the swap itself costs (the unload, save included, and the load, restore
included). Both models are the same file in one Corral, one slot each, asked in alternation.
Usage: CORRAL_BIN=.build-release/release/corral .venv-test/bin/python scripts/bench_cache.py
[--rounds 3] [--system-words 1100]"""
import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile
import time

import httpx

from corral_harness.corral import start_corral, stop_corral
from corral_harness.results import record

WORDS = ("river stone garden lantern harbor meadow copper violet thunder candle orchard winter signal "
         "marble falcon compass velvet ember quarry saddle pepper ribbon tunnel beacon timber glacier").split()


def system_prompt(seed: int, words: int) -> str:
    rng = random.Random(seed)
    return "You answer questions about this inventory. " + " ".join(rng.choice(WORDS) for _ in range(words))


def turn(c, model: str, messages: list) -> tuple[float, str, dict]:
    """Streams one turn; the seconds to its first content, the answer and llama-server's timings."""
    started = time.perf_counter()
    first, text, timings = None, "", {}
    body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", c.base + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            timings = event.get("timings") or timings
            if event.get("usage"):
                usage = event["usage"]
                timings = {"cache_n": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"), "prompt_n": usage.get("prompt_tokens"), **timings}
            if '"content":"' in line:
                first = first or time.perf_counter() - started
                for choice in event.get("choices", []):
                    text += (choice.get("delta") or {}).get("content") or ""
    return (first if first is not None else time.perf_counter() - started), text, timings


def timed_post(c, path: str) -> float:
    started = time.perf_counter()
    r = httpx.post(c.base + path, headers=c.h, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - started


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--system-words", type=int, default=1100, help="about 1,500 tokens at the default")
    args = ap.parse_args()
    root = os.path.join(os.path.dirname(__file__), "..")
    model = subprocess.run([os.path.join(root, "scripts", "get-demo-model.sh")], check=True, capture_output=True, text=True).stdout.strip()
    directory = tempfile.mkdtemp(prefix="corral-bench-cache-")
    common = {"path": model, "contextSize": 8192, "parallel": 1}
    c = start_corral(directory=directory, extra_models=[{"name": "warm", **common}, {"name": "cold", **common, "warmSwap": False}])
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    seen = {m: {"stay": [], "after": [], "unload": [], "load": []} for m in ("warm", "cold")}
    try:
        for r in range(args.rounds):
            for name in ("warm", "cold") if r % 2 == 0 else ("cold", "warm"):
                messages = [{"role": "system", "content": system_prompt(r * 2 + (name == "cold"), args.system_words)},
                            {"role": "user", "content": "Which item comes first?"}]
                _, answer, _ = turn(c, name, messages)
                messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And which comes last?"}]
                stay, answer, stay_timings = turn(c, name, messages)
                seen[name]["unload"].append(timed_post(c, f"/admin/models/{name}/unload"))
                seen[name]["load"].append(timed_post(c, f"/admin/models/{name}/load"))
                messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "How many are there?"}]
                after, _, after_timings = turn(c, name, messages)
                seen[name]["stay"].append(stay)
                seen[name]["after"].append(after)
                print(f"round {r + 1} {name}: next turn {stay * 1000:.0f} ms never swapped, {after * 1000:.0f} ms after the swap; "
                      f"unload {seen[name]['unload'][-1] * 1000:.0f} ms, load {seen[name]['load'][-1] * 1000:.0f} ms; "
                      f"cache_n/prompt_n {stay_timings.get('cache_n')}/{stay_timings.get('prompt_n')} then "
                      f"{after_timings.get('cache_n')}/{after_timings.get('prompt_n')}", flush=True)
        metrics = httpx.get(c.base + "/metrics", headers=c.h).text
    finally:
        stop_corral(c)
    med = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in seen.items()}
    warm_vs_stay = med["warm"]["after"] / med["warm"]["stay"]
    cold_over_warm = med["cold"]["after"] / med["warm"]["after"]
    unload_ratio = med["warm"]["unload"] / med["cold"]["unload"]
    # The swap: out (unload, the save included) and back in (load, the restore included).
    swap_ratio = (med["warm"]["unload"] + med["warm"]["load"]) / (med["cold"]["unload"] + med["cold"]["load"])
    print(f"medians over {args.rounds} rounds (SmolLM2-135M-Instruct, {args.system_words}-word system prompt, one slot):")
    for m in ("warm", "cold"):
        print(f"  {m}: never swapped {med[m]['stay'] * 1000:.0f} ms, after the swap {med[m]['after'] * 1000:.0f} ms, "
              f"unload {med[m]['unload'] * 1000:.0f} ms, load {med[m]['load'] * 1000:.0f} ms")
    print(f"warm after swap / never swapped: {warm_vs_stay:.2f} (goal ≤ 1.3); cold / warm after swap: {cold_over_warm:.1f}× (goal ≥ 3); "
          f"swap out and in with save and restore / without: {swap_ratio:.2f} (goal ≤ 1.2); the unload alone: {unload_ratio:.2f}")
    print("\n".join(line for line in metrics.splitlines() if line.startswith("corral_warm_swap")))
    bench, notes = "bench-cache", f"SmolLM2-135M-Instruct, {args.system_words}-word system prompt, {args.rounds} rounds, one slot"
    record(bench, "cache.warm_swap_ttft_vs_never_swapped", "Warm swap: time to first token after the swap over the never-swapped turn",
           round(warm_vs_stay, 3), "×", goal="≤ 1.3", met=warm_vs_stay <= 1.3, notes=notes)
    record(bench, "cache.cold_over_warm_swap_ttft", "Warm swap: cold time to first token after a swap over the restored one",
           round(cold_over_warm, 2), "×", goal="≥ 3", met=cold_over_warm >= 3, notes=notes)
    record(bench, "cache.swap_with_save_and_restore_ratio", "Warm swap: unload and load again with the save and restore over without",
           round(swap_ratio, 3), "×", goal="≤ 1.2", met=swap_ratio <= 1.2, notes=notes)
    record(bench, "cache.swap_out_with_save_ratio", "Warm swap: unload with the save over unload without (the save's share)", round(unload_ratio, 3), "×",
           notes=notes)
    record(bench, "cache.warm_swap_ttft_ms", "Warm swap: time to first token after the swap, restored", round(med["warm"]["after"] * 1000, 1), "ms", notes=notes)
    record(bench, "cache.cold_swap_ttft_ms", "Warm swap: time to first token after the swap, cold", round(med["cold"]["after"] * 1000, 1), "ms", notes=notes)


if __name__ == "__main__":
    main()
