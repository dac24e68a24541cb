"""Rerankers: a generated GGUF whose pooling type is rank (Qwen 3's architecture with a two-label
classifier head, as Qwen3-Reranker files are) is served by a real llama-server started with
`--reranking`; `/v1/rerank` and `/rerank` (Jina/Cohere shape) score documents through Corral, the
library lists the capability, and a team key limited to the reranker can rerank and nothing else."""
import subprocess

import httpx
import pytest

from corral_harness.corral import CORRAL, corral_with_model, stop_corral

DOCUMENTS = ["a llama is an animal", "paris is a city", "x"]


@pytest.fixture(scope="module")
def corral(tmp_path_factory):
    c = corral_with_model(str(tmp_path_factory.mktemp("rerank")), "ranker", "rerank=true", contextSize=512, parallel=2)
    yield c
    stop_corral(c)


def rerank(c, path, headers=None, model="ranker", **extra):
    return httpx.post(c.base + path, headers=headers or {}, timeout=60,
                      json={"model": model, "query": "what is a llama", "documents": DOCUMENTS, **extra})


def test_rerank_scores_every_document_on_both_routes(corral):
    for path in ("/v1/rerank", "/rerank"):
        r = rerank(corral, path, top_n=3)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert sorted(x["index"] for x in results) == [0, 1, 2]
        scores = [x["relevance_score"] for x in results]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        # Random weights, but real scores: the documents are told apart.
        assert len(set(scores)) == 3, scores
    # The same question gets the same scores (deterministic, and the same instance answered).
    assert rerank(corral, "/v1/rerank").json()["results"] == rerank(corral, "/rerank").json()["results"]
    instance = [i for i in httpx.get(corral.base + "/admin/instances", headers=corral.h).json() if i["model"] == "ranker"]
    assert instance and "--reranking" in instance[0]["arguments"], instance


def test_the_library_and_ollama_show_the_rerank_capability(corral):
    models = {m["id"]: m for m in httpx.get(corral.base + "/admin/models", headers=corral.h).json()["models"]}
    assert models["ranker"]["capabilities"] == ["rerank"]
    assert [m["id"] for m in httpx.get(corral.base + "/admin/models?capability=rerank", headers=corral.h).json()["models"]] == ["ranker"]
    show = httpx.post(corral.base + "/api/show", json={"model": "ranker"}).json()
    assert show["capabilities"] == ["rerank"]


def test_a_key_limited_to_the_reranker_can_rerank_and_nothing_else(corral):
    def cli(*args):
        out = subprocess.run([CORRAL, *args, "--url", corral.base, "--token", corral.admin_token], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        import json
        return json.loads(out.stdout)

    cli("teams", "create", "search", "--models", "ranker")
    key = cli("keys", "create", "search")["key"]
    headers = {"authorization": f"Bearer {key}"}
    r = rerank(corral, "/v1/rerank", headers)
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    denied = rerank(corral, "/v1/rerank", headers, model="chat")
    assert denied.status_code == 403, denied.text
    chat = httpx.post(corral.base + "/v1/chat/completions", headers=headers, json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 403
