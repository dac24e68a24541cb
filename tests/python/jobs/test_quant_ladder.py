"""The quant ladder on a generated F32 model with the real tools: llama-quantize per type,
llama-bench, llama-perplexity's KL divergence against the base's logits. The recommendation is
the smallest rung within maxKLD that fits, checked against the rungs themselves."""
import random

import httpx
import pytest

from corral_harness.corral import admin_cli, corral_with_model, stop_corral, wait_job


@pytest.fixture(scope="module")
def corral(tmp_path_factory):
    # Rows of 256 so the k-quants apply as they do to real models (no fallback types).
    c = corral_with_model(str(tmp_path_factory.mktemp("ladder")), "wide", "embd=256,ff=512,heads=4,kv=2,layers=2", contextSize=1024, parallel=1)
    yield c
    stop_corral(c)


def text(words=2500):
    vocabulary = "the quick brown fox jumps over a lazy dog while some people walk through the old town and talk about weather".split()
    rng = random.Random(7)
    return " ".join(rng.choice(vocabulary) for _ in range(words))


def test_a_ladder_measures_each_rung_and_recommends_the_smallest_within_budget(corral):
    quants = ["Q8_0", "Q6_K", "Q4_K_M", "Q2_K"]
    r = httpx.post(corral.base + "/admin/quant-ladder", headers=corral.h, timeout=60,
                   json={"model": "wide", "quants": ["q2_K", "Q8_0", "q4_k_m", "Q6_K"], "text": text(), "contextSize": 128, "maxKLD": 0.02})
    assert r.status_code == 202, r.text
    job = wait_job(corral, r.json()["id"])
    assert job["state"] == "succeeded", job
    result = job["result"]
    assert result["baseType"] == "F32" and 1 < result["basePerplexity"]
    rungs = result["rungs"]
    assert [x["type"] for x in rungs] == quants  # largest first, whatever order they were asked in
    sizes = [x["bytes"] for x in rungs]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] < result["baseBytes"]
    for rung in rungs:
        assert rung["fit"] in ("fits_gpu", "partial_offload", "cpu_only") and rung["estimatedMiB"] >= 0
        assert rung["promptTPS"] > 0 and rung["generationTPS"] > 0
        assert rung["perplexity"] > 1 and rung["meanKLD"] >= 0 and 0 <= rung["sameTopPercent"] <= 100
        assert rung["fallbackTensors"] == 0
    # Fewer bits drift further from the base.
    assert rungs[0]["meanKLD"] < rungs[-1]["meanKLD"]
    within = [x for x in rungs if x["meanKLD"] <= 0.02]
    expected = min(within, key=lambda x: x["bytes"])["type"] if within else None
    assert result["recommended"] == expected, result
    # The quantized files were scratch: none is left, and none became a model.
    assert not [m for m in httpx.get(corral.base + "/admin/models", headers=corral.h).json()["models"] if m["id"].startswith("wide:")]


def test_a_budget_nothing_meets_says_so_and_the_cli_runs_a_ladder(corral, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(text())
    job = admin_cli(corral, "quant-ladder", "wide", "--text", str(path), "--quants", "Q4_0", "--max-kld", "0.000000001", "--context-size", "128")
    assert job["state"] == "succeeded" and job["kind"] == "quant-ladder"
    assert job["result"].get("recommended") is None and "within a mean KLD" in job["result"]["reason"]


def test_bad_ladder_requests_are_clear_errors(corral):
    def post(body):
        return httpx.post(corral.base + "/admin/quant-ladder", headers=corral.h, json=body)

    assert post({"model": "wide", "quants": ["Q9"], "text": text()}).status_code == 400
    assert post({"model": "wide"}).status_code == 400
    assert post({"model": "nope", "text": text()}).status_code == 404
    r = post({"model": "wide", "text": text(), "maxKLD": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "maxKLD"


def test_the_model_page_charts_the_latest_ladder(corral, browser):
    from selenium.webdriver.common.by import By
    from corral_harness.browser import go, screenshot, sign_in, text_of, wait

    sign_in(browser, corral)
    go(browser, "#/models/wide", "wide")
    wait(browser, lambda d: "Quant ladder rungs" in text_of(d, "#page"), "the ladder table")
    latest = httpx.get(corral.base + "/admin/jobs?kind=quant-ladder&model=wide&limit=1", headers=corral.h).json()["jobs"][0]["result"]
    rows = browser.find_elements(By.CSS_SELECTOR, "[aria-label='Quant ladder rungs'] tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, "td").text for r in rows] == [x["type"] for x in latest["rungs"]]
    points = browser.find_elements(By.CSS_SELECTOR, "figure.scatter circle.rung")
    assert sorted(p.get_attribute("data-type") for p in points) == sorted(x["type"] for x in latest["rungs"])
    assert latest["reason"] in text_of(browser, ".recommendation")
    screenshot(browser, "quant-ladder")
