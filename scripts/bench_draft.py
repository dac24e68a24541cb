#!/usr/bin/env python3
"""Speculative decoding (issue 35, `make bench-draft`): generation tokens/s of the real demo model
(SmolLM2-135M-Instruct) with a draft model against the same model without one, side by side in one
Corral, asked in alternation, and the ratio.

The draft is the model itself (`models[].draft` naming the model): the only model of the demo's
vocabulary at hand, and the one whose every drafted token is accepted, so the run shows the
mechanism at its best acceptance. On a CPU the target's check of a drafted batch costs about as
much as generating those tokens one by one, and the draft's own passes come on top: with the model
as its own draft a CPU run is expected to be slower, not faster. The gain needs a GPU, where
checking a batch costs about one token's pass, and a draft much smaller than the model.

Each round asks both models the same prompts at temperature 0 (the answers must be identical:
that is speculative decoding's promise), with one slot each so nothing else shares the cores.
Tokens/s is llama-server's own generation rate (`timings.predicted_per_second`, the prompt not
counted) and, beside it, completion tokens over the request's wall time as the client saw it. The
ratio is the median of each prompt's pair (asked back to back), so a busy moment of a shared
machine weighs on both sides of a pair alike.

Usage: CORRAL_BIN=.build-release/release/corral .venv-test/bin/python scripts/bench_draft.py
[--rounds 3] [--tokens 128] [--max-draft 8] [--draft NAME_OR_PATH]"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

import httpx

from corral_harness.corral import start_corral, stop_corral
from corral_harness.results import record

PROMPTS = [
    "List the planets of the solar system in order from the sun, one per line, with one fact about each.",
    "Explain step by step how to make a cup of tea.",
    "Write a short story about a fox who learns to read.",
]


def ask(c, model: str, prompt: str, tokens: int) -> tuple[dict, float]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0}
    started = time.perf_counter()
    r = httpx.post(c.base + "/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    return r.json(), time.perf_counter() - started


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128, help="tokens generated per request")
    ap.add_argument("--max-draft", type=int, default=8, help="models[].draft.maxTokens: tokens drafted per step")
    ap.add_argument("--draft", help="a GGUF to draft with instead of the model itself (it must share the model's tokenizer)")
    args = ap.parse_args()
    root = os.path.join(os.path.dirname(__file__), "..")
    model = subprocess.run([os.path.join(root, "scripts", "get-demo-model.sh")], check=True, capture_output=True, text=True).stdout.strip()
    directory = tempfile.mkdtemp(prefix="corral-bench-draft-")
    common = {"path": model, "contextSize": 2048, "parallel": 1}
    models = [{"name": "plain", **common}, {"name": "drafted", **common, "draft": {"model": "drafter", "maxTokens": args.max_draft}}]
    models.append({"name": "drafter", "path": args.draft or model, "contextSize": 2048, "parallel": 1})
    c = start_corral(directory=directory, extra_models=models, scheduler={"maxLoadedModels": 3})
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    seen = {m: {"server": [], "client": []} for m in ("plain", "drafted")}
    # Each prompt's two requests run back to back, so what else the machine does weighs on both
    # alike: the ratio is taken per pair, then the median of those.
    pair_ratios = {"server": [], "client": []}
    drafted = accepted = 0
    try:
        # Load both (and warm them) before anything is timed.
        for name in ("plain", "drafted"):
            ask(c, name, "Hello", 4)
        arguments = next(i for i in httpx.get(c.base + "/admin/instances", headers=c.h).json() if i["model"] == "drafted")["arguments"]
        assert "-md" in arguments, arguments
        for r in range(args.rounds):
            for p, prompt in enumerate(PROMPTS):
                answers = {}
                for name in ("plain", "drafted") if (r + p) % 2 == 0 else ("drafted", "plain"):
                    body, wall = ask(c, name, prompt, args.tokens)
                    t = body["timings"]
                    n = body["usage"]["completion_tokens"]
                    seen[name]["server"].append(t["predicted_per_second"])
                    seen[name]["client"].append(n / wall)
                    answers[name] = body["choices"][0]["message"]["content"]
                    if name == "drafted":
                        drafted += t.get("draft_n", 0)
                        accepted += t.get("draft_n_accepted", 0)
                assert answers["plain"] == answers["drafted"], ("a drafted answer differs from the model's own", answers)
                for k in pair_ratios:
                    pair_ratios[k].append(seen["drafted"][k][-1] / seen["plain"][k][-1])
                print(f"round {r + 1} prompt {p + 1}: {seen['plain']['server'][-1]:.1f} tokens/s alone, "
                      f"{seen['drafted']['server'][-1]:.1f} with the draft (same answer): {pair_ratios['server'][-1]:.2f}x", flush=True)
    finally:
        stop_corral(c)
    med = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in seen.items()}
    ratio = statistics.median(pair_ratios["server"])
    client_ratio = statistics.median(pair_ratios["client"])
    acceptance = accepted / drafted if drafted else 0.0
    draft_name = os.path.basename(args.draft) if args.draft else "the model itself"
    print(f"medians over {args.rounds} rounds x {len(PROMPTS)} prompts ({args.tokens} tokens each, SmolLM2-135M-Instruct, draft: {draft_name}, "
          f"up to {args.max_draft} drafted per step):")
    for m in ("plain", "drafted"):
        print(f"  {m}: {med[m]['server']:.1f} tokens/s (llama-server), {med[m]['client']:.1f} tokens/s (client, wall time)")
    print(f"with the draft / without, median of the pairs' ratios: {ratio:.2f}x (llama-server), {client_ratio:.2f}x (client); "
          f"{accepted} of {drafted} drafted tokens accepted ({acceptance:.0%})")
    print("On a CPU this shows the mechanism (identical answers, drafted tokens accepted), not the gain: checking a drafted batch costs "
          "the CPU about as much as generating it, and the draft's own passes come on top. The gain needs a GPU and a much smaller draft.")
    bench = "bench-draft"
    notes = (f"SmolLM2-135M-Instruct, draft: {draft_name}, maxTokens {args.max_draft}, {args.rounds} rounds x {len(PROMPTS)} prompts x "
             f"{args.tokens} tokens, one slot each; on a CPU the mechanism, not the gain")
    record(bench, "draft.tokens_per_second_ratio", "Speculative decoding: generation tokens/s with a draft over without (llama-server's rate, median of back-to-back pairs)",
           round(ratio, 3), "×", notes=notes)
    record(bench, "draft.client_tokens_per_second_ratio", "Speculative decoding: tokens/s with a draft over without, client wall time (median of back-to-back pairs)",
           round(client_ratio, 3), "×", notes=notes)
    record(bench, "draft.acceptance", "Speculative decoding: drafted tokens the model accepted", round(acceptance * 100, 1), "%", notes=notes)
    record(bench, "draft.tokens_per_second_with_draft", "Speculative decoding: generation tokens/s with the draft", round(med["drafted"]["server"], 1),
           "tokens/s", notes=notes)
    record(bench, "draft.tokens_per_second_without_draft", "Speculative decoding: generation tokens/s without a draft", round(med["plain"]["server"], 1),
           "tokens/s", notes=notes)


if __name__ == "__main__":
    main()
