"""A request that waits for its model to load hears of it: a stream opens at once and carries
`: loading MODEL N%` comments (or `reasoning_content` deltas, per model) until the first token; an
Ollama stream carries empty partial answers; a non-streaming request that asks with
X-Corral-Progress gets the same, then its answer as one event; a load that fails after the stream
opened is its error event; a client that leaves while waiting loses nothing.

The llama-server is the real one, started through a wrapper that waits two seconds before it
execs it (a slow disk, or a big model, on demand)."""
import json
import os
import stat
import tempfile
import time

import httpx
import pytest
from openai import OpenAI

from corral_harness.corral import llama_tool, start_corral, stop_corral, wait_until

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def corral():
    d = tempfile.mkdtemp(prefix="corral-py-")
    wrapper = os.path.join(d, "slow-llama-server")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\ncase " $* " in *" -m "*) sleep 2;; esac\nexec "{llama_tool("llama-server")}" "$@"\n')
    os.chmod(wrapper, os.stat(wrapper).st_mode | stat.S_IEXEC)
    c = start_corral(directory=d, extra_config={"llama": {"server": wrapper}}, scheduler={"maxLoadedModels": 1}, extra_models=[
        {"name": "thinking", "path": f"{d}/chat.gguf", "progressAsReasoning": True},
        {"name": "failing", "path": f"{d}/chat.gguf", "args": ["--no-such-flag"]},
    ])
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    yield c
    stop_corral(c)


def unload_all(c):
    for i in httpx.get(c.base + "/admin/instances", headers=c.h).json():
        if i["state"] == "loaded":
            httpx.post(c.base + f"/admin/models/{i['model']}/unload", headers=c.h, timeout=60)


def newest_row(c) -> dict:
    rows = httpx.get(c.base + "/admin/usage/requests?limit=1", headers=c.h).json()["data"]
    return rows[0] if rows else {}


def timed_lines(response):
    start = time.time()
    return [(time.time() - start, line) for line in response.iter_lines() if line]


def test_a_cold_stream_opens_at_once_with_progress_comments(corral):
    unload_all(corral)
    started = time.time()
    body = {"model": "chat", "messages": CHAT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", corral.base + "/v1/chat/completions", json=body, timeout=60) as r:
        opened = time.time() - started
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = timed_lines(r)
    assert opened < 1.5, "the stream opens before the model has loaded (two seconds at least)"
    comments = [line for _, line in lines if line.startswith(":")]
    assert comments and all(c.startswith(": loading chat ") and c.endswith("%") for c in comments), comments
    percents = [int(c.rsplit(" ", 1)[1][:-1]) for c in comments]
    assert percents == sorted(percents) and percents[-1] <= 95
    data = [line for _, line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and any('"content"' in d for d in data)
    # The openai SDK reads such a stream as any other (comments are skipped).
    unload_all(corral)
    chunks = list(OpenAI(base_url=corral.base + "/v1", api_key="x").chat.completions.create(model="chat", messages=CHAT, max_tokens=4, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason == "length"


def test_progress_as_reasoning_deltas(corral):
    unload_all(corral)
    stream = OpenAI(base_url=corral.base + "/v1", api_key="x").chat.completions.create(model="thinking", messages=CHAT, max_tokens=4, stream=True)
    reasoning = [getattr(c.choices[0].delta, "reasoning_content", None) for c in stream if c.choices]
    shown = [r for r in reasoning if r]
    assert shown and shown[0].startswith("loading thinking"), reasoning


def test_a_non_streaming_request_may_ask_for_progress(corral):
    unload_all(corral)
    r = httpx.post(corral.base + "/v1/chat/completions", headers={"X-Corral-Progress": "true"},
                   json={"model": "chat", "messages": CHAT, "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in r.text.split("\n\n") if b]
    assert blocks[0].startswith(": loading chat")
    assert blocks[-1].startswith("event: result\ndata: ")
    answer = json.loads(blocks[-1].split("data: ", 1)[1])
    assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] == 4
    unload_all(corral)
    plain = httpx.post(corral.base + "/v1/chat/completions", json={"model": "chat", "messages": CHAT, "max_tokens": 4}, timeout=60)
    assert plain.headers["content-type"].startswith("application/json") and plain.json()["object"] == "chat.completion"


def test_anthropic_and_ollama_streams_stay_alive(corral):
    unload_all(corral)
    body = {"model": "chat", "max_tokens": 4, "messages": CHAT, "stream": True}
    with httpx.stream("POST", corral.base + "/v1/messages", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[0].startswith(": loading chat") and "event: message_start" in lines and "event: message_stop" in lines
    unload_all(corral)
    with httpx.stream("POST", corral.base + "/api/chat", json={"model": "chat", "messages": CHAT, "options": {"num_predict": 4}}, timeout=60) as r:
        parts = [json.loads(line) for line in r.iter_lines() if line]
    keepalive = [p for p in parts if not p["done"] and p["message"]["content"] == ""]
    assert keepalive and parts[0] in keepalive and parts[-1]["done"] is True, parts[:3]


def test_a_load_that_fails_after_the_stream_opened_is_an_error_event(corral):
    body = {"model": "failing", "messages": CHAT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", corral.base + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[0].startswith(": loading failing") and "event: error" in lines
    error = json.loads(lines[-1][6:])["error"]
    assert error["code"] == "model_load_failed" and "failing" in error["message"]
    row = wait_until(lambda: (r := newest_row(corral)).get("model") == "failing" and r, 10, "the failed load's ledger row")
    assert row["status"] == 503


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_client_that_leaves_while_waiting_frees_its_slot(corral, path):
    unload_all(corral)
    body = {"model": "chat", "messages": CHAT, "max_tokens": 400, "stream": True, "options": {"num_predict": 400}}
    with httpx.stream("POST", corral.base + path, json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith(": loading") or '"content":""' in line:
                break  # and hang up
    deadline = time.time() + 20
    while True:
        chat = next((i for i in httpx.get(corral.base + "/admin/instances", headers=corral.h).json() if i["model"] == "chat"), None)
        rows = httpx.get(corral.base + "/admin/usage/requests?limit=1", headers=corral.h).json()["data"]
        if chat and chat["state"] == "loaded" and chat["inFlight"] == 0 and rows and rows[0]["clientDisconnected"]:
            break
        assert time.time() < deadline, (chat, rows[:1])
        time.sleep(0.2)
