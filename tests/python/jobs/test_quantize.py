"""Quantize with a real llama-quantize: Ollama's `/api/create` with `quantize` (the ollama
client's own create, streamed progress), `/admin/quantize` and `corral quantize` as jobs. The
result is a model of its own with its parent recorded, smaller than its F32 source, and it
answers; a quantized source needs `allowRequantize` and then carries a warning."""
import os

import httpx
import ollama
import pytest

from corral_harness.corral import admin_cli, start_corral, stop_corral, wait_job


@pytest.fixture(scope="module")
def corral(admin_corral):
    """The module's Corral, with the admin token in `h`."""
    return admin_corral


def library(c):
    return {m["id"]: m for m in httpx.get(c.base + "/admin/models", headers=c.h).json()["models"]}


def test_ollama_create_quantizes_with_progress_and_records_the_parent(corral):
    client = ollama.Client(host=corral.base)
    lines = list(client.create(model="chat-q8", from_="chat", quantize="q8_0", stream=True))
    statuses = [line.status for line in lines]
    assert "quantizing F32 model to Q8_0" in statuses and statuses[-1] == "success", statuses
    counted = [line for line in lines if line.status == "quantizing F32 model to Q8_0" and line.total]
    assert counted and counted[-1].completed == counted[-1].total, lines
    show = client.show("chat-q8")
    assert show.details.parent_model == "chat" and show.details.quantization_level == "Q8_0"
    models = library(corral)
    assert models["chat-q8"]["parent"] == "chat" and models["chat-q8"]["quantization"] == "Q8_0"
    assert models["chat-q8"]["sizeBytes"] < models["chat"]["sizeBytes"]
    assert "chat-q8:latest" in [m.model for m in client.list().models]
    assert client.chat(model="chat-q8", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 3}).message is not None


def test_a_quantized_source_needs_allow_requantize_and_is_then_warned_about(corral):
    client = ollama.Client(host=corral.base)
    with pytest.raises(ollama.ResponseError) as refused:
        client.create(model="chat-q4", from_="chat-q8", quantize="q4_0")
    assert refused.value.status_code == 400 and "allowRequantize" in str(refused.value)
    assert "chat-q4" not in library(corral)
    r = httpx.post(corral.base + "/admin/quantize", headers=corral.h, json={"model": "chat-q8", "type": "Q4_0", "name": "chat-q4", "allowRequantize": True})
    assert r.status_code == 202, r.text
    job = wait_job(corral, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["parent"] == "chat-q8" and job["result"]["sourceType"] == "Q8_0"
    assert job["result"]["warnings"] and "requantizing from Q8_0" in job["result"]["warnings"][0]
    assert library(corral)["chat-q4"]["parent"] == "chat-q8"


def test_the_cli_quantizes_as_a_job_named_after_the_source(corral):
    job = admin_cli(corral, "quantize", "chat", "--to", "q4_K_M")
    assert job["state"] == "succeeded" and job["kind"] == "quantize"
    result = job["result"]
    assert result["name"] == "chat:q4_k_m" and result["type"] == "Q4_K_M" and result["bytes"] == os.path.getsize(
        os.path.join(corral.directory, "data", "models", "blobs", "sha256-" + result["sha256"]))
    # Tensors whose shape does not suit a k-quant get llama.cpp's fallback type, and that is said.
    assert result["fallbackTensors"] > 0
    assert library(corral)["chat:q4_k_m"]["parent"] == "chat"
    assert [j["id"] for j in httpx.get(corral.base + "/admin/jobs?kind=quantize", headers=corral.h).json()["jobs"]]


def test_bad_quantize_requests_are_clear_errors(corral):
    def post(body):
        return httpx.post(corral.base + "/admin/quantize", headers=corral.h, json=body)

    r = post({"model": "chat", "type": "q9_9"})
    assert r.status_code == 400 and "Q4_K_M" in r.json()["error"]["message"]
    r = post({"model": "nope", "type": "q8_0"})
    assert r.status_code == 404
    r = post({"model": "chat", "type": "q8_0", "name": "chat"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "name_taken"
    r = post({"model": "chat", "type": "q8_0", "name": "hf.co/a/b"})
    assert r.status_code == 400
    r = httpx.post(corral.base + "/api/create", json={"model": "x", "from": "chat", "quantize": "q9", "stream": False})
    assert r.status_code == 400 and "q4_k_m" in r.json()["error"]
    # A team key cannot quantize (an admin route).
    assert httpx.post(corral.base + "/admin/quantize", json={"model": "chat", "type": "q8_0"}).status_code == 401


def test_the_configured_default_model_stays_the_default_when_models_are_added():
    """The measured bug behind routes.json's defaultModel: the default was 'the only model', so a
    request without a model got 400 as soon as a pull, create or fine-tune added one."""

    c = start_corral(extra_config={"defaultModel": "chat"})
    try:
        ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert httpx.post(c.base + "/v1/chat/completions", json=ask, timeout=60).json()["model"] == "chat"
        made = httpx.post(c.base + "/api/create", json={"model": "chat-q8", "from": "chat", "quantize": "q8_0", "stream": False}, timeout=120)
        assert made.status_code == 200, made.text
        r = httpx.post(c.base + "/v1/chat/completions", json=ask, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == "chat", r.text
    finally:
        stop_corral(c)
