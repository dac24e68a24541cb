"""`models[].fallbacks`: a model that cannot be loaded, or whose queue is full, is answered by the
next fallback that can; the answer's `model` and the ledger row name the model that answered, and
without a usable fallback the first model's own error stands."""
import tempfile
import threading

import httpx
import pytest

from corral_harness.corral import start_corral, stop_corral, wait_until

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def corral():
    d = tempfile.mkdtemp(prefix="corral-py-")
    c = start_corral(directory=d, scheduler={"queueDepth": 0}, extra_models=[
        # llama-server refuses the flag and exits: this model can never load.
        {"name": "broken", "path": f"{d}/chat.gguf", "args": ["--no-such-flag"], "fallbacks": ["nope", "chat"]},
        {"name": "unbacked", "path": f"{d}/chat.gguf", "args": ["--no-such-flag"]},
        {"name": "narrow", "path": f"{d}/chat.gguf", "parallel": 1, "contextSize": 1024, "fallbacks": ["chat"]},
    ])
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    yield c
    stop_corral(c)


def chat(c, model, **extra):
    return httpx.post(c.base + "/v1/chat/completions", json={"model": model, "messages": CHAT, "max_tokens": 2, **extra}, timeout=120)


def ledger_models(c, n):
    """The models of the newest `n` ledger rows (rows are written every 200 ms: poll)."""
    return [r["model"] for r in httpx.get(c.base + f"/admin/usage/requests?limit={n}", headers=c.h).json()["data"]]


def test_a_model_that_cannot_load_is_answered_by_its_fallback(corral):
    answer = chat(corral, "broken")
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "chat"  # the model that answered (an unknown fallback is skipped)
    wait_until(lambda: ledger_models(corral, 1) == ["chat"], 10, "the ledger row naming chat")
    listed = {m["id"]: m for m in httpx.get(corral.base + "/v1/models").json()["data"]}
    assert listed["broken"]["meta"]["fallbacks"] == ["nope", "chat"]
    ollama = httpx.post(corral.base + "/api/chat", json={"model": "broken", "messages": CHAT, "stream": False, "options": {"num_predict": 2}}, timeout=120)
    assert ollama.status_code == 200, ollama.text


def test_without_a_fallback_the_load_error_stands(corral):
    refused = chat(corral, "unbacked")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_load_failed", refused.text


def test_a_full_queue_is_answered_by_the_fallback(corral):
    assert chat(corral, "narrow").json()["model"] == "narrow"  # loaded, and answering itself while free
    # One slot and no queue (chat, the fallback, has two): of three requests sent at once, those
    # that find the slot busy are answered by the fallback instead of getting 429.
    barrier = threading.Barrier(3)
    answers = []

    def one():
        barrier.wait()
        answers.append(chat(corral, "narrow", max_tokens=200))

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [a.status_code for a in answers] == [200] * 3, [a.text[:200] for a in answers if a.status_code != 200]
    served = [a.json()["model"] for a in answers]
    assert "narrow" in served and "chat" in served, served
    wait_until(lambda: sorted(ledger_models(corral, 3)) == sorted(served), 10, f"ledger rows naming {served}")
