#!/usr/bin/env python3
"""Tuning strategies against the exhaustive grid on one fixed runtime space of 48 candidates
(ubatch × threads × flash attention × parallel) on a generated model (`--shape`, larger than the test
model so that speeds stand above the measurement noise, which the run reports by measuring the grid twice), objective max_generation_tps:
the grid once, then tpe and hyperband with a trial budget of a third of the grid, over 5 seeds,
all in one run. For each session: trials run, wall seconds (launches included), the best it
found, and its gap to the grid's best, both as the session measured it and as the grid measured
the same candidate (the fairer comparison: one measurement of every candidate). Medians over
the seeds are what the goal is judged on (within 5 % of the grid's best using at most 35 % of its
trial-seconds).
Usage: CORRAL_BIN=.build-release/release/corral .venv-test/bin/python scripts/bench_tuning.py [--seeds 5] [--trials 16]"""
import argparse
import statistics
import time

import httpx

from corral_harness.corral import make_model, start_corral, stop_corral
from corral_harness.results import record

SPACE = {"ubatch": [32, 64, 128, 256], "threads": [1, 2], "flashAttention": [True, False], "parallel": [1, 2, 4]}


def key(candidate):
    return tuple(candidate.get(k) for k in ("ubatch", "threads", "flashAttention", "parallel"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=16, help="trial budget of tpe and hyperband")
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repetitions", type=int, default=1, help="load runs per trial, in every session (the score is their mean)")
    ap.add_argument("--shape", default="embd=512,layers=8,heads=8,kv=4,ff=1408,ctx=4096",
                    help="the generated model (larger than the test model, so that speeds are measured above the noise)")
    args = ap.parse_args()
    import tempfile
    directory = tempfile.mkdtemp(prefix="corral-bench-tuning-")
    path = make_model(directory, "bench", args.shape)
    c = start_corral(extra_models=[{"name": "bench", "path": path, "contextSize": 4096}], directory=directory)
    h = {"authorization": f"Bearer {c.admin_token}"}
    try:
        def session(strategy, seed=42, budget=None):
            body = {"model": "bench", "strategy": strategy, "objective": "max_generation_tps", "space": SPACE, "requests": args.requests,
                    "maxTokens": args.max_tokens, "seed": seed}
            body["maxTrials"] = budget or 48
            body["repetitions"] = args.repetitions
            started = time.perf_counter()
            sid = httpx.post(c.base + "/admin/tuning", headers=h, json=body).json()["id"]
            with httpx.stream("GET", f"{c.base}/admin/tuning/{sid}/events?after=99999999999999999", headers=h, timeout=3600) as r:
                for _ in r.iter_lines():
                    pass
            wall = time.perf_counter() - started
            s = httpx.get(c.base + f"/admin/tuning/{sid}", headers=h).json()
            assert s["status"] == "done", s
            return s, wall

        grid, grid_wall = session("grid")
        candidates = len(grid["trials"])
        measured = {key(t["candidate"]): t["score"] for t in grid["trials"] if t.get("score") is not None}
        grid_best = max(measured.values())
        print(f"grid: {candidates} candidates, {len(measured)} measured, {grid_wall:.1f} s, best {grid_best:.1f} tokens/s", flush=True)
        # The measurement's own noise: the grid again, candidate by candidate.
        again, _ = session("grid")
        repeat = {key(t["candidate"]): t["score"] for t in again["trials"] if t.get("score") is not None}
        noise = statistics.median(abs(repeat[k] - v) / v for k, v in measured.items() if k in repeat)
        best_key = max(measured, key=measured.get)
        print(f"grid again: the same candidates differ by {noise:.1%} (median); the first grid's best measured {1 - repeat.get(best_key, 0) / grid_best:+.1%} "
              f"from its first figure; the second grid's best is {max(repeat.values()):.1f} tokens/s", flush=True)
        rows = []
        for strategy in ("tpe", "hyperband"):
            for seed in range(1, args.seeds + 1):
                s, wall = session(strategy, seed=seed, budget=args.trials)
                best = s["trials"][s["best"]]
                trials = sum(1 for t in s["trials"] if t["status"] in ("done", "failed", "infeasible"))
                own_gap = 1 - best["score"] / grid_best
                grid_gap = 1 - measured.get(key(best["candidate"]), 0) / grid_best
                rows.append((strategy, seed, trials, wall, best["score"], own_gap, grid_gap))
                print(f"{strategy} seed {seed}: {trials} trials, {wall:.1f} s ({wall / grid_wall:.0%} of the grid's), best {best['score']:.1f} tokens/s "
                      f"(own gap {own_gap:+.1%}), the grid measured that candidate at {grid_gap:+.1%} from its best", flush=True)
        print()
        print(f"| strategy | trials (median) | seconds (median) | share of grid seconds | best found (median, tokens/s) | gap to grid best, own measure | gap, grid's measure of the same candidate |")
        print("|---|---|---|---|---|---|---|")
        print(f"| grid | {len(measured)} | {grid_wall:.1f} | 100 % | {grid_best:.1f} | 0 | 0 |")
        for strategy in ("tpe", "hyperband"):
            mine = [r for r in rows if r[0] == strategy]
            med = lambda i: statistics.median(r[i] for r in mine)  # noqa: E731
            print(f"| {strategy} | {med(2):.0f} | {med(3):.1f} | {med(3) / grid_wall:.0%} | {med(4):.1f} | {med(5):+.1%} | {med(6):+.1%} |")
            share, grid_gap = 100 * med(3) / grid_wall, 100 * med(6)
            notes = f"{args.seeds} seeds, maxTrials {args.trials}, {args.requests} requests of {args.max_tokens} tokens per trial"
            record("bench-tuning", f"tuning.{strategy}_gap_grid_measure_pct",
                   f"{strategy}: gap to the grid's best, by the grid's measure of its choice (median of seeds)", round(grid_gap, 1), "%",
                   goal="≤ 5", met=grid_gap <= 5, notes=notes)
            record("bench-tuning", f"tuning.{strategy}_seconds_share_pct", f"{strategy}: share of the grid's seconds (median of seeds)",
                   round(share), "%", goal="≤ 35", met=share <= 35, notes=notes)
            record("bench-tuning", f"tuning.{strategy}_gap_own_measure_pct", f"{strategy}: gap to the grid's best, by its own measure (median of seeds)",
                   round(100 * med(5), 1), "%", notes=notes)
        record("bench-tuning", "tuning.grid_noise_pct", "The grid measured twice: median difference per candidate", round(100 * noise, 1), "%")
        record("bench-tuning", "tuning.grid_s", "The exhaustive grid (48 candidates), wall time", round(grid_wall, 1), "s")
    finally:
        stop_corral(c)


if __name__ == "__main__":
    main()
