"""Every llama-server route through Corral answers as llama-server itself does (same status, same
body apart from ids and timings), routed by `model` or the default model; the operator-only
routes stay operator-only; the default model comes from routes.json, the admin API or the CLI,
survives a restart and is marked in /v1/models."""
import json
import subprocess

import httpx
import pytest

from corral_harness.corral import CORRAL, restart_corral, start_corral, stop_corral

CHAT = [{"role": "user", "content": "hi"}]
GREEDY = {"temperature": 0, "seed": 1}

# (method, path, model, body): each is sent straight to the model's llama-server and through Corral.
ROUTES = [
    ("POST", "/completion", "chat", {"prompt": "Once", "n_predict": 4, **GREEDY}),
    ("POST", "/completions", "chat", {"prompt": "Once", "n_predict": 4, **GREEDY}),
    ("POST", "/v1/completions", "chat", {"prompt": "Once", "max_tokens": 4, **GREEDY}),
    ("POST", "/chat/completions", "chat", {"messages": CHAT, "max_tokens": 4, **GREEDY}),
    ("POST", "/v1/chat/completions", "chat", {"messages": CHAT, "max_tokens": 4, **GREEDY}),
    ("POST", "/chat/completions/input_tokens", "chat", {"messages": CHAT}),
    ("POST", "/v1/chat/completions/input_tokens", "chat", {"messages": CHAT}),
    ("POST", "/responses/input_tokens", "chat", {"input": "hi"}),
    ("POST", "/v1/responses/input_tokens", "chat", {"input": "hi"}),
    ("POST", "/responses", "chat", {"input": "hi", "max_output_tokens": 4, **GREEDY}),
    ("POST", "/v1/responses", "chat", {"input": "hi", "max_output_tokens": 4, **GREEDY}),
    ("POST", "/infill", "chat", {"input_prefix": "def f(", "input_suffix": "):", "n_predict": 4, **GREEDY}),
    ("POST", "/tokenize", "chat", {"content": "hello world", "with_pieces": True}),
    ("POST", "/detokenize", "chat", {"tokens": [5, 6, 7]}),
    ("POST", "/apply-template", "chat", {"messages": CHAT}),
    ("POST", "/embedding", "embed", {"content": "hello"}),
    ("POST", "/embeddings", "embed", {"content": "hello"}),
    ("POST", "/v1/embeddings", "embed", {"input": "hello"}),
    ("POST", "/rerank", "embed", {"query": "q", "documents": ["a", "b"]}),
    ("POST", "/reranking", "embed", {"query": "q", "documents": ["a", "b"]}),
    ("POST", "/v1/rerank", "embed", {"query": "q", "documents": ["a", "b"]}),
    ("POST", "/v1/reranking", "embed", {"query": "q", "documents": ["a", "b"]}),
    # llama-server's own refusals pass through unchanged.
    ("POST", "/completion", "chat", {"prompt": "x", "n_predict": 2, "grammar": "root ::= ("}),
    ("POST", "/completion", "chat", {"prompt": "hello " * 3000, "n_predict": 2}),  # longer than the context
    ("POST", "/v1/chat/completions", "chat", {"messages": CHAT, "max_tokens": 4, "response_format": {"type": "json_object"}, **GREEDY}),
    ("GET", "/props", "chat", None),
    ("GET", "/lora-adapters", "chat", None),
]

VOLATILE = {"id", "created", "timings", "system_fingerprint", "t_prompt_processing", "t_token_generation", "created_at",
            "completed_at", "generation_settings", "model", "model_alias", "model_path", "build_info", "cached_tokens", "tokens_cached"}


def normalized(value):
    """The body without ids, times and the names the two sides give the model."""
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


@pytest.fixture(scope="module")
def corral():
    c = start_corral(extra_config={"defaultModel": "chat"})
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    yield c
    stop_corral(c)


def port_of(c, model):
    httpx.post(c.base + f"/admin/models/{model}/load", headers=c.h, timeout=120).raise_for_status()
    return next(i["port"] for i in httpx.get(c.base + "/admin/instances", headers=c.h).json() if i["model"] == model)


@pytest.mark.parametrize("method,path,model,body", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_route_answers_as_llama_server_does(corral, method, path, model, body):
    straight_url = f"http://127.0.0.1:{port_of(corral, model)}{path}"
    if method == "GET":
        straight = httpx.get(straight_url, timeout=60)
        through = httpx.get(corral.base + path, params={"model": model}, timeout=60)
    else:
        straight = httpx.post(straight_url, json=body, timeout=60)
        through = httpx.post(corral.base + path, json={"model": model, **body}, timeout=60)
    if "grammar" in (body or {}) or len(json.dumps(body or {})) > 10_000:
        assert straight.status_code == 400, straight.text[:300]  # the refusal cases really are refusals
    assert through.status_code == straight.status_code, (through.text[:300], straight.text[:300])
    if straight.headers.get("content-type", "").startswith("application/json"):
        assert normalized(through.json()) == normalized(straight.json())
    else:
        assert through.content == straight.content


def test_operator_routes_need_the_admin_token_and_say_so(corral):
    for path in ("/props", "/lora-adapters"):
        refused = httpx.post(corral.base + path + "?model=chat", json={})
        assert refused.status_code == 401 and "admin token" in refused.json()["error"]["message"], refused.text
        allowed = httpx.post(corral.base + path + "?model=chat", json=[] if path == "/lora-adapters" else {}, headers=corral.h)
        assert allowed.status_code < 500 and allowed.status_code != 401, allowed.text
    assert httpx.get(corral.base + "/slots?model=chat").status_code == 401


def test_default_model_serves_requests_that_name_none(corral):
    answer = httpx.post(corral.base + "/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert httpx.post(corral.base + "/tokenize", json={"content": "hello"}).json()["tokens"]
    assert httpx.get(corral.base + "/props").status_code == 200
    listed = {m["id"]: m for m in httpx.get(corral.base + "/v1/models").json()["data"]}
    assert listed["chat"]["meta"].get("default") is True and "default" not in listed["embed"]["meta"]
    assert httpx.get(corral.base + "/models").json() == httpx.get(corral.base + "/v1/models").json()
    assert httpx.get(corral.base + "/admin/default-model", headers=corral.h).json() == {"model": "chat"}

    # The admin's choice wins, survives a restart, and null goes back to routes.json's.
    assert httpx.put(corral.base + "/admin/default-model", headers=corral.h, json={"model": "embed"}).json() == {"model": "embed"}
    assert httpx.post(corral.base + "/v1/embeddings", json={"input": "hello"}, timeout=60).status_code == 200
    restart_corral(corral)
    import time
    deadline = time.time() + 30
    while True:
        try:
            now = httpx.get(corral.base + "/admin/default-model", headers=corral.h).json()
            break
        except httpx.TransportError:
            assert time.time() < deadline
            time.sleep(0.2)
    assert now == {"model": "embed"}
    cli = lambda *args: json.loads(subprocess.run([CORRAL, "default-model", *args, "--url", corral.base, "--token", corral.admin_token],
                                                  capture_output=True, text=True, check=True).stdout)
    assert cli("--clear") == {"model": "chat"}
    assert cli() == {"model": "chat"}
    bad = httpx.put(corral.base + "/admin/default-model", headers=corral.h, json={"model": "nope"})
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "model_not_found"
    assert httpx.put(corral.base + "/admin/default-model", headers=corral.h, json={"model": 7}).status_code == 400


def test_without_a_default_a_request_must_name_its_model():
    c = start_corral()
    try:
        refused = httpx.post(c.base + "/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2})
        assert refused.status_code == 400 and "no default model" in refused.json()["error"]["message"]
        props = httpx.get(c.base + "/props")
        assert props.status_code == 400 and props.json()["error"]["param"] == "model"
        anthropic_shape = httpx.post(c.base + "/v1/messages", json={"messages": CHAT, "max_tokens": 2})
        assert anthropic_shape.status_code == 400 and anthropic_shape.json()["error"]["type"] == "invalid_request_error"
    finally:
        stop_corral(c)


def wav_bytes():
    """A tenth of a second of silence as 16 kHz mono PCM WAV."""
    import io
    import wave
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 1600)
    return out.getvalue()


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/audio/transcriptions"])
def test_transcription_uploads_are_routed_by_their_model_field(corral, path):
    files = {"file": ("a.wav", wav_bytes(), "audio/wav")}
    straight = httpx.post(f"http://127.0.0.1:{port_of(corral, 'chat')}{path}", data={"model": "chat"}, files=files, timeout=60)
    through = httpx.post(corral.base + path, data={"model": "chat"}, files=files, timeout=60)
    # The test model has no audio encoder: llama-server's own refusal comes back unchanged.
    assert straight.status_code in (400, 500, 501) and "error" in straight.json(), straight.text
    assert through.status_code == straight.status_code, (through.text, straight.text)
    assert normalized(through.json()) == normalized(straight.json())
    unknown = httpx.post(corral.base + path, data={"model": "nope"}, files=files)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    not_multipart = httpx.post(corral.base + path, json={"model": "chat"})
    assert not_multipart.status_code == 400 and "multipart" in not_multipart.json()["error"]["message"]
