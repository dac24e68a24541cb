"""The usage ledger and metrics: 200 mixed requests (streamed, not, failed, refused, cut short)
leave exactly one row each with the token counts the clients received, none lost after a
graceful stop; /metrics passes `promtool check metrics`."""
import concurrent.futures
import json
import random
import shutil
import signal
import socket
import sqlite3
import subprocess

import httpx
import pytest

from corral_harness.corral import CORRAL, start_corral, stop_corral, wait_until


def cut_short(c, key: str):
    """Starts a long streamed answer and hangs up after the first event."""
    body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", c.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer "
              + key.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    s.settimeout(60)
    data = b""
    while b"data:" not in data:
        chunk = s.recv(4096)
        assert chunk, f"connection closed before the stream started: {data[:300]!r}"
        data += chunk
        assert not data.startswith(b"HTTP/1.1") or b" 200 " in data.split(b"\r\n", 1)[0], f"not a stream: {data[:300]!r}"
    s.close()
    return {"kind": "disconnected"}


@pytest.mark.slow
def test_ledger_rows_match_what_clients_received(tmp_path):
    if shutil.which("promtool") is None:
        pytest.fail("promtool missing: `make test` installs the prometheus package")
    c = start_corral()
    try:
        h = {"authorization": f"Bearer {c.admin_token}"}
        httpx.post(c.base + "/admin/teams", json={"name": "ledger", "requestsPerMinute": 1000}, headers=h).raise_for_status()
        key = httpx.post(c.base + "/admin/teams/ledger/keys", json={}, headers=h).json()["key"]
        auth = {"authorization": f"Bearer {key}"}
        rng = random.Random(7)

        def one(i):
            kind = rng.choice(["openai", "openai-stream", "ollama", "ollama-stream", "embed", "unknown-model", "bad-key", "cut"])
            n = 1 + i % 6
            if kind == "openai":
                r = httpx.post(c.base + "/v1/chat/completions", headers=auth, timeout=60,
                               json={"model": "chat", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": n})
                u = r.json()["usage"]
                return {"kind": kind, "status": 200, "prompt": u["prompt_tokens"], "completion": u["completion_tokens"]}
            if kind == "openai-stream":
                usage = None
                with httpx.stream("POST", c.base + "/v1/chat/completions", headers=auth, timeout=60,
                                  json={"model": "chat", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": n,
                                        "stream": True, "stream_options": {"include_usage": True}}) as r:
                    lines = list(r.iter_lines())
                    assert r.status_code == 200, (r.status_code, lines)
                    for line in lines:
                        if line.startswith("data: {") and '"usage"' in line:
                            usage = json.loads(line[6:]).get("usage") or usage
                return {"kind": kind, "status": 200, "prompt": usage["prompt_tokens"], "completion": usage["completion_tokens"]}
            if kind in ("ollama", "ollama-stream"):
                stream = kind == "ollama-stream"
                body = {"model": "chat", "messages": [{"role": "user", "content": f"q{i}"}], "stream": stream, "options": {"num_predict": n}}
                with httpx.stream("POST", c.base + "/api/chat", headers=auth, json=body, timeout=60) as r:
                    last = [json.loads(l) for l in r.iter_lines() if l.strip()][-1]
                return {"kind": kind, "status": 200, "prompt": last["prompt_eval_count"], "completion": last["eval_count"]}
            if kind == "embed":
                r = httpx.post(c.base + "/v1/embeddings", headers=auth, timeout=60, json={"model": "embed", "input": f"text {i}"})
                return {"kind": kind, "status": 200, "prompt": r.json()["usage"]["prompt_tokens"], "completion": None}
            if kind == "unknown-model":
                r = httpx.post(c.base + "/v1/chat/completions", headers=auth, timeout=60,
                               json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
                return {"kind": kind, "status": r.status_code}
            if kind == "bad-key":
                r = httpx.post(c.base + "/v1/chat/completions", headers={"authorization": "Bearer nope"}, timeout=60, json={"model": "chat", "messages": []})
                return {"kind": kind, "status": r.status_code}
            return cut_short(c, key)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(200)))

        # A scrape while traffic has just happened: valid exposition.
        text = httpx.get(c.base + "/metrics", headers=h).text
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        assert 'corral_requests_total{model="chat"' in text
        assert "corral_time_to_first_token_seconds_bucket" in text

        # The admin views read the same ledger once its 200 ms batches have landed.
        requests = sum(1 for r in results if r["kind"] != "bad-key")
        usage = wait_until(lambda: (u := httpx.get(c.base + "/admin/usage?group=model&bucket=hour", headers=h).json()["data"])
                           and sum(x["requests"] for x in u) >= requests and u, 10, f"{requests} requests in the usage rollup")
        completion_sum = sum(r["completion"] or 0 for r in results if r.get("status") == 200)
        assert sum(u["completionTokens"] for u in usage) == completion_sum
        assert sum(u["requests"] for u in usage) == requests
        stats = {m["model"]: m for m in httpx.get(c.base + "/admin/stats?window=1h", headers=h).json()["models"]}
        assert stats["chat"]["latencyMs"]["p50"] <= stats["chat"]["latencyMs"]["p99"]
        assert stats["chat"]["timeToFirstTokenMs"]["p50"] is not None
        recent = httpx.get(c.base + "/admin/usage/requests?limit=5", headers=h).json()["data"]
        assert len(recent) == 5 and recent[0]["ts"] >= recent[-1]["ts"]

        c.proc.send_signal(signal.SIGTERM)
        c.proc.wait(timeout=30)
        db = sqlite3.connect(f"{c.directory}/data/corral.sqlite")
        rows = db.execute("SELECT route, model, status, promptTokens, completionTokens, clientDisconnected, keyPrefix FROM usage ORDER BY ts").fetchall()
        counted = [r for r in results if r["kind"] != "bad-key"]  # 401s are refused before any model is named
        print(f"\n{len(results)} requests: " + ", ".join(f"{k}={sum(1 for r in results if r['kind'] == k)}" for k in sorted({r['kind'] for r in results})))
        assert len(rows) == len(counted)
        assert all(r[6] is not None and r[6].startswith("ck-") for r in rows)
        ok_rows = sorted((r[3], r[4]) for r in rows if r[2] == 200 and not r[5])
        ok_results = sorted((r["prompt"], r["completion"]) for r in counted if r.get("status") == 200)
        assert ok_rows == ok_results
        assert sum(1 for r in rows if r[2] == 404) == sum(1 for r in counted if r["kind"] == "unknown-model")
        assert sum(1 for r in rows if r[5]) == sum(1 for r in counted if r["kind"] == "disconnected")
        # No prompt text in the database.
        assert b"q17" not in open(f"{c.directory}/data/corral.sqlite", "rb").read()
    finally:
        if c.proc.poll() is None:
            c.proc.kill()
        shutil.rmtree(c.directory, ignore_errors=True)


def test_a_full_ledger_queue_refuses_with_503_and_loses_no_row():
    """The ledger's queue is bounded: while SQLite cannot be written (another process holds its
    write lock) rows wait in memory up to `usage.queueBound`; past it new requests get 503 with
    Retry-After, counted in /metrics. Once writes work again every admitted request has its row,
    and the rollups count each row once."""
    c = start_corral(extra_config={"usage": {"queueBound": 4}})
    try:
        h = {"authorization": f"Bearer {c.admin_token}"}
        team = httpx.post(c.base + "/admin/teams", headers=h, json={"name": "bounded"}).json()
        key = httpx.post(c.base + f"/admin/teams/{team['id']}/keys", headers=h, json={}).json()["key"]
        auth = {"authorization": f"Bearer {key}"}
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        assert httpx.post(c.base + "/v1/chat/completions", headers=auth, json=body, timeout=60).status_code == 200
        wait_until(lambda: httpx.get(c.base + "/admin/usage/requests?limit=1", headers=h).json()["data"], 10, "that row written")
        db = sqlite3.connect(f"{c.directory}/data/corral.sqlite", timeout=10, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        statuses = []
        try:
            for _ in range(12):
                r = httpx.post(c.base + "/v1/chat/completions", headers=auth, json=body, timeout=60)
                statuses.append(r.status_code)
                if r.status_code == 503:
                    assert r.json()["error"]["code"] == "ledger_full" and r.headers["retry-after"] == "1", r.text
            metrics = httpx.get(c.base + "/metrics", headers=h).text
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert statuses.count(200) == 4 and statuses.count(503) == 8, statuses
        assert "corral_ledger_refused_total 8" in metrics
        c.proc.send_signal(signal.SIGTERM)
        assert c.proc.wait(timeout=30) == 0
        db = sqlite3.connect(f"{c.directory}/data/corral.sqlite")
        assert db.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 5
        for span in (60, 3600):  # once per team and key, once at the model level ('*')
            assert db.execute(f"SELECT SUM(requests) FROM usage_rollup WHERE span = {span} AND team <> '*'").fetchone()[0] == 5
            assert db.execute(f"SELECT SUM(requests) FROM usage_rollup WHERE span = {span} AND team = '*'").fetchone()[0] == 5
    finally:
        if c.proc.poll() is None:
            c.proc.kill()
        shutil.rmtree(c.directory, ignore_errors=True)


def test_a_refused_request_is_recorded_with_a_stable_error_kind(tmp_path):
    """The ledger's errorKind is the API error's code for every refusal, never a sentence (a
    failed load used to store the scheduler's message)."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    c = start_corral(extra_models=[{"name": "broken", "path": str(broken)}])
    try:
        failed = httpx.post(c.base + "/v1/chat/completions", json={"model": "broken", "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
        missing = httpx.post(c.base + "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
        assert failed.status_code == 503 and failed.json()["error"]["code"] == "model_load_failed", failed.text
        assert missing.status_code == 404
        usage = wait_until(lambda: (u := httpx.get(c.base + "/admin/usage/requests?limit=10", headers={"authorization": f"Bearer {c.admin_token}"}).json()["data"])
                           and len(u) >= 2 and u, 10, "both rows")
        kinds = {r["model"]: r.get("errorKind") for r in usage}
        assert kinds == {"broken": "model_load_failed", "nope": "model_not_found"}, usage
    finally:
        stop_corral(c)
