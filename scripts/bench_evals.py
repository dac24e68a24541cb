#!/usr/bin/env python3
"""Evaluation runs: a 200-item run at concurrency 4 against concurrency 1 (same model, same
build), and Corral's cost per item against a plain loop of the same chat requests sent straight
to the model's llama-server. Usage: CORRAL_BIN=.build-release/release/corral
.venv-test/bin/python scripts/bench_evals.py [--items 200] [--max-tokens 16]"""
import argparse
import os
import sys
import time

import httpx
from openai import OpenAI

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
from conftest import start_corral, stop_corral  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    c = start_corral()
    try:
        client = OpenAI(base_url=c.base + "/v1", api_key="x", max_retries=0, timeout=600)
        items = [{"item": {"question": f"Question number {i}?", "answer": "a"}} for i in range(args.items)]
        evaluation = client.evals.create(
            name="bench", data_source_config={"type": "custom", "item_schema": {"type": "object"}},
            testing_criteria=[{"type": "string_check", "name": "eq", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}])
        source = {"type": "completions", "model": "chat", "source": {"type": "file_content", "content": items},
                  "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
                  "sampling_params": {"temperature": 0, "max_completion_tokens": args.max_tokens, "seed": 1}}
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "warm"}], max_tokens=1)

        admin = {"authorization": f"Bearer {c.admin_token}"}

        def timed_run(concurrency):
            # Waits on the run's event stream (which ends with the run), not by polling: on two
            # cores a poll every few milliseconds would cost the run itself.
            started = time.perf_counter()
            run = client.evals.runs.create(evaluation.id, data_source=source, extra_body={"concurrency": concurrency})
            with httpx.stream("GET", f"{c.base}/admin/jobs/{run.id}/events?after=99999999999999999", headers=admin, timeout=600) as r:
                for _ in r.iter_lines():
                    pass
            elapsed = time.perf_counter() - started
            assert client.evals.runs.retrieve(run.id, eval_id=evaluation.id).status == "completed"
            return elapsed

        one = timed_run(1)
        four = timed_run(4)
        port = next(i["port"] for i in httpx.get(c.base + "/admin/instances", headers=admin).json() if i["model"] == "chat")
        started = time.perf_counter()
        with httpx.Client(timeout=600) as direct:
            for entry in items:
                direct.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={
                    "model": "chat", "messages": [{"role": "user", "content": entry["item"]["question"]}],
                    "max_tokens": args.max_tokens, "temperature": 0, "seed": 1}).raise_for_status()
        plain = time.perf_counter() - started
        print(f"{args.items} items, max_tokens={args.max_tokens}")
        print(f"  run, concurrency 1: {one:.2f} s ({1000 * one / args.items:.2f} ms per item)")
        print(f"  run, concurrency 4: {four:.2f} s  -> {one / four:.2f}x faster")
        print(f"  plain loop straight to llama-server: {plain:.2f} s  -> Corral run at concurrency 1 costs {one / plain:.3f}x per item")
    finally:
        stop_corral(c)


if __name__ == "__main__":
    main()
