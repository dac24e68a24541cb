"""Speculative decoding as a model setting (issue 35, part 4): `models[].draft` starts the
model's llama-server with a draft model (`-md`), which answers exactly as the model alone at
temperature 0; `auto` picks the smallest library model whose tokenizer llama.cpp would accept; a
draft with another tokenizer is refused with the reason; the draft is in the instance's
arguments and its memory in the projection. Real llama-servers on generated models."""
import httpx
import pytest

from corral_harness.corral import admin_get, make_model, start_corral, stop_corral

PROMPT = "Write a long story about a fox, a dog and the river between them."
TARGET = "embd=128,layers=4,ff=256,seed=11"


@pytest.fixture(scope="module")
def spec():
    import tempfile
    d = tempfile.mkdtemp(prefix="corral-draft-")
    target = make_model(d, "target", TARGET)
    small = make_model(d, "small", "layers=1,seed=3")              # the same 352-token vocabulary, fewer layers
    drafter = make_model(d, "drafter", "embd=512,ff=1024,layers=2,seed=5")  # large enough to show in whole MiB
    other = make_model(d, "other-vocab", "fim=true,layers=1,seed=7")    # fill-in-the-middle tokens shift every text
    models = [
        {"name": "plain", "path": target, "contextSize": 1024, "parallel": 1},
        {"name": "self-drafted", "path": target, "contextSize": 1024, "parallel": 1, "draft": "self-drafted"},
        {"name": "small-drafted", "path": target, "contextSize": 1024, "parallel": 1, "draft": {"model": "small", "maxTokens": 4, "minP": 0.0}},
        {"name": "auto-drafted", "path": target, "contextSize": 1024, "parallel": 1, "draft": "auto"},
        {"name": "big-drafted", "path": target, "contextSize": 1024, "parallel": 1, "draft": "drafter"},
        {"name": "wrongly-drafted", "path": target, "contextSize": 1024, "parallel": 1, "draft": "other-vocab"},
        {"name": "small", "path": small, "contextSize": 1024, "parallel": 1},
        {"name": "drafter", "path": drafter, "contextSize": 1024, "parallel": 1},
        {"name": "other-vocab", "path": other, "contextSize": 1024, "parallel": 1},
    ]
    c = start_corral(extra_models=models, scheduler={"maxLoadedModels": 2}, directory=d)
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    yield c
    stop_corral(c)


def complete(c, model, max_tokens=40):
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0}
    r = httpx.post(c.base + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text[:300]
    return r.json()


def instance(c, model):
    return next(i for i in admin_get(c, "/admin/instances") if i["model"] == model)


def test_a_drafted_model_answers_exactly_as_the_model_alone(spec):
    c = spec
    alone = complete(c, "plain")
    text = alone["choices"][0]["message"]["content"]
    assert alone["usage"]["completion_tokens"] == 40
    for model in ("self-drafted", "small-drafted"):
        drafted = complete(c, model)
        assert drafted["choices"][0]["message"]["content"] == text, model
        # llama-server drafted (its timings say how many tokens the draft proposed) ...
        assert drafted["timings"]["draft_n"] > 0, (model, drafted["timings"])
        assert "draft_n" not in alone["timings"]
    # ... and a model drafting for itself has every drafted token accepted.
    selfish = complete(c, "self-drafted")
    assert selfish["timings"]["draft_n_accepted"] == selfish["timings"]["draft_n"] > 0


def test_the_draft_is_in_the_instances_arguments_and_its_memory_in_the_projection(spec):
    c = spec
    complete(c, "small-drafted", max_tokens=2)
    args = instance(c, "small-drafted")["arguments"]
    md = args.index("-md")
    assert args[md + 1] == f"{c.directory}/small.gguf"
    assert args[args.index("--spec-type") + 1] == "draft-simple"
    assert args[args.index("--spec-draft-n-max") + 1] == "4"
    assert float(args[args.index("--spec-draft-p-min") + 1]) == 0.0

    complete(c, "plain", max_tokens=2)
    plain = instance(c, "plain")
    assert "-md" not in plain["arguments"]
    complete(c, "big-drafted", max_tokens=2)
    big = instance(c, "big-drafted")
    assert big["state"] == "loaded" and big["planSource"] == "llama-fit-params", big
    # The draft's 19-20 MiB of weights (2 layers 512 wide, f32) on top of the same model's own.
    assert big["projectedMiB"] - plain["projectedMiB"] >= 18, (big["projectedMiB"], plain["projectedMiB"])
    # llama-server really loaded it: the instance's allocations include the draft's weights.
    assert sum(big["allocatedMiB"].values()) - sum(plain["allocatedMiB"].values()) >= 18, (big["allocatedMiB"], plain["allocatedMiB"])


def test_auto_picks_the_smallest_model_with_the_same_tokenizer(spec):
    c = spec
    entry = admin_get(c, "/admin/models/auto-drafted")
    assert entry["draft"]["model"] == "small" and entry["draft"]["automatic"] is True, entry["draft"]
    # The library says which models can draft for which: small and drafter share the target's
    # tokenizer, but only small is smaller than the model; other-vocab, chat (fill-in-the-middle)
    # and embed do not share it.
    assert entry["draftCandidates"] == ["small"]
    small = admin_get(c, "/admin/models/small")
    assert {"plain", "auto-drafted", "drafter"} <= set(small["canDraftFor"])
    assert "chat" not in small["canDraftFor"] and "other-vocab" not in small["canDraftFor"]
    # other-vocab has chat's tokenizer (both with fill-in-the-middle tokens) and is smaller.
    assert admin_get(c, "/admin/models/other-vocab")["canDraftFor"] == ["chat"]
    listed = {m["id"]: m for m in admin_get(c, "/admin/models")["models"]}
    assert listed["auto-drafted"]["draft"]["model"] == "small"
    complete(c, "auto-drafted", max_tokens=2)
    args = instance(c, "auto-drafted")["arguments"]
    assert args[args.index("-md") + 1] == f"{c.directory}/small.gguf"


def test_a_draft_with_another_tokenizer_is_refused_with_the_reason(spec):
    c = spec
    entry = admin_get(c, "/admin/models/wrongly-drafted")
    assert entry["draft"]["requested"] == "other-vocab"
    assert "'other-vocab' does not share the tokenizer of 'wrongly-drafted'" in entry["draft"]["refused"]
    assert "token texts differ" in entry["draft"]["refused"]
    with open(c.log_path) as f:
        assert "models[wrongly-drafted].draft" in f.read()
    # The model itself is served, without a draft, and answers as the model alone.
    assert complete(c, "wrongly-drafted", max_tokens=8)["choices"][0]["message"]["content"] == \
        complete(c, "plain", max_tokens=8)["choices"][0]["message"]["content"]
    assert "-md" not in instance(c, "wrongly-drafted")["arguments"]
