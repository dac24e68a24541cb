#!/usr/bin/env python3
"""Evaluation runs: a 200-item run at concurrency 4 against concurrency 1 (same model, same
build, a model with 4 slots), next to the same scaling measured straight against its
llama-server (the ceiling this machine allows), and Corral's cost per item against a plain loop
of the same streamed chat requests sent straight to the model's llama-server.
Usage: CORRAL_BIN=.build-release/release/corral .venv-test/bin/python scripts/bench_evals.py
[--items 200] [--max-tokens 16]"""
import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from openai import OpenAI

from corral_harness.corral import start_corral, stop_corral
from corral_harness.results import record


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (two cores are noisy)")
    args = ap.parse_args()
    directory = tempfile.mkdtemp(prefix="corral-bench-evals-")
    # The test model under another name with 4 slots, so that 4 items can really run at once.
    c = start_corral(extra_models=[{"name": "bench", "path": f"{directory}/chat.gguf", "contextSize": 4096, "parallel": 4}], directory=directory)
    try:
        client = OpenAI(base_url=c.base + "/v1", api_key="x", max_retries=0, timeout=600)
        items = [{"item": {"question": f"Question number {i}?", "answer": "a"}} for i in range(args.items)]
        evaluation = client.evals.create(
            name="bench", data_source_config={"type": "custom", "item_schema": {"type": "object"}},
            testing_criteria=[{"type": "string_check", "name": "eq", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}])
        source = {"type": "completions", "model": "bench", "source": {"type": "file_content", "content": items},
                  "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
                  "sampling_params": {"temperature": 0, "max_completion_tokens": args.max_tokens, "seed": 1}}
        client.chat.completions.create(model="bench", messages=[{"role": "user", "content": "warm"}], max_tokens=1)

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

        port = next(i["port"] for i in httpx.get(c.base + "/admin/instances", headers=admin).json() if i["model"] == "bench")

        def direct_loop(concurrency):
            # The same requests as the run sends (streamed, usage included), read to the end.
            def ask(entry, http, retried=False):
                try:
                    send(entry, http)
                except httpx.RemoteProtocolError:
                    # llama-server closed a kept-alive connection as it was reused; send again
                    # on a new one (as Corral's own client does).
                    if retried:
                        raise
                    ask(entry, http, retried=True)

            def send(entry, http):
                with http.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json={
                        "model": "bench", "messages": [{"role": "user", "content": entry["item"]["question"]}], "stream": True,
                        "stream_options": {"include_usage": True}, "max_tokens": args.max_tokens, "temperature": 0, "seed": 1}) as r:
                    r.raise_for_status()
                    for _ in r.iter_bytes():
                        pass
            started = time.perf_counter()
            with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as http:
                with ThreadPoolExecutor(concurrency) as pool:
                    list(pool.map(lambda e: ask(e, http), items))
            return time.perf_counter() - started

        def cpu_ms(pid):
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")

        server_pid = next(i["pid"] for i in httpx.get(c.base + "/admin/instances", headers=admin).json() if i["model"] == "bench")
        measures = {key: [] for key in ("one", "four", "plain", "plain_four", "corral_cpu", "server_cpu_run", "server_cpu_plain")}
        for _ in range(args.rounds):
            before = (cpu_ms(c.proc.pid), cpu_ms(server_pid))
            measures["one"].append(timed_run(1))
            measures["corral_cpu"].append((cpu_ms(c.proc.pid) - before[0]) / args.items)
            measures["server_cpu_run"].append((cpu_ms(server_pid) - before[1]) / args.items)
            measures["four"].append(timed_run(4))
            before = cpu_ms(server_pid)
            measures["plain"].append(direct_loop(1))
            measures["server_cpu_plain"].append((cpu_ms(server_pid) - before) / args.items)
            measures["plain_four"].append(direct_loop(4))
        one, four, plain, plain_four = (statistics.median(measures[k]) for k in ("one", "four", "plain", "plain_four"))
        print(f"{args.items} items, max_tokens={args.max_tokens}, {os.cpu_count()} cores, median of {args.rounds} interleaved rounds")
        print(f"  run, concurrency 1: {one:.2f} s ({1000 * one / args.items:.2f} ms per item)")
        print(f"  run, concurrency 4: {four:.2f} s  -> {one / four:.2f}x faster")
        print(f"  straight to llama-server, 1 at a time: {plain:.2f} s; 4 at a time: {plain_four:.2f} s  -> {plain / plain_four:.2f}x (the machine's ceiling)")
        print(f"  Corral's cost per item vs the plain loop: {one / plain:.3f}x at concurrency 1, {four / plain_four:.3f}x at concurrency 4"
              f" (rounds: {', '.join(f'{a / b:.2f}' for a, b in zip(measures['one'], measures['plain']))})")
        print(f"  CPU per item at concurrency 1: Corral {statistics.median(measures['corral_cpu']):.2f} ms, llama-server "
              f"{statistics.median(measures['server_cpu_run']):.2f} ms (plain loop: {statistics.median(measures['server_cpu_plain']):.2f} ms)")
        notes = f"{args.items} items, max_tokens={args.max_tokens}, median of {args.rounds} rounds"
        for measure, title, value, unit, goal, met in (
                ("evals.concurrency4_speedup", "Evaluation run at concurrency 4 ÷ concurrency 1, speed-up", round(one / four, 2), "×",
                 "≥ 3", one / four >= 3),
                ("evals.corral_over_plain_c1", "Evaluation run ÷ a plain loop of the same requests, per item, concurrency 1",
                 round(one / plain, 3), "×", "≤ 1.05", one / plain <= 1.05),
                ("evals.corral_over_plain_c4", "Evaluation run ÷ a plain loop of the same requests, per item, concurrency 4",
                 round(four / plain_four, 3), "×", None, None),
                ("evals.machine_ceiling_speedup", "Straight to llama-server, 4 at a time ÷ 1 at a time (this machine's ceiling)",
                 round(plain / plain_four, 2), "×", None, None),
                ("evals.ms_per_item_c1", "Evaluation run at concurrency 1, time per item", round(1000 * one / args.items, 2), "ms", None, None),
                ("evals.corral_cpu_per_item_ms", "Corral's CPU per item at concurrency 1", round(statistics.median(measures["corral_cpu"]), 2),
                 "ms", None, None),
                ("evals.server_cpu_per_item_ms", "llama-server's CPU per item at concurrency 1",
                 round(statistics.median(measures["server_cpu_run"]), 2), "ms", None, None)):
            record("bench-evals", measure, title, value, unit, goal=goal, met=met, notes=notes)
    finally:
        stop_corral(c)


if __name__ == "__main__":
    main()
