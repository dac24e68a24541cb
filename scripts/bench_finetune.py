#!/usr/bin/env python3
"""Fine-tuning: the wall time of a 3-epoch job through Corral (upload excluded; validation with
the base model's tokenizer, one llama-finetune invocation per epoch, progress parsing, validation
perplexity before and after, the result registered) against the same llama-finetune run by hand
with the same settings on the same prepared text: one `-epochs 3` invocation, and three chained
`-epochs 1` invocations. Rounds are interleaved and medians reported (two cores are noisy).
Usage: CORRAL_BIN=.build-release/release/corral .venv-test/bin/python scripts/bench_finetune.py
[--rounds 3] [--paragraphs 25]"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

import httpx
from openai import OpenAI

from corral_harness.corral import llama_tool, start_corral, stop_corral
from corral_harness.results import record


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--paragraphs", type=int, default=25, help="paragraphs of ~1800 characters (about a token per character on the test model)")
    args = ap.parse_args()
    directory = tempfile.mkdtemp(prefix="corral-bench-ft-")
    c = start_corral(directory=directory)
    trainer = llama_tool("llama-finetune")
    env = {**os.environ, "LD_LIBRARY_PATH": os.path.dirname(trainer)}
    try:
        client = OpenAI(base_url=c.base + "/v1", api_key="x", max_retries=0, timeout=600)
        admin = {"authorization": f"Bearer {c.admin_token}"}
        text = ("The quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * args.paragraphs
        training = client.files.create(file=("bench.txt", text.encode()), purpose="fine-tune")

        def through_corral():
            started = time.perf_counter()
            job = client.fine_tuning.jobs.create(model="chat", training_file=training.id, hyperparameters={"n_epochs": 3},
                                                 extra_body={"preset": "efficient"})
            with httpx.stream("GET", f"{c.base}/admin/jobs/{job.id}/events?after=99999999999999999", headers=admin, timeout=900) as r:
                for _ in r.iter_lines():
                    pass
            elapsed = time.perf_counter() - started
            done = client.fine_tuning.jobs.retrieve(job.id)
            assert done.status == "succeeded", done.error
            epochs = [ck.model_extra for ck in client.fine_tuning.jobs.checkpoints.list(job.id)]
            return elapsed, done, epochs

        def by_hand(job, epochs_per_invocation):
            folder = f"{directory}/data/fine-tuning/{job.id}"
            s = job.model_extra["settings"]
            base = ["-f", f"{folder}/train.txt", "-c", str(s["context_size"]), "-b", str(s["context_size"]), "-ub", str(s["context_size"]),
                    "-lr", str(s["learning_rate"]), "-val-split", str(s["validation_split"]), "-opt", s["optimizer"], "-wd", str(s["weight_decay"]),
                    "-lv", "2"]
            started = time.perf_counter()
            model = f"{directory}/chat.gguf"
            for i in range(3 // epochs_per_invocation):
                out = f"{directory}/hand-{epochs_per_invocation}-{i}.gguf"
                subprocess.run([trainer, "-m", model, "-o", out, "-epochs", str(epochs_per_invocation)] + base, env=env, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                model = out
            return time.perf_counter() - started

        rows = []
        for round_ in range(args.rounds):
            corral_s, job, epochs = through_corral()
            single = by_hand(job, 3)
            chained = by_hand(job, 1)
            training_s = sum(float(e.get("seconds", 0)) for e in epochs)
            rows.append((corral_s, training_s, single, chained))
            print(f"round {round_ + 1}: corral job {corral_s:.2f} s (its epochs {training_s:.2f} s), by hand -epochs 3 {single:.2f} s, "
                  f"by hand 3 x -epochs 1 {chained:.2f} s, ratio {corral_s / single:.3f}", flush=True)
        med = [statistics.median(r[i] for r in rows) for i in range(4)]
        print()
        print(f"text: {len(text)} characters, {job.model_extra['settings']['context_size']}-token windows, 3 epochs, "
              f"{job.trained_tokens // 3} training tokens per epoch")
        print("| run | wall s (median) | ratio to by hand, one invocation |")
        print("|---|---|---|")
        print(f"| by hand, `-epochs 3` | {med[2]:.2f} | 1.000 |")
        print(f"| by hand, three `-epochs 1` invocations | {med[3]:.2f} | {med[3] / med[2]:.3f} |")
        print(f"| Corral job, its three epochs only | {med[1]:.2f} | {med[1] / med[2]:.3f} |")
        print(f"| Corral job, create to succeeded (validation, perplexity before and after, registration included) | {med[0]:.2f} | {med[0] / med[2]:.3f} |")
        notes = f"median of {args.rounds} rounds, {len(text)} characters; per round " + ", ".join(f"{r[0] / r[2]:.3f}" for r in rows)
        for measure, title, value, unit, goal in (
                ("finetune.job_over_by_hand", "Corral's 3-epoch job, create to succeeded ÷ llama-finetune -epochs 3 by hand",
                 round(med[0] / med[2], 3), "×", "≤ 1.1"),
                ("finetune.epochs_over_by_hand", "Corral's job, its three epochs only ÷ by hand", round(med[1] / med[2], 3), "×", None),
                ("finetune.chained_over_by_hand", "By hand, three -epochs 1 invocations ÷ one -epochs 3", round(med[3] / med[2], 3), "×", None),
                ("finetune.job_s", "Corral's 3-epoch job, create to succeeded, median", round(med[0], 2), "s", None),
                ("finetune.by_hand_s", "llama-finetune -epochs 3 by hand, median", round(med[2], 2), "s", None)):
            record("bench-finetune", measure, title, value, unit, goal=goal, met=None if goal is None else value <= 1.1, notes=notes)
    finally:
        stop_corral(c)


if __name__ == "__main__":
    main()
