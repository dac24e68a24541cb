"""Embeddings from any model, as Ollama gives them: a chat model whose instance does not run in
embedding mode gets a companion instance that does (its own slot, memory and TTL), so the openai
SDK, langchain's OpenAIEmbeddings and OllamaEmbeddings and Ollama's /api/embed all work on it,
and no answer tells the client to restart a server."""
import time

import httpx
import pytest
from langchain_ollama import OllamaEmbeddings
from langchain_openai import OpenAIEmbeddings
from openai import OpenAI

from corral_harness.corral import start_corral, stop_corral


@pytest.fixture(scope="module")
def corral(admin_corral):
    return admin_corral


def instances(c):
    return {i["model"]: i for i in httpx.get(c.base + "/admin/instances", headers=c.h).json()}


def test_the_chat_model_embeds_through_a_companion_instance(corral):
    chat = httpx.post(corral.base + "/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert chat.status_code == 200
    answer = OpenAI(base_url=corral.base + "/v1", api_key="x").embeddings.create(model="chat", input=["hello", "world"])
    assert len(answer.data) == 2 and len(answer.data[0].embedding) > 8
    assert answer.data[0].embedding != answer.data[1].embedding
    running = instances(corral)
    # Two instances of one file: the chat one kept serving, the companion runs --embeddings.
    assert running["chat"]["state"] == "loaded" and running["chat#embeddings"]["state"] == "loaded"
    assert "--embeddings" in running["chat#embeddings"]["arguments"] and "--embeddings" not in running["chat"]["arguments"]
    # One slot (batched inputs get wrong vectors from a chat model at -np > 1), and planned by
    # llama-fit-params (which refuses --embeddings and --pooling, so they are left out of its input).
    arguments = running["chat#embeddings"]["arguments"]
    assert arguments[arguments.index("-np") + 1] == "1"
    assert running["chat#embeddings"]["planSource"] == "llama-fit-params", running["chat#embeddings"]
    assert running["chat#embeddings"]["projectedMiB"] > 0
    assert "chat#embeddings" not in [m["id"] for m in httpx.get(corral.base + "/v1/models").json()["data"]]
    native = httpx.post(corral.base + "/embedding", json={"model": "chat", "content": "hello"})
    assert native.status_code == 200, native.text


def test_langchain_embeddings_on_the_chat_model(corral):
    openai_side = OpenAIEmbeddings(model="chat", base_url=corral.base + "/v1", api_key="x", check_embedding_ctx_length=False)
    vectors = openai_side.embed_documents(["one", "two", "three"])
    assert len(vectors) == 3 and len(set(map(tuple, vectors))) == 3
    ollama_side = OllamaEmbeddings(model="chat", base_url=corral.base)
    assert len(ollama_side.embed_query("one")) == len(vectors[0])


def test_ollama_embed_and_the_embedding_model_itself(corral):
    embed = httpx.post(corral.base + "/api/embed", json={"model": "chat", "input": ["a", "b"]}).json()
    assert len(embed["embeddings"]) == 2 and embed["model"] == "chat"
    legacy = httpx.post(corral.base + "/api/embeddings", json={"model": "chat", "prompt": "a"}).json()
    assert legacy["embedding"]
    # A model that embeds by itself gets no companion.
    assert httpx.post(corral.base + "/v1/embeddings", json={"model": "embed", "input": "a"}).status_code == 200
    assert "embed#embeddings" not in instances(corral)
    text = httpx.post(corral.base + "/v1/embeddings", json={"model": "chat", "input": "a"}).text
    assert "--embeddings" not in text and "restart" not in text.lower()


def test_team_limits_apply_to_the_companion():
    c = start_corral()
    admin = {"authorization": f"Bearer {c.admin_token}"}
    try:
        team = httpx.post(c.base + "/admin/teams", headers=admin, json={"name": "t", "models": ["chat"]}).json()
        key = httpx.post(c.base + f"/admin/teams/{team['id']}/keys", headers=admin, json={}).json()["key"]
        auth = {"authorization": f"Bearer {key}"}
        assert httpx.post(c.base + "/v1/embeddings", headers=auth, json={"model": "chat", "input": "a"}, timeout=60).status_code == 200
        assert httpx.post(c.base + "/v1/embeddings", headers=auth, json={"model": "embed", "input": "a"}).status_code == 403
        deadline = time.time() + 10
        while not any(r["model"] == "chat#embeddings" and r["team"] == team["id"]
                      for r in httpx.get(c.base + "/admin/usage/requests", headers=admin).json()["data"]):
            assert time.time() < deadline, "the companion's request is in the ledger under its own name"
            time.sleep(0.2)
    finally:
        stop_corral(c)
