"""`/admin/jobs` and `corral jobs` against a real llama-server: every benchmark and tuning session
is a job, listed and paged in one place; its event log streams as SSE with ids and replays from
Last-Event-ID after a disconnect; cancel, pause and resume act on the running work; a restart
marks a running benchmark interrupted; bad input gets OpenAI-shaped errors."""
import json
import signal
import sqlite3
import time

import httpx
import pytest

from corral_harness.corral import admin_cli as cli, admin_get as get, admin_post as post, restart_corral, start_corral, stop_corral, wait_until


@pytest.fixture(scope="module")
def corral(admin_corral):
    return admin_corral


def benchmark(c, **parameters):
    return post(c, "/admin/benchmarks", {"model": "chat", "requests": 2, "maxTokens": 2, **parameters}, 202)["id"]


def wait_job(c, job_id, until=lambda j: j["state"] in ("succeeded", "failed", "cancelled", "interrupted"), seconds=120):
    deadline = time.time() + seconds
    while True:
        job = get(c, f"/admin/jobs/{job_id}")
        if until(job):
            return job
        assert time.time() < deadline, job
        time.sleep(0.1)


def read_events(c, job_id, headers=None, stop_after=None, query=""):
    """The job's SSE events as (id, type, data) until the stream ends (or `stop_after` events:
    the connection is then dropped)."""
    events, current = [], {}
    with httpx.stream("GET", f"{c.base}/admin/jobs/{job_id}/events{query}", headers={**c.h, **(headers or {})}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("event: "):
                current["type"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and current:
                assert "id" in current, current  # every event carries its id
                event = current["data"]  # the whole event record: id, job, at, type, data
                assert (event["id"], event["type"], event["job"]) == (current["id"], current.get("type"), job_id), current
                events.append((current["id"], current.get("type"), event["data"]))
                current = {}
                if stop_after and len(events) == stop_after:
                    break
    return events


def test_every_benchmark_is_a_job_listed_filtered_and_paged(corral):
    ids = [benchmark(corral) for _ in range(3)]
    for i in ids:
        job = wait_job(corral, i)
        assert job["state"] == "succeeded" and job["kind"] == "benchmark" and job["model"] == "chat", job
        assert job["progress"]["completed"] == job["progress"]["total"] == 2
        assert job["result"]["result"]["requests"] == 2 and job["startedAt"] <= job["finishedAt"]
        assert get(corral, f"/admin/benchmarks/{i}")["status"] == "done"  # the kind's own view of the same job

    listed = get(corral, "/admin/jobs?kind=benchmark&state=succeeded&model=chat")["jobs"]
    assert [j["id"] for j in listed][:3] == ids[::-1]  # newest first
    assert get(corral, "/admin/jobs?kind=tuning")["jobs"] == []
    assert get(corral, "/admin/jobs?state=running,queued")["jobs"] == []
    assert get(corral, "/admin/jobs?model=embed")["jobs"] == []

    seen, after = [], None
    while True:
        page = get(corral, "/admin/jobs?limit=1" + (f"&after={after}" if after else ""))
        assert len(page["jobs"]) <= 1
        seen += [j["id"] for j in page["jobs"]]
        after = page.get("next")
        if not after:
            break
    assert seen == [j["id"] for j in get(corral, "/admin/jobs?limit=500")["jobs"]] and len(set(seen)) == len(seen) >= 3

    listed_by_cli = cli(corral, "jobs", "list", "--kind", "benchmark", "--limit", "2")
    assert [j["id"] for j in listed_by_cli["jobs"]] == ids[::-1][:2] and listed_by_cli["next"]


def test_bad_input_gets_openai_errors(corral):
    done = benchmark(corral)
    wait_job(corral, done)
    for path, status, param in [("/admin/jobs?state=sleeping", 400, "state"), ("/admin/jobs?limit=0", 400, "limit"),
                                ("/admin/jobs?limit=many", 400, "limit"), (f"/admin/jobs/{done}/events?after=-3", 400, "after")]:
        error = get(corral, path, status)["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"], error
    assert get(corral, "/admin/jobs/job-nope", 404)["error"]["code"] == "not_found"
    assert get(corral, f"/admin/jobs/{done}/events", 400, {"Last-Event-ID": "yesterday"})["error"]["param"] == "after"
    for action in ("cancel", "pause", "resume"):
        error = post(corral, f"/admin/jobs/{done}/{action}", status=409)["error"]
        assert error["code"] == "conflict" and "succeeded" in error["message"], error
        post(corral, f"/admin/jobs/job-nope/{action}", status=404)
    r = httpx.get(corral.base + "/admin/jobs")  # no token
    assert r.status_code == 401 and "error" in r.json()


def test_events_replay_from_last_event_id_after_a_disconnect(corral):
    job_id = benchmark(corral, requests=12, maxTokens=8)
    first = read_events(corral, job_id, stop_after=2)  # then the connection drops
    rest = read_events(corral, job_id, headers={"Last-Event-ID": str(first[-1][0])})
    full = read_events(corral, job_id)  # after the end: the whole log, then the stream ends

    assert first + rest == full, (first, rest)
    ids = [e[0] for e in full]
    assert ids == sorted(set(ids))  # strictly increasing, no repeats
    assert full[0][1:] == ("state", {"state": "queued"})
    assert full[-1][1] == "state" and full[-1][2]["state"] == "succeeded"
    progress = [e[2] for e in full if e[1] == "progress"]
    assert progress and progress[-1]["completed"] == progress[-1]["total"] == 12
    assert read_events(corral, job_id, headers={"Last-Event-ID": str(ids[-1])}) == []
    assert [e[0] for e in read_events(corral, job_id, query=f"?after={ids[1]}")] == ids[2:]
    assert get(corral, f"/admin/jobs/{job_id}")["lastEventID"] == ids[-1]


def test_pause_resume_and_cancel_a_running_benchmark(corral):
    job_id = benchmark(corral, requests=10_000, maxTokens=8)
    wait_job(corral, job_id, until=lambda j: (j.get("progress") or {}).get("completed", 0) >= 2)

    assert post(corral, f"/admin/jobs/{job_id}/pause")["state"] == "paused"
    # Any request already sent finishes and is counted; no new one starts.
    seen = []

    def settled():
        idle = all(i["inFlight"] == 0 for i in get(corral, "/admin/instances"))
        seen.append(get(corral, f"/admin/jobs/{job_id}")["progress"]["completed"] if idle else None)
        return idle and len(seen) >= 2 and seen[-1] == seen[-2]
    wait_until(settled, 20, "the request under way to finish", interval=0.3)
    held = seen[-1]
    time.sleep(1.5)  # the subject: for a while, nothing more is done
    paused = get(corral, f"/admin/jobs/{job_id}")
    assert paused["state"] == "paused" and paused["progress"]["completed"] == held
    post(corral, f"/admin/jobs/{job_id}/pause", status=409)

    assert post(corral, f"/admin/jobs/{job_id}/resume")["state"] == "running"
    wait_job(corral, job_id, until=lambda j: j["progress"]["completed"] >= held + 2)

    post(corral, f"/admin/jobs/{job_id}/cancel")
    cancelled = wait_job(corral, job_id)
    assert cancelled["state"] == "cancelled" and cancelled["error"]["code"] == "cancelled", cancelled
    assert cancelled["progress"]["completed"] < 10_000
    types = [(e[1], e[2].get("state")) for e in read_events(corral, job_id)]
    assert ("state", "paused") in types and ("cancelling", None) in types and types[-1] == ("state", "cancelled")
    assert types.index(("state", "paused")) < types.index(("state", "running"), types.index(("state", "paused")))
    assert get(corral, f"/admin/benchmarks/{job_id}")["status"] == "cancelled"

    by_cli = benchmark(corral, requests=10_000, maxTokens=8)
    cli(corral, "jobs", "cancel", by_cli)
    assert wait_job(corral, by_cli)["state"] == "cancelled"


def test_tuning_is_a_job_and_streams_its_trials(corral):
    session = post(corral, "/admin/tuning", {"model": "chat", "strategy": "grid", "space": {"ubatch": [64, 128]},
                                             "requests": 1, "maxTokens": 2}, 202)["id"]
    with httpx.stream("GET", f"{corral.base}/admin/tuning/{session}/events", headers=corral.h, timeout=300) as r:
        assert r.status_code == 200
        lines = list(r.iter_lines())
    ids = [int(line[4:]) for line in lines if line.startswith("id: ")]
    types = [line[7:] for line in lines if line.startswith("event: ")]
    assert len(ids) == len(types) and ids == sorted(set(ids))
    assert types.count("trial") >= 2  # each finished trial, as it finishes
    job = get(corral, f"/admin/jobs/{session}")
    assert job["kind"] == "tuning" and job["state"] == "succeeded"
    assert get(corral, f"/admin/tuning/{session}")["status"] == "done"
    assert [j["id"] for j in get(corral, "/admin/jobs?kind=tuning")["jobs"]] == [session]
    followed = cli(corral, "jobs", "follow", session)  # a finished job: the replay, then the record
    assert followed["id"] == session and followed["state"] == "succeeded"


def test_cli_follows_a_job_to_its_end(corral):
    job_id = benchmark(corral, requests=6, maxTokens=4)
    followed = cli(corral, "jobs", "follow", job_id)
    assert followed["state"] == "succeeded" and followed["progress"]["completed"] == 6
    shown = cli(corral, "jobs", "show", job_id)
    assert shown["lastEventID"] == followed["lastEventID"]


def test_metrics_count_job_store_failures(corral):
    text = httpx.get(corral.base + "/metrics", headers=corral.h, timeout=30).text
    assert "# TYPE corral_job_store_failures_total counter" in text
    assert "corral_job_store_failures_total 0" in text


def test_a_restart_interrupts_a_running_benchmark_and_keeps_its_log():
    c = start_corral()
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    try:
        job_id = benchmark(c, requests=10_000, maxTokens=8)
        before = wait_job(c, job_id, until=lambda j: (j.get("progress") or {}).get("completed", 0) >= 2)
        restart_corral(c)
        deadline = time.time() + 60
        while True:
            try:
                after = get(c, f"/admin/jobs/{job_id}")
                break
            except (httpx.TransportError, AssertionError):
                assert time.time() < deadline
                time.sleep(0.2)
        assert after["state"] == "interrupted" and after["error"]["code"] == "interrupted", after
        assert after["progress"]["completed"] >= before["progress"]["completed"]
        events = read_events(c, job_id)
        assert events[0][2] == {"state": "queued"} and events[-1][2]["state"] == "interrupted"
        assert get(c, f"/admin/benchmarks/{job_id}")["status"] == "interrupted"
    finally:
        stop_corral(c)


def test_runs_saved_by_an_older_build_become_jobs():
    """Before the job engine, benchmark runs and tuning sessions were documents; at start they
    become finished jobs (once), so their history stays."""
    c = start_corral()
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    try:
        bench = wait_job(c, benchmark(c))
        tune = post(c, "/admin/tuning", {"model": "chat", "strategy": "grid", "space": {"ubatch": [64]}, "requests": 1, "maxTokens": 2}, 202)["id"]
        wait_job(c, tune)
        # What the old build saved had the shape of today's views.
        old_bench = {**get(c, f"/admin/benchmarks/{bench['id']}"), "id": "bench-0ld0ld01"}
        old_bench.pop("state")
        cut_off = {**old_bench, "id": "bench-0ld0ld02", "status": "running", "result": None, "completed": 1}
        old_tune = {**get(c, f"/admin/tuning/{tune}"), "id": "tune-0ld0ld01"}
        old_tune.pop("state")
        c.proc.send_signal(signal.SIGTERM)
        assert c.proc.wait(timeout=30) == 0
        db = sqlite3.connect(f"{c.directory}/data/corral.sqlite")
        for kind, doc in (("benchmark", old_bench), ("benchmark", cut_off), ("tuning", old_tune)):
            db.execute("INSERT INTO document (kind, id, model, createdAt, body) VALUES (?, ?, ?, ?, ?)",
                       (kind, doc["id"], "chat", "2026-11-01 10:00:00.000", json.dumps(doc).encode()))
        db.commit()
        db.close()
        headers = c.h
        c = start_corral(directory=c.directory)  # the same data directory, served again
        c.h = headers
        deadline = time.time() + 30
        while True:
            try:
                imported = get(c, "/admin/jobs/bench-0ld0ld01")
                break
            except (httpx.TransportError, AssertionError):
                assert time.time() < deadline
                time.sleep(0.2)
        assert imported["state"] == "succeeded" and imported["kind"] == "benchmark"
        view = get(c, "/admin/benchmarks/bench-0ld0ld01")
        assert view["status"] == "done" and view["result"] == old_bench["result"] and view["parameters"] == old_bench["parameters"]
        assert get(c, "/admin/jobs/bench-0ld0ld02")["state"] == "interrupted"
        session = get(c, "/admin/tuning/tune-0ld0ld01")
        assert session["status"] == "done" and session["trials"] == old_tune["trials"] and session["best"] == old_tune["best"]
        db = sqlite3.connect(f"{c.directory}/data/corral.sqlite")
        assert db.execute("SELECT COUNT(*) FROM document WHERE kind IN ('benchmark', 'tuning')").fetchone()[0] == 0
        db.close()
        assert "bench-0ld0ld01" in [r["id"] for r in get(c, "/admin/benchmarks?model=chat")["benchmarks"]]
    finally:
        stop_corral(c)
