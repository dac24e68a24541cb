"""The operator routes for choosing and tuning models, and their CLI twins, against a real
llama-server: library (filters, sort, compare, incremental scan), hardware, compatibility (with
llama-fit-params' own projection), recommendations, sampling profiles, benchmarks (poll and SSE)
and a successive-halving tuning session whose applied winner the next spawn uses."""
import json
import math
import os
import signal
import subprocess
import time

import httpx
import pytest

from corral_harness.corral import CORRAL, admin_cli as cli, admin_get as get, admin_post, llama_tool, make_model, start_corral, stop_corral, wait_until


@pytest.fixture(scope="module")
def corral(admin_corral):
    return admin_corral


def test_hardware_describes_this_machine(corral):
    hw = get(corral, "/admin/hardware")
    assert hw["logicalCores"] == os.cpu_count()
    assert hw["ramTotalMiB"] > 0 and 0 < hw["ramAvailableMiB"] <= hw["ramTotalMiB"]
    assert hw["backend"] in ("CPU", "CUDA", "ROCm", "Metal", "Vulkan", "SYCL")
    assert hw["llamaBuild"].startswith("version:")
    assert cli(corral, "library", "hardware")["cpuModel"] == hw["cpuModel"]


def test_library_lists_filters_sorts_and_compares(corral):
    models = get(corral, "/admin/models")["models"]
    assert [m["id"] for m in models] == ["chat", "embed"]
    chat = models[0]
    assert chat["architecture"] == "llama" and chat["quantization"] == "F32" and chat["sizeBytes"] == os.path.getsize(f"{corral.directory}/chat.gguf")
    assert chat["fit"]["verdict"] == "cpu_only" and chat["fit"]["largestContext"] >= 2048
    assert "insert" in chat["capabilities"] and chat["aliases"] == ["chat-alias"]
    assert [m["id"] for m in get(corral, "/admin/models?capability=embedding")["models"]] == ["embed"]
    assert [m["id"] for m in get(corral, "/admin/models?q=CHA")["models"]] == ["chat"]
    assert get(corral, "/admin/models?fits=false")["count"] == 0
    assert get(corral, "/admin/models?minSize=1GiB")["count"] == 0
    assert [m["id"] for m in get(corral, "/admin/models?sort=size&order=desc")["models"]] == \
        sorted(["chat", "embed"], key=lambda i: -os.path.getsize(f"{corral.directory}/{i}.gguf"))
    get(corral, "/admin/models?sort=colour", 400)
    get(corral, "/admin/models?minParams=lots", 400)
    both = get(corral, "/admin/models/compare?ids=chat,embed")
    assert [m["id"] for m in both["models"]] == ["chat", "embed"] and "capabilities" in both["differing"]
    get(corral, "/admin/models/compare?ids=chat", 400)
    get(corral, "/admin/models/compare?ids=chat,nope", 404)
    assert get(corral, "/admin/models/chat-alias")["id"] == "chat"
    get(corral, "/admin/models/nope", 404)
    assert cli(corral, "library", "list", "--capability", "embedding")["count"] == 1


def test_scan_is_incremental_and_finds_new_files(corral, tmp_path):
    first = httpx.post(corral.base + "/admin/models/scan", headers=corral.h).json()
    assert first["filesRead"] == 0 and first["filesReused"] == 2
    os.utime(f"{corral.directory}/chat.gguf")  # touched: read again
    again = cli(corral, "library", "scan")
    assert again["filesRead"] == 1 and again["filesReused"] == 1


def test_compatibility_matches_llama_fit_params(corral):
    c = get(corral, "/admin/models/chat/compatibility?ctx=2048&kv=f32&exact=true")
    assert c["verdict"] == "cpu_only" and c["settings"]["kv"] == "f32"
    host = next(d for d in c["estimate"] if d["device"] == "Host")
    exact = next(d for d in c["exact"]["projection"] if d["device"] == "Host")
    assert abs(host["kvMiB"] - exact["contextMiB"]) <= 1 and abs(host["weightsMiB"] - exact["modelMiB"]) <= 1
    assert c["largestContext"] >= 2048
    assert {row["context"] for row in c["table"]} >= {512, 2048}
    get(corral, "/admin/models/chat/compatibility?kv=q9_9", 400)
    get(corral, "/admin/models/chat/compatibility?kv=f16&fa=off", 200)
    # The tiny model's head size (16) is not a multiple of q8_0's block (32): llama.cpp would refuse.
    assert "divisible" in httpx.get(corral.base + "/admin/models/chat/compatibility?kv=q8_0", headers=corral.h).json()["error"]["message"]
    get(corral, "/admin/models/chat/compatibility?ctx=-1", 400)
    get(corral, "/admin/models/nope/compatibility", 404)
    assert cli(corral, "library", "compatibility", "chat", "--ctx", "1024")["settings"]["ctx"] == 1024


def test_recommendations_rank_what_fits_with_reasons(corral):
    chat = get(corral, "/admin/recommendations?task=chat")["recommendations"]
    assert [r["model"] for r in chat] == ["chat"] and "cpu only" in chat[0]["reason"]
    assert [r["model"] for r in get(corral, "/admin/recommendations?task=embedding")["recommendations"]] == ["embed"]
    assert "fill-in-the-middle" in get(corral, "/admin/recommendations?task=code")["recommendations"][0]["reason"]
    assert get(corral, "/admin/recommendations?task=chat&min_ctx=100000")["recommendations"] == []
    get(corral, "/admin/recommendations?task=poetry", 400)


def test_sampling_profiles_fill_in_what_the_request_leaves_out(corral):
    names = {p["name"]: p for p in get(corral, "/admin/profiles")["profiles"]}
    assert {"precise", "balanced", "creative", "code"} <= set(names)
    r = httpx.put(corral.base + "/admin/profiles/short", headers=corral.h, json={"max_tokens": 3, "temperature": 0})
    assert r.status_code == 200
    # model@profile and "profile" both apply it; explicit fields win.
    body = {"model": "chat@short", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(corral.base + "/v1/chat/completions", json=body).json()["usage"]["completion_tokens"] == 3
    body = {"model": "chat", "profile": "short", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(corral.base + "/v1/chat/completions", json=body).json()["usage"]["completion_tokens"] == 5
    ollama = httpx.post(corral.base + "/api/generate", json={"model": "chat@short", "prompt": "hi", "stream": False}).json()
    assert ollama["eval_count"] == 3
    bad = httpx.post(corral.base + "/v1/chat/completions", json={"model": "chat", "profile": "nope", "messages": []})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "profile"
    assert httpx.put(corral.base + "/admin/profiles/bad", headers=corral.h, json={"temperature": "hot"}).status_code == 400
    assert httpx.put(corral.base + "/admin/profiles/bad", headers=corral.h, json={"colour": 1}).status_code == 400
    assert httpx.delete(corral.base + "/admin/profiles/precise", headers=corral.h).status_code == 409
    assert httpx.delete(corral.base + "/admin/profiles/short", headers=corral.h).status_code == 204
    get(corral, "/admin/profiles/short", 404)


def test_benchmark_runs_through_the_serving_path(corral):
    r = httpx.post(corral.base + "/admin/benchmarks", headers=corral.h, json={"model": "chat", "requests": 6, "concurrency": 2, "maxTokens": 8})
    assert r.status_code == 202, r.text
    run = r.json()
    seen = []
    with httpx.stream("GET", corral.base + f"/admin/benchmarks/{run['id']}/events", headers=corral.h, timeout=120) as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        for line in events.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
    assert seen[-1]["status"] == "done" and seen[-1]["completed"] == 6
    assert [s["completed"] for s in seen] == sorted(s["completed"] for s in seen)
    done = get(corral, f"/admin/benchmarks/{run['id']}")
    result = done["result"]
    assert result["requests"] == 6 and result["errors"] == 0 and result["completionTokens"] == 48
    assert result["timeToFirstTokenMs"]["p50"] > 0 and result["generationTokensPerSecond"]["p50"] > 0
    assert done["memoryMiB"]
    assert get(corral, "/admin/models/chat")["benchmarks"][0]["id"] == run["id"]
    for bad in ({"model": "nope"}, {"model": "chat", "requests": 0}, {"model": "embed"}, {}):
        assert httpx.post(corral.base + "/admin/benchmarks", headers=corral.h, json=bad).status_code in (400, 404)
    get(corral, "/admin/benchmarks/bench-nothing", 404)
    cli_run = cli(corral, "bench", "chat", "--requests", "2", "--max-tokens", "4")
    assert cli_run["status"] == "done" and cli_run["result"]["completionTokens"] == 8


def perplexity_text(words=2500, seed=1):
    import random
    rng = random.Random(seed)
    vocabulary = "the quick brown fox jumps over a lazy dog while birds sing in tall green trees".split()
    return " ".join(rng.choice(vocabulary) for _ in range(words))


def finished_perplexity(c, run_id, seconds=120):
    """Follows a perplexity run's job events (the stream ends with the job); the run as
    /admin/benchmarks shows it, and the event types seen."""
    types = []
    with httpx.stream("GET", c.base + f"/admin/benchmarks/{run_id}/events", headers=c.h, timeout=seconds) as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        types = [line[7:] for line in events.iter_lines() if line.startswith("event: ")]
    run = get(c, f"/admin/benchmarks/{run_id}")
    assert run["state"] in ("succeeded", "failed", "cancelled") and "state" in types, (run, types)
    return run


def test_perplexity_is_measured_by_llama_perplexity_and_kept_on_the_model(corral):
    text = perplexity_text()
    r = httpx.post(corral.base + "/admin/benchmarks", headers=corral.h,
                   json={"model": "chat", "kind": "perplexity", "text": text, "contextSize": 64, "chunks": 4})
    assert r.status_code == 202, r.text
    started = r.json()
    assert started["kind"] == "perplexity" and started["text"]["source"] == "inline" and started["contextSize"] == 64
    done = finished_perplexity(corral, started["id"])
    assert done["status"] == "done", done
    result = done["result"]
    assert result["chunks"] == 4 and result["contextSize"] == 64 and result["perplexity"] > 1 and result["error"] > 0
    assert done["completed"] == 4 and done["total"] == 4
    # The same figure as the tool run by hand on the same file and settings: nothing invented.
    tool = llama_tool("llama-perplexity")
    with open(os.path.join(corral.directory, "ppl.txt"), "w") as f:
        f.write(text)
    out = subprocess.run([tool, "-m", f"{corral.directory}/chat.gguf", "-f", f.name, "-c", "64", "--chunks", "4", *done["arguments"]],
                         capture_output=True, text=True, timeout=120)
    final = next(line for line in out.stderr.splitlines() + out.stdout.splitlines() if "Final estimate" in line)
    assert f"PPL = {result['perplexity']:.4f}" in final
    assert get(corral, f"/admin/jobs/{started['id']}")["kind"] == "perplexity"
    assert get(corral, "/admin/benchmarks?model=chat")["perplexity"][0]["id"] == started["id"]
    entry = get(corral, "/admin/models/chat")
    assert entry["perplexity"][0]["result"]["perplexity"] == result["perplexity"]

    # An uploaded file gives the same text, so the same figure.
    uploaded = httpx.post(corral.base + "/v1/files", headers=corral.h, files={"file": ("ppl.txt", text.encode())},
                          data={"purpose": "user_data"}).json()
    again = httpx.post(corral.base + "/admin/benchmarks", headers=corral.h,
                       json={"model": "chat", "kind": "perplexity", "file_id": uploaded["id"], "contextSize": 64, "chunks": 4}).json()
    assert again["text"] == {"source": uploaded["id"], "sha256": started["text"]["sha256"]}
    assert finished_perplexity(corral, again["id"])["result"]["perplexity"] == result["perplexity"]

    # Too short a text fails with the tool's own reason; bad requests are 400/404 in OpenAI's shape.
    short = httpx.post(corral.base + "/admin/benchmarks", headers=corral.h,
                       json={"model": "chat", "kind": "perplexity", "text": "too short", "contextSize": 64}).json()
    failed = finished_perplexity(corral, short["id"])
    assert failed["status"] == "failed" and "tokens" in failed["error"], failed
    for bad, status in (({"model": "chat", "kind": "perplexity"}, 400), ({"model": "chat", "kind": "perplexity", "text": "x", "file_id": "file-1"}, 400),
                        ({"model": "chat", "kind": "perplexity", "file_id": "file-nothing"}, 404), ({"model": "chat", "kind": "nope"}, 400),
                        ({"model": "chat", "kind": "perplexity", "text": "", "contextSize": 64}, 400),
                        ({"model": "chat", "kind": "perplexity", "text": text, "contextSize": 8}, 400)):
        r = httpx.post(corral.base + "/admin/benchmarks", headers=corral.h, json=bad)
        assert r.status_code == status and r.json()["error"]["message"], (bad, r.text)


@pytest.mark.parametrize("strategy", ["tpe", "hyperband", "evolutionary"])
def test_adaptive_tuning_strategies_choose_their_trials_within_the_budget(corral, strategy):
    space = {"ubatch": [64, 128, 256], "contextSize": [512, 1024, 100000000]}
    session = httpx.post(corral.base + "/admin/tuning", headers=corral.h, json={
        "model": "chat", "strategy": strategy, "objective": "max_generation_tps", "space": space, "requests": 2, "maxTokens": 4,
        "maxCandidates": 3, "seed": 7}).json()
    deadline = time.time() + 120
    while (session := get(corral, f"/admin/tuning/{session['id']}"))["status"] in ("queued", "running"):
        assert time.time() < deadline
        time.sleep(0.3)
    assert session["status"] == "done", session
    trials = session["trials"]
    measured = [t for t in trials if t["status"] == "done"]
    assert 1 <= len(measured) <= 3 and all(t["score"] is not None for t in measured)
    assert all(t["status"] in ("done", "pruned", "skipped", "failed") for t in trials)
    assert len([t for t in trials if t["status"] == "pruned"]) == 3  # the 100M context never fits
    best = trials[session["best"]]
    assert best["status"] == "done" and best["score"] == max(t["score"] for t in measured)


def test_a_tuning_session_reports_its_trials_live_stops_on_patience_and_keeps_its_pareto_front(corral):
    space = {"ubatch": [32, 64, 128, 256], "contextSize": [512, 100000000]}
    started = httpx.post(corral.base + "/admin/tuning", headers=corral.h, json={
        "model": "chat", "strategy": "tpe", "objective": "max_generation_tps", "space": space, "requests": 2, "maxTokens": 4,
        "maxTrials": 4, "patience": 1, "seed": 3}).json()
    # The event stream ends with the session.
    seen = []
    with httpx.stream("GET", f"{corral.base}/admin/tuning/{started['id']}/events", headers=corral.h, timeout=180) as r:
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event in ("pruned", "trial_started", "trial", "new_best"):
                seen.append((event, json.loads(line[6:])["data"]["index"]))
    session = get(corral, f"/admin/tuning/{started['id']}")
    assert session["status"] == "done", session
    trials = session["trials"]
    pruned = sorted(i for e, i in seen if e == "pruned")
    assert pruned == sorted(t["index"] for t in trials if t["status"] == "pruned") and pruned
    measured = [i for e, i in seen if e == "trial"]
    assert [i for e, i in seen if e == "trial_started"] == measured and measured
    # A new best is announced for the first measured trial and for each that beat every earlier one.
    best_so_far, expected = None, []
    for i in measured:
        score = trials[i].get("score")
        if score is not None and (best_so_far is None or score > best_so_far):
            best_so_far, expected = score, expected + [i]
    assert [i for e, i in seen if e == "new_best"] == expected and expected[-1] == session["best"]
    # Patience 1: the session stopped at the first measured trial that did not beat the best.
    if len(measured) < 4:
        assert session["stoppedEarly"].startswith("patience") and (trials[measured[-1]].get("score") or -1e300) <= best_so_far
        assert all(t["reason"] == session["stoppedEarly"] for t in trials if t["status"] == "skipped")
    # The Pareto front: measured trials no other one beats on speed, first token and memory at once.
    def measures(t):
        r = t["result"]
        return (-r["generationTokensPerSecond"]["p50"], r["timeToFirstTokenMs"]["p50"], t.get("memoryMiB") or t["estimatedMiB"])
    done = [t for t in trials if t["status"] == "done"]
    def dominated(t):
        return any(all(a <= b for a, b in zip(measures(o), measures(t))) and measures(o) != measures(t) for o in done if o is not t)
    assert session["pareto"] == [t["index"] for t in done if not dominated(t)] and session["pareto"]
    r = httpx.post(corral.base + "/admin/tuning", headers=corral.h, json={"model": "chat", "space": {"ubatch": [128]}, "maxSeconds": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "maxSeconds"


def test_tuning_repeats_each_measure_with_an_interval_and_remeasures_the_top_trials(corral):
    started = httpx.post(corral.base + "/admin/tuning", headers=corral.h, json={
        "model": "chat", "strategy": "grid", "objective": "max_generation_tps", "space": {"ubatch": [64, 128, 256]},
        "requests": 2, "maxTokens": 4, "repetitions": 2, "remeasureTop": 2})
    assert started.status_code == 202, started.text
    session = wait_session(corral, started.json()["id"], until=lambda s: s["status"] not in ("queued", "running"), timeout=180)
    assert session["status"] == "done", session
    done = [t for t in session["trials"] if t["status"] == "done"]
    assert len(done) == 3
    for t in done:
        m = t["measures"]
        n = len(m["repetitions"])
        assert n == (2 + 4 if t.get("remeasured") else 2), t
        g = m["generationTPS"]
        values = [r["generationTPS"] for r in m["repetitions"]]
        assert g["n"] == n and abs(g["mean"] - sum(values) / n) < 1e-9 and g["low"] <= g["mean"] <= g["high"]
        assert t["score"] == pytest.approx(g["mean"])
    remeasured = [t for t in done if t.get("remeasured")]
    assert len(remeasured) == 2
    best = session["trials"][session["best"]]
    assert best.get("remeasured") and best["score"] == max(t["score"] for t in remeasured)


def test_a_sampling_session_reuses_one_server_and_its_winner_becomes_a_profile(corral):
    started = httpx.post(corral.base + "/admin/tuning", headers=corral.h, json={
        "model": "chat", "strategy": "grid", "objective": "max_generation_tps", "requests": 2, "maxTokens": 4,
        "space": {"ubatch": [128], "temperature": [0.2, 1.3], "top_k": [1, 40]}})
    assert started.status_code == 202, started.text
    session = wait_session(corral, started.json()["id"], until=lambda s: s["status"] not in ("queued", "running"), timeout=120)
    assert session["status"] == "done", session
    trials = session["trials"]
    assert [t["candidate"]["sampling"] for t in trials] == [
        {"temperature": 0.2, "top_k": 1}, {"temperature": 0.2, "top_k": 40}, {"temperature": 1.3, "top_k": 1}, {"temperature": 1.3, "top_k": 40}]
    # Only sampling differs between them: one llama-server answered all four.
    assert [t["server"] for t in trials] == ["launched", "reused", "reused", "reused"]
    winner = trials[session["best"]]["candidate"]["sampling"]
    applied = admin_post(corral, f"/admin/tuning/{session['id']}/apply", {"profile": "fast-chat"})
    assert applied["samplingProfile"] == "fast-chat" and applied["sampling"] == winner
    profile = get(corral, "/admin/profiles/fast-chat")
    assert profile["source"] == "admin" and {k: float(v) for k, v in profile["fields"].items()} == winner, profile
    r = httpx.post(corral.base + f"/admin/tuning/{session['id']}/apply", headers=corral.h, json={"profile": "bad name@x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "profile"
    # The next request that names the profile is sampled with it (llama-server's slot shows it).
    r = httpx.post(corral.base + "/v1/chat/completions", json={"model": "chat@fast-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200, r.text
    slots = httpx.get(corral.base + "/slots?model=chat", headers=corral.h).json()
    used = [s["params"] for s in slots if s.get("params") and s.get("id_task", -1) >= 0]
    assert any(abs(p["temperature"] - winner["temperature"]) < 1e-6 and p["top_k"] == winner["top_k"] for p in used), used


def test_a_weighted_objective_scores_each_measure_by_its_weight(corral):
    started = httpx.post(corral.base + "/admin/tuning", headers=corral.h, json={
        "model": "chat", "strategy": "grid", "objective": "weighted", "weights": {"generationTPS": 2, "ttftMs": 1},
        "space": {"ubatch": [64, 256]}, "requests": 2, "maxTokens": 4})
    assert started.status_code == 202, started.text
    session = wait_session(corral, started.json()["id"], until=lambda s: s["status"] not in ("queued", "running"))
    assert session["status"] == "done", session
    done = [t for t in session["trials"] if t["status"] == "done"]
    for t in done:
        r = t["result"]
        expected = 2 * math.log(r["generationTokensPerSecond"]["p50"]) - math.log(r["timeToFirstTokenMs"]["p50"])
        assert t["score"] == pytest.approx(expected, rel=1e-9)
    assert session["best"] == max(done, key=lambda t: t["score"])["index"]
    for body, param in (({"objective": "weighted"}, "weights"), ({"objective": "weighted", "weights": {"speed": 1}}, "weights"),
                        ({"objective": "weighted", "weights": {"ttftMs": -1}}, "weights")):
        r = httpx.post(corral.base + "/admin/tuning", headers=corral.h, json={"model": "chat", "space": {"ubatch": [128]}, **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_a_sampling_session_with_a_quality_objective_from_an_evaluation_picks_answers_that_pass(corral):
    # The items' reference answers are the model's greedy answers: greedy sampling passes them all.
    questions = [f"Question number {i}?" for i in range(5)]
    def answer(q, **sampling):
        r = httpx.post(corral.base + "/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user", "content": q}],
                                                                   "max_tokens": 4, "seed": 5, **sampling}, timeout=60)
        return r.json()["choices"][0]["message"]["content"]
    items = [{"item": {"question": q, "answer": answer(q, temperature=0)}} for q in questions]
    evaluation = httpx.post(corral.base + "/v1/evals", headers=corral.h, json={
        "name": "greedy", "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
        "testing_criteria": [{"type": "string_check", "name": "same", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}]}).json()
    run = httpx.post(corral.base + f"/v1/evals/{evaluation['id']}/runs", headers=corral.h, json={"data_source": {
        "type": "completions", "model": "chat", "source": {"type": "file_content", "content": items},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 4, "seed": 5}}}).json()
    started = httpx.post(corral.base + "/admin/tuning", headers=corral.h, json={
        "model": "chat", "strategy": "grid", "objective": "quality", "quality": {"evalRun": run["id"]}, "requests": 1, "maxTokens": 2,
        "space": {"temperature": [0.0, 1.9], "top_k": [1, 200]}})
    assert started.status_code == 202, started.text
    session = wait_session(corral, started.json()["id"], until=lambda s: s["status"] not in ("queued", "running"))
    assert session["status"] == "done", session
    trials = {(t["candidate"]["sampling"]["temperature"], t["candidate"]["sampling"]["top_k"]): t for t in session["trials"]}
    assert all((t.get("qualityDetail") or "").endswith("of 5 items passed") for t in trials.values()), [(k, t["status"], t.get("reason"), t.get("qualityDetail")) for k, t in trials.items()]
    # Greedy in all but the hot, wide one: those give the reference answers (a trial's own
    # llama-server may break a near-tie of this random model differently from the serving one —
    # and from one greedy trial to the next, as its prompt cache differs — so not necessarily all
    # of them, nor the same ones); the hot, wide one scores below every greedy one.
    greedy = [trials[k]["quality"] for k in ((0.0, 1), (1.9, 1), (0.0, 200))]
    assert min(greedy) >= 0.6, greedy
    assert trials[(1.9, 200)]["quality"] < min(greedy)
    best = session["trials"][session["best"]]
    assert best["quality"] == max(greedy) and best["score"] == max(t["score"] for t in trials.values())
    # Applied, the winner's sampling answers the next request named with its profile.
    applied = admin_post(corral, f"/admin/tuning/{session['id']}/apply", {"profile": "greedy-chat"})
    assert applied["sampling"] == best["candidate"]["sampling"]
    assert answer(questions[0], profile="greedy-chat") == items[0]["item"]["answer"]
    bad = httpx.post(corral.base + "/admin/tuning", headers=corral.h, json={"model": "chat", "objective": "quality", "space": {"ubatch": [128]}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "quality"
    missing = httpx.post(corral.base + "/admin/tuning", headers=corral.h, json={
        "model": "chat", "objective": "quality", "quality": {"evalRun": "evalrun-none"}, "space": {"ubatch": [128]}})
    assert missing.status_code == 404


def test_a_runtime_session_can_optimise_the_perplexity_of_a_text(corral):
    text = "The quick brown fox jumps over the lazy dog. " * 60
    started = httpx.post(corral.base + "/admin/tuning", headers=corral.h, json={
        "model": "chat", "strategy": "grid", "objective": "weighted", "weights": {"quality": 1, "generationTPS": 1},
        "quality": {"text": text, "contextSize": 64}, "space": {"ubatch": [64, 128], "temperature": [0.5, 1.0]},
        "requests": 1, "maxTokens": 2})
    assert started.status_code == 202, started.text
    session = wait_session(corral, started.json()["id"], until=lambda s: s["status"] not in ("queued", "running"))
    assert session["status"] == "done", session
    trials = session["trials"]
    assert all(t["qualityDetail"].startswith("PPL") and t["quality"] > 1 for t in trials), trials
    # Sampling does not change perplexity: the trials that differ only in sampling share one
    # measurement per llama-server setting.
    by_setting = {}
    for t in trials:
        by_setting.setdefault(t["candidate"]["ubatch"], set()).add(t["qualityDetail"])
    assert len(by_setting) == 2 and all(len(v) == 1 for v in by_setting.values())
    for t in trials:
        expected = math.log(t["result"]["generationTokensPerSecond"]["p50"]) - math.log(t["quality"])
        assert t["score"] == pytest.approx(expected, rel=1e-9)


def test_the_cli_tunes_sampling_with_a_weighted_objective_follows_it_and_applies_the_winner(corral):
    out = subprocess.run([CORRAL, "tune", "chat", "--strategy", "grid", "--temperature", "0.3,0.8", "--objective", "weighted",
                          "--weights", "generationTPS=1,ttftMs=1", "--repetitions", "2", "--apply", "--url", corral.base, "--token", corral.admin_token],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    decoder = json.JSONDecoder()
    session, end = decoder.raw_decode(out.stdout)
    applied, _ = decoder.raw_decode(out.stdout[end:].lstrip())
    assert session["status"] == "done" and session["request"]["weights"] == {"generationTPS": 1, "ttftMs": 1}
    assert [t["candidate"]["sampling"]["temperature"] for t in session["trials"]] == [0.3, 0.8]
    assert all(len(t["measures"]["repetitions"]) == 2 for t in session["trials"] if t["status"] == "done")
    assert applied["samplingProfile"] == "tuned-chat" and applied["sampling"] == session["trials"][session["best"]]["candidate"]["sampling"]
    bad = subprocess.run([CORRAL, "tune", "chat", "--weights", "speed", "--url", corral.base, "--token", corral.admin_token], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "NAME=NUMBER" in bad.stderr


def test_tuning_constraints_make_trials_infeasible_not_merely_worse(corral):
    def session(constraints, strategy="grid"):
        started = httpx.post(corral.base + "/admin/tuning", headers=corral.h, json={
            "model": "chat", "strategy": strategy, "space": {"ubatch": [128, 256]}, "requests": 2, "maxTokens": 4, "constraints": constraints})
        assert started.status_code == 202, started.text
        deadline = time.time() + 120
        while (found := get(corral, f"/admin/tuning/{started.json()['id']}"))["status"] in ("queued", "running"):
            assert time.time() < deadline
            time.sleep(0.3)
        return found

    impossible = session({"generationTPS": 1e9})
    assert impossible["status"] == "failed" and "constraints" in impossible["error"], impossible
    assert [t["status"] for t in impossible["trials"]] == ["infeasible", "infeasible"]
    assert all("tokens/s <" in t["reason"] for t in impossible["trials"])
    kept = session({"ttftP95Ms": 1e9, "memoryMiB": 1e9}, strategy="tpe")
    assert kept["status"] == "done" and kept["trials"][kept["best"]]["status"] == "done"
    for bad in ({"nope": 1}, {"memoryMiB": -1}, {"ttftP95Ms": "fast"}, [1]):
        r = httpx.post(corral.base + "/admin/tuning", headers=corral.h, json={"model": "chat", "space": {"ubatch": [128]}, "constraints": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "constraints", (bad, r.text)


def test_tuning_prunes_halves_and_applies(corral):
    space = {"contextSize": [512, 1024, 100000000], "ubatch": [128, 256], "flashAttention": [True]}
    r = httpx.post(corral.base + "/admin/tuning", headers=corral.h,
                   json={"model": "chat", "strategy": "halving", "objective": "max_generation_tps", "space": space, "requests": 3, "maxTokens": 8})
    assert r.status_code == 202
    sid = r.json()["id"]
    deadline = time.time() + 120
    while (session := get(corral, f"/admin/tuning/{sid}"))["status"] == "running":
        assert time.time() < deadline
        time.sleep(0.3)
    assert session["status"] == "done", session
    trials = session["trials"]
    assert len(trials) == 6
    pruned = [t for t in trials if t["status"] == "pruned"]
    assert len(pruned) == 2 and all("estimator" in t["reason"] for t in pruned)
    assert sorted(t["status"] for t in trials if t["status"] != "pruned") == ["done", "eliminated", "eliminated", "eliminated"]
    assert max(t["round"] for t in trials) == 1  # a second, longer round for the survivors
    best = trials[session["best"]]
    applied = httpx.post(corral.base + f"/admin/tuning/{sid}/apply", headers=corral.h).json()
    assert applied["arguments"] == best["arguments"]
    httpx.post(corral.base + "/admin/models/chat/unload", headers=corral.h)
    httpx.post(corral.base + "/admin/models/chat/load", headers=corral.h)
    args = next(i["arguments"] for i in get(corral, "/admin/instances") if i["model"] == "chat")
    joined = " ".join(args)
    assert " ".join(best["arguments"]) in joined
    for bad in ({"model": "chat", "objective": "fastest"}, {"model": "chat", "space": {"ubatch": "big"}},
                {"model": "chat", "space": {"contextSize": [0]}}, {"model": "nope"}):
        assert httpx.post(corral.base + "/admin/tuning", headers=corral.h, json=bad).status_code in (400, 404)
    assert httpx.post(corral.base + "/admin/tuning/tune-nothing/apply", headers=corral.h).status_code == 404
    assert any(s["id"] == sid for s in get(corral, "/admin/tuning")["sessions"])


def wait_session(c, sid, until=lambda s: s["status"] != "running", timeout=120):
    deadline = time.time() + timeout
    while not until(session := get(c, f"/admin/tuning/{sid}")):
        assert time.time() < deadline, session
        time.sleep(0.2)
    return session


def test_grid_random_and_sessions_interrupted_by_a_restart():
    c = start_corral()
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    try:
        def start(body):
            r = httpx.post(c.base + "/admin/tuning", headers=c.h, json={"model": "chat", "requests": 1, "maxTokens": 2, **body})
            assert r.status_code == 202, r.text
            return r.json()["id"]

        grid = wait_session(c, start({"strategy": "grid", "space": {"ubatch": [64, 128]}}))
        assert grid["status"] == "done" and [t["status"] for t in grid["trials"]] == ["done", "done"]
        assert grid["trials"][grid["best"]]["score"] == max(t["score"] for t in grid["trials"])
        rand = wait_session(c, start({"strategy": "random", "space": {"ubatch": [32, 64, 128, 256]}, "maxCandidates": 2, "seed": 7}))
        assert len(rand["trials"]) == 2 and rand["status"] == "done"
        assert len({t["candidate"]["ubatch"] for t in rand["trials"]}) == 2

        long = start({"strategy": "grid", "space": {"ubatch": list(range(16, 400, 16))}, "requests": 4, "maxTokens": 32})
        wait_session(c, long, until=lambda s: any(t["status"] == "done" for t in s["trials"]))
        c.proc.send_signal(signal.SIGTERM)
        c.proc.wait(timeout=30)
        c = start_corral(directory=c.directory)
        c.h = {"authorization": f"Bearer {c.admin_token}"}
        after = wait_until(lambda: (s := get(c, f"/admin/tuning/{long}"))["status"] == "interrupted" and s, 10, "the session marked interrupted")
        assert "stopped" in after["error"]
        assert any(t["status"] == "done" for t in after["trials"])
        assert not any(t["status"] in ("running", "pending") for t in after["trials"])
    finally:
        stop_corral(c)
