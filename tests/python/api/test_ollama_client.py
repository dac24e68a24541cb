"""The real ollama-python client (and raw httpx where the client hides the wire) against Corral's Ollama API.

The chat model has random weights: its text is gibberish, so only shapes and counts are asserted.
Tests that unload models come last.
"""
import datetime
import hashlib
import json
import math
import os
import re

import httpx
import ollama
import pytest

from corral_harness.corral import wait_until

CREATED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}(Z|[+-]\d{2}:\d{2})$")
DURATIONS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration")
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def client(corral):
    # ollama-python never retries; timeout is passed straight to httpx.
    return ollama.Client(host=corral.base, timeout=60)


@pytest.fixture(scope="module")
def http(corral):
    with httpx.Client(base_url=corral.base, timeout=60) as h:
        yield h


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def norm(vector) -> float:
    return math.sqrt(sum(v * v for v in vector))


def chat_states(corral) -> list[str]:
    return [i["state"] for i in corral.get("/admin/instances") if i["model"] == "chat"]


def ps_names(client) -> list[str]:
    return [m.name for m in client.ps().models]


# --- root and version -------------------------------------------------------------------------------------------

def test_root_and_head(http):
    r = http.get("/")
    assert r.status_code == 200
    assert r.text == "Ollama is running"
    assert http.head("/").status_code == 200


def test_version(http):
    r = http.get("/api/version")
    assert r.status_code == 200
    version = r.json()["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    # Clients gate features (embed, dimensions, structured outputs) on the reported version.
    assert tuple(int(p) for p in version.split(".")) >= (0, 6, 0)


# --- catalogue --------------------------------------------------------------------------------------------------

def test_tags_via_client(client, corral):
    models = {m.model: m for m in client.list().models if m.model != "chat-copy:latest"}
    assert set(models) == {"chat:latest", "embed:latest"}
    for name in ("chat", "embed"):
        m = models[f"{name}:latest"]
        assert m.size == os.path.getsize(f"{corral.directory}/{name}.gguf") > 0
        assert isinstance(m.modified_at, datetime.datetime)
        assert m.details.format == "gguf"
        assert m.details.family and m.details.parameter_size and m.details.quantization_level


def test_tags_raw_fields_and_real_digest(http, corral):
    expected = {f"{n}:latest": sha256_of(f"{corral.directory}/{n}.gguf") for n in ("chat", "embed")}

    def listed():
        return {m["name"]: m for m in http.get("/api/tags").json()["models"]}

    def digests_match():
        raw = listed()
        return all(raw.get(name, {}).get("digest") == d for name, d in expected.items())

    # Corral hashes the files in the background; the digest must settle on the real SHA-256.
    wait_until(digests_match, 15, f"the listed digests to be the files' SHA-256 {expected}", interval=0.25)
    raw = listed()
    for name in expected:
        m = raw[name]
        assert m["model"] == name
        assert re.fullmatch(r"[0-9a-f]{64}", m["digest"])
        assert isinstance(m["size"], int) and m["size"] > 0
        assert isinstance(m["modified_at"], str)
        details = m["details"]
        for key in ("format", "family", "families", "parameter_size", "quantization_level"):
            assert key in details, key
        assert details["format"] == "gguf"
        assert isinstance(details["families"], list)


def test_show_chat(client, http):
    s = client.show("chat")
    assert isinstance(s.modelinfo, dict) and "general.architecture" in s.modelinfo
    assert "completion" in s.capabilities
    assert s.details is not None and s.details.format == "gguf"
    assert isinstance(s.parameters, str)
    assert isinstance(s.template, str)
    assert isinstance(s.modified_at, datetime.datetime)
    raw = http.post("/api/show", json={"model": "chat"}).json()
    for key in ("model_info", "capabilities", "details", "parameters", "template", "modified_at"):
        assert key in raw, key


def test_show_embed(client):
    s = client.show("embed")
    assert "embedding" in s.capabilities
    assert "general.architecture" in s.modelinfo


# --- chat --------------------------------------------------------------------------------------------------------

def test_chat_non_streaming(client):
    r = client.chat(model="chat", messages=HELLO, options={"num_predict": 5})
    assert r.message.role == "assistant"
    assert isinstance(r.message.content, str)
    assert r.done is True
    assert r.done_reason == "length"
    assert r.eval_count == 5
    assert r.prompt_eval_count > 0
    assert r.total_duration >= r.load_duration >= 0
    assert r.eval_duration > 0


def test_chat_non_streaming_raw_types_and_timestamp(http):
    r = http.post("/api/chat", json={"model": "chat", "messages": HELLO, "stream": False, "options": {"num_predict": 5}})
    assert r.status_code == 200
    body = r.json()
    assert CREATED_AT.match(body["created_at"]), body["created_at"]
    for key in DURATIONS:
        assert type(body[key]) is int, (key, body[key])
    assert body["eval_count"] == 5
    assert body["message"]["role"] == "assistant"


def test_chat_streaming(client):
    chunks = list(client.chat(model="chat", messages=HELLO, stream=True, options={"num_predict": 5}))
    assert len(chunks) > 1
    *middle, last = chunks
    assert all(c.done is False for c in middle)
    assert all(c.done_reason is None and c.total_duration is None and c.eval_count is None for c in middle)
    assert last.done is True
    assert last.done_reason == "length"
    assert last.eval_count == 5
    assert last.total_duration >= last.load_duration >= 0
    assert last.eval_duration > 0 and last.prompt_eval_count > 0
    assert all(c.message.role == "assistant" for c in chunks)
    assert "".join(c.message.content or "" for c in chunks)


def test_model_names_are_case_insensitive(client):
    r = client.chat(model="CHAT:latest", messages=HELLO, options={"num_predict": 2})
    assert r.done is True and r.eval_count == 2


def test_unknown_option_is_ignored(client):
    r = client.chat(model="chat", messages=HELLO, options={"tfs_z": 1.0, "num_predict": 3})
    assert r.done is True and r.eval_count == 3


def test_wrong_option_type_is_400(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="chat", messages=HELLO, options={"temperature": "hot"})
    assert e.value.status_code == 400


# --- generate ----------------------------------------------------------------------------------------------------

def test_generate_non_streaming_with_system(client):
    r = client.generate(model="chat", prompt="hello", system="be brief", options={"num_predict": 4})
    assert r.done is True and r.done_reason == "length"
    assert r.eval_count == 4
    assert isinstance(r.response, str) and r.response
    assert r.total_duration >= r.load_duration >= 0


def test_generate_streaming_with_system(client):
    chunks = list(client.generate(model="chat", prompt="hello", system="be brief", stream=True, options={"num_predict": 4}))
    assert len(chunks) > 1
    *middle, last = chunks
    assert all(c.done is False for c in middle)
    assert last.done is True and last.done_reason == "length"
    assert last.eval_count == 4
    assert "".join(c.response or "" for c in chunks)


def test_generate_raw(client):
    r = client.generate(model="chat", prompt="hello", raw=True, options={"num_predict": 4})
    assert r.done is True and r.eval_count == 4
    assert isinstance(r.response, str)


# --- ps ----------------------------------------------------------------------------------------------------------

def test_ps_after_chat(client):
    client.chat(model="chat", messages=HELLO, options={"num_predict": 1})
    entries = [m for m in client.ps().models if m.name == "chat:latest"]
    assert len(entries) == 1
    e = entries[0]
    assert e.size > 0
    assert e.size_vram >= 0
    assert isinstance(e.expires_at, datetime.datetime)
    assert e.context_length >= 2048
    assert e.details is not None and e.details.format == "gguf"


# --- embeddings --------------------------------------------------------------------------------------------------

def test_embed_batch_is_normalised(client):
    r = client.embed(model="embed", input=["a", "b"])
    assert len(r.embeddings) == 2
    assert len(r.embeddings[0]) == len(r.embeddings[1]) > 8
    for v in r.embeddings:
        assert abs(norm(v) - 1.0) < 1e-3


def test_embed_dimensions_truncates_and_renormalises(client):
    r = client.embed(model="embed", input=["a", "b"], dimensions=8)
    assert [len(v) for v in r.embeddings] == [8, 8]
    for v in r.embeddings:
        assert abs(norm(v) - 1.0) < 1e-3


def test_embed_single_string(client):
    r = client.embed(model="embed", input="hello world")
    assert len(r.embeddings) == 1 and len(r.embeddings[0]) > 0
    assert abs(norm(r.embeddings[0]) - 1.0) < 1e-3


def test_legacy_embeddings(client):
    r = client.embeddings(model="embed", prompt="hello world")
    assert len(r.embedding) > 0
    assert all(isinstance(x, float) for x in r.embedding)


# --- errors ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["chat", "generate", "show"])
def test_unknown_model_is_404(client, call):
    with pytest.raises(ollama.ResponseError) as e:
        if call == "chat":
            client.chat(model="nope", messages=HELLO)
        elif call == "generate":
            client.generate(model="nope", prompt="hi")
        else:
            client.show("nope")
    assert e.value.status_code == 404
    assert "nope" in e.value.error


def test_unknown_model_streaming_is_404_before_the_stream(client, http):
    r = http.post("/api/chat", json={"model": "nope", "messages": HELLO, "stream": True})
    assert r.status_code == 404
    body = r.json()
    assert isinstance(body.get("error"), str) and "nope" in body["error"]
    # The client sees the status (not a mid-stream error, whose status_code would be -1).
    with pytest.raises(ollama.ResponseError) as e:
        list(client.chat(model="nope", messages=HELLO, stream=True))
    assert e.value.status_code == 404


# --- copy and delete ---------------------------------------------------------------------------------------------

def test_copy_then_delete(client):
    try:
        assert client.copy(source="chat", destination="chat-copy").status == "success"
        assert "chat-copy:latest" in [m.model for m in client.list().models]
        r = client.chat(model="chat-copy", messages=HELLO, options={"num_predict": 2})
        assert r.done is True and r.eval_count == 2
        assert client.delete("chat-copy").status == "success"
        assert "chat-copy:latest" not in [m.model for m in client.list().models]
        with pytest.raises(ollama.ResponseError) as e:
            client.delete("chat-copy")
        assert e.value.status_code == 404
    finally:
        try:
            client.delete("chat-copy")
        except ollama.ResponseError:
            pass


def test_deleting_a_file_backed_model_is_forbidden(client, corral):
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("chat")
    assert e.value.status_code == 403
    assert "chat:latest" in [m.model for m in client.list().models]
    assert os.path.exists(f"{corral.directory}/chat.gguf")


# --- load and unload (last: these change what is loaded) ---------------------------------------------------------

def test_generate_empty_prompt_loads(client, corral):
    corral.post("/admin/models/chat/unload", {})
    wait_until(lambda: "loaded" not in chat_states(corral), 10, "chat unloaded")
    r = client.generate(model="chat")  # no prompt at all, as `ollama run` does to preload
    assert r.done is True and r.done_reason == "load"
    assert "loaded" in chat_states(corral)


def test_generate_empty_prompt_with_keep_alive_zero_unloads(client, corral):
    client.generate(model="chat")
    assert "loaded" in chat_states(corral)
    r = client.generate(model="chat", prompt="", keep_alive=0)
    assert r.done is True and r.done_reason == "unload"
    wait_until(lambda: "loaded" not in chat_states(corral), 10, "chat unloaded")


def test_chat_with_keep_alive_zero_unloads_afterwards(client, corral):
    r = client.chat(model="chat", messages=HELLO, options={"num_predict": 2}, keep_alive=0)
    assert r.done is True and r.eval_count == 2
    wait_until(lambda: "chat:latest" not in ps_names(client), 10, "chat gone from /api/ps")
    wait_until(lambda: "loaded" not in chat_states(corral), 10, "chat unloaded")
