"""Faults a gateway must survive: a llama-server that hangs, exits while loading or loses its
model file; a missing or unusable llama-server binary; a taken port; a data directory that is
read-only or fills up; a locked SQLite database; SIGTERM under load; kill -9 of Corral.

Each test checks what the client gets (status and the API's own error shape), that Corral keeps
serving, that no llama-server is left behind, and that no usage row is lost beyond the documented
window. (A child killed mid-stream is covered in Tests/GatewayTests/StreamingTests.swift.)
"""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading

import httpx
import pytest

from corral_harness.corral import CORRAL, free_port, llama_server_pids, make_model, start_corral, stop_corral, wait_gone, wait_until

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def refuses_connections(c) -> bool:
    try:
        httpx.get(c.base + "/health", timeout=2)
        return False
    except httpx.TransportError:
        return True


def instance(c, model: str) -> dict:
    return next(i for i in c.get("/admin/instances") if i["model"] == model)


def ledger_rows(c) -> int:
    db = sqlite3.connect(f"file:{c.directory}/data/corral.sqlite?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
    finally:
        db.close()


def pending_rows(c) -> float:
    text = httpx.get(c.base + "/metrics", headers=c.headers("/metrics")).text
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("corral_ledger_pending_rows"))


def openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert isinstance(error, dict) and error["message"], r.text
    return error


def ollama_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert isinstance(error, str) and error, r.text
    return error


def test_a_hung_llama_server_times_out_cleanly_and_is_replaced():
    c = start_corral(scheduler={"readTimeout": "2s"})
    try:
        assert httpx.post(c.base + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
        first_pid = instance(c, "chat")["pid"]
        # Mid-stream: the child stops sending (SIGSTOP) after the first event.
        body = {**CHAT, "max_tokens": 3000, "stream": True}
        with httpx.stream("POST", c.base + "/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data:"))
            os.kill(first_pid, signal.SIGSTOP)
            events = [line for line in lines if line.startswith("data:")]
        error = json.loads(events[-1][5:])["error"]
        assert error["code"] == "upstream_timeout" and error["type"] == "server_error"
        assert wait_gone(first_pid, 20), "the silent llama-server must be killed"
        # The next request gets a fresh instance.
        assert httpx.post(c.base + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
        second_pid = instance(c, "chat")["pid"]
        assert second_pid != first_pid
        # Before the answer starts, through the Ollama API: 504 in Ollama's shape.
        os.kill(second_pid, signal.SIGSTOP)
        r = httpx.post(c.base + "/api/chat", json={**CHAT, "stream": False}, timeout=30)
        assert "stopped answering" in ollama_error(r, 504)
        assert wait_gone(second_pid, 20)
        info = instance(c, "chat")
        assert info["crashes"] == 2 and "read timeout" in info["lastError"]
        assert httpx.post(c.base + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
        assert c.proc.poll() is None
    finally:
        for pid in llama_server_pids(c):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stop_corral(c)


def test_a_request_right_after_a_crash_goes_to_a_fresh_instance():
    """An instance killed a moment ago may still look ready: its port refuses the connection, the
    request (not sent yet) goes to a fresh instance instead of failing with 502."""
    c = start_corral()
    admin = {"authorization": f"Bearer {c.admin_token}"}
    try:
        chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for _ in range(2):  # a third crash within a minute would mark the model failed
            assert httpx.post(c.base + "/v1/chat/completions", json=chat, timeout=60).status_code == 200
            pid = next(i["pid"] for i in httpx.get(c.base + "/admin/instances", headers=admin).json() if i["model"] == "chat")
            os.kill(pid, signal.SIGKILL)
            answer = httpx.post(c.base + "/v1/chat/completions", json=chat, timeout=60)  # at once
            assert answer.status_code == 200, answer.text
            assert wait_gone(pid, 10)
    finally:
        stop_corral(c)


def test_a_model_file_deleted_or_truncated_is_refused_without_spawning():
    d = tempfile.mkdtemp(prefix="corral-faults-")
    names = ("gone", "cut", "later", "shrunk")
    for name in names:
        make_model(d, name)
    models = [{"name": n, "path": f"{d}/{n}.gguf", "contextSize": 512} for n in names]
    c = start_corral(extra_models=models, directory=d)
    try:
        # Before load: deleted, truncated.
        os.remove(f"{d}/gone.gguf")
        with open(f"{d}/cut.gguf", "r+b") as f:
            f.truncate(os.path.getsize(f"{d}/cut.gguf") // 2)
        before = llama_server_pids(c)
        error = openai_error(httpx.post(c.base + "/v1/chat/completions", json={**CHAT, "model": "gone"}, timeout=30), 503)
        assert error["code"] == "model_load_failed" and "missing or damaged" in error["message"]
        assert d not in error["message"], "a client must not learn server paths"
        assert "missing or damaged" in ollama_error(httpx.post(c.base + "/api/generate", json={"model": "cut", "prompt": "x", "stream": False}, timeout=30), 503)
        assert llama_server_pids(c) == before, "nothing may be spawned for an unusable file"

        # While loaded: llama-server keeps its mapping of a deleted file and keeps serving; once
        # unloaded, the model is refused without a spawn.
        assert httpx.post(c.base + "/v1/chat/completions", json={**CHAT, "model": "later"}, timeout=30).status_code == 200
        pid = instance(c, "later")["pid"]
        os.remove(f"{d}/later.gguf")
        assert httpx.post(c.base + "/v1/chat/completions", json={**CHAT, "model": "later"}, timeout=30).status_code == 200
        httpx.post(c.base + "/admin/models/later/unload", headers=c.headers("/admin")).raise_for_status()
        assert wait_gone(pid, 10)
        before = llama_server_pids(c)
        openai_error(httpx.post(c.base + "/v1/chat/completions", json={**CHAT, "model": "later"}, timeout=30), 503)
        assert llama_server_pids(c) == before

        # Truncated under a running instance: its mapped weights vanish. It may crash (SIGBUS) or
        # answer from what it still holds; either way Corral answers, and once the instance is
        # gone the damaged file is refused without a spawn.
        assert httpx.post(c.base + "/v1/chat/completions", json={**CHAT, "model": "shrunk"}, timeout=30).status_code == 200
        pid = instance(c, "shrunk")["pid"]
        with open(f"{d}/shrunk.gguf", "r+b") as f:
            f.truncate(4096)
        r = httpx.post(c.base + "/v1/chat/completions", json={**CHAT, "model": "shrunk"}, timeout=30)
        assert r.status_code == 200 or openai_error(r, 502)["code"] in ("upstream_crashed", "upstream_error")
        httpx.post(c.base + "/admin/models/shrunk/unload", headers=c.headers("/admin"))
        assert wait_gone(pid, 10)
        before = llama_server_pids(c)
        assert "missing or damaged" in openai_error(httpx.post(c.base + "/v1/chat/completions", json={**CHAT, "model": "shrunk"}, timeout=30), 503)["message"]
        assert llama_server_pids(c) == before
        assert httpx.post(c.base + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
        assert c.proc.poll() is None
    finally:
        stop_corral(c)


def test_a_llama_server_that_exits_while_loading_is_reported_and_marked_failed():
    # An argument llama-server rejects makes it exit during start-up, every time.
    d = tempfile.mkdtemp(prefix="corral-faults-")
    make_model(d, "broken")
    c = start_corral(extra_models=[{"name": "broken", "path": f"{d}/broken.gguf", "args": ["--no-such-flag"], "contextSize": 512}], directory=d)
    try:
        statuses = []
        for _ in range(4):
            r = httpx.post(c.base + "/v1/chat/completions", json={**CHAT, "model": "broken"}, timeout=30)
            statuses.append((r.status_code, r.json()["error"]["code"]))
        assert statuses[0] == (503, "model_load_failed")
        assert statuses[-1] == (503, "model_failed"), statuses
        info = instance(c, "broken")
        assert info["state"] == "failed" and info.get("pid") is None
        assert not [p for p in llama_server_pids(c) if "no-such-flag" in open(f"/proc/{p}/cmdline").read()]
        # The rest of the fleet is unaffected.
        assert httpx.post(c.base + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
    finally:
        stop_corral(c)


@pytest.mark.parametrize("problem", ["missing", "not-executable"])
def test_an_unusable_llama_server_binary_gets_a_clear_503(problem, tmp_path):
    path = str(tmp_path / "llama-server")
    if problem == "not-executable":
        with open(path, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(path, 0o644)
    c = start_corral(extra_config={"llama": {"server": path}})
    try:
        error = openai_error(httpx.post(c.base + "/v1/chat/completions", json=CHAT, timeout=30), 503)
        assert "llama-server" in error["message"]
        assert "llama-server" in ollama_error(httpx.post(c.base + "/api/chat", json={**CHAT, "stream": False}, timeout=30), 503)
        assert httpx.get(c.base + "/health").json() == {"status": "ok"}
        assert c.children() == []
    finally:
        stop_corral(c)


def test_a_taken_port_stops_start_up_with_a_message(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        config = {"listen": {"host": "127.0.0.1", "port": port}, "dataDirectory": str(tmp_path / "data")}
        (tmp_path / "routes.json").write_text(json.dumps(config))
        out = subprocess.run([CORRAL, "serve", "--config", str(tmp_path / "routes.json")], capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        assert f"127.0.0.1:{port}" in out.stderr and "in use" in out.stderr, out.stderr
    finally:
        holder.close()


def mount_tmpfs(path: str, options: str) -> bool:
    os.makedirs(path, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], capture_output=True).returncode == 0


def test_a_read_only_data_directory_stops_start_up_with_a_message(tmp_path):
    data = str(tmp_path / "data")
    if not mount_tmpfs(data, "ro,size=1m"):
        pytest.skip("mounting a read-only file system needs root")
    try:
        config = {"listen": {"host": "127.0.0.1", "port": free_port()}, "dataDirectory": data}
        (tmp_path / "routes.json").write_text(json.dumps(config))
        out = subprocess.run([CORRAL, "serve", "--config", str(tmp_path / "routes.json")], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        assert data in out.stderr and "not writable" in out.stderr, out.stderr
    finally:
        subprocess.run(["umount", data])


def send_chats(c, n: int):
    for i in range(n):
        r = httpx.post(c.base + "/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": f"q{i}"}]}, timeout=30)
        assert r.status_code == 200, r.text


def test_a_full_disk_keeps_serving_and_the_ledger_catches_up():
    d = tempfile.mkdtemp(prefix="corral-full-")
    if not mount_tmpfs(f"{d}/data", "size=8m"):
        pytest.skip("mounting a small file system needs root")
    c = start_corral(directory=d)
    try:
        send_chats(c, 3)
        wait_until(lambda: ledger_rows(c) == 3, seconds=20, what="the first rows")
        filler = f"{d}/data/filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        send_chats(c, 10)  # serving continues
        wait_until(lambda: pending_rows(c) >= 10, seconds=20, what="rows kept in memory")
        assert "cannot write the usage ledger" in c.log()
        os.remove(filler)
        wait_until(lambda: pending_rows(c) == 0 and ledger_rows(c) == 13, seconds=20, what="the ledger to catch up")
        assert "usage ledger writes work again" in c.log()
    finally:
        stop_corral(c)
        subprocess.run(["umount", f"{d}/data"])


def test_a_locked_database_keeps_serving_and_loses_no_rows():
    c = start_corral()
    try:
        send_chats(c, 2)
        wait_until(lambda: ledger_rows(c) == 2, seconds=20, what="the first rows")
        lock = sqlite3.connect(f"{c.directory}/data/corral.sqlite", timeout=10, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            send_chats(c, 8)
            # Corral waits 5 s for a lock, then keeps the rows in memory and says so.
            wait_until(lambda: "cannot write the usage ledger" in c.log(), seconds=30, what="the ledger to report the lock")
            assert pending_rows(c) >= 8
            send_chats(c, 2)
        finally:
            lock.execute("COMMIT")
            lock.close()
        wait_until(lambda: pending_rows(c) == 0 and ledger_rows(c) == 12, seconds=30, what="the ledger to catch up")
    finally:
        stop_corral(c)


def test_sigterm_under_load_drains_every_request_and_loses_no_rows():
    c = start_corral()
    try:
        send_chats(c, 1)
        results: list = []

        # The model's llama-server is stopped (SIGSTOP) while the requests arrive, so all eight
        # are in flight or queued when Corral gets SIGTERM however fast the model generates (a
        # 900-token stream takes a third of a second, and on a loaded machine the first ones
        # could end before the last requests were counted). It continues right after the signal.
        streams_go, plain_go = threading.Event(), threading.Event()
        stream_clients = [httpx.Client(timeout=300) for _ in range(4)]
        plain_clients = [httpx.Client(timeout=300) for _ in range(4)]

        def stream(i):
            body = {**CHAT, "max_tokens": 300, "ignore_eos": True, "stream": True, "messages": [{"role": "user", "content": f"s{i}"}]}
            streams_go.wait()
            with stream_clients[i].stream("POST", c.base + "/v1/chat/completions", json=body) as r:
                results.append((r.status_code, [line for line in r.iter_lines() if line.startswith("data:")][-1]))

        def plain(i):
            plain_go.wait()
            # Ollama's own limit (an Ollama request's max_tokens is not one): unbounded, the random
            # model ran to its full context, and two runs at once on two cores outlasted the join.
            r = plain_clients[i].post(c.base + "/api/chat", json={**CHAT, "options": {"num_predict": 300}, "stream": False,
                                                                  "messages": [{"role": "user", "content": f"p{i}"}]})
            results.append((r.status_code, r.json().get("done")))

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)] + [threading.Thread(target=plain, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        children = c.children()
        for pid in children:
            os.kill(pid, signal.SIGSTOP)
        try:
            streams_go.set()
            wait_until(lambda: instance(c, "chat")["inFlight"] + instance(c, "chat")["queued"] == 4, seconds=20, what="four streams in flight")
            plain_go.set()
            # Every request is in flight or queued (two slots) before the signal.
            wait_until(lambda: instance(c, "chat")["inFlight"] + instance(c, "chat")["queued"] == 8, seconds=20, what="eight requests in flight")
            c.proc.send_signal(signal.SIGTERM)
        finally:
            for pid in children:
                os.kill(pid, signal.SIGCONT)
        wait_until(lambda: refuses_connections(c), seconds=20, what="no new connections while draining")
        for t in threads:
            t.join(timeout=300)  # a bound: two runs on two cores stream far slower than one
        assert sorted(results, key=repr) == sorted([(200, "data: [DONE]")] * 4 + [(200, True)] * 4, key=repr)
        assert c.proc.wait(timeout=60) == 0
        for pid in children:
            assert wait_gone(pid, 10)
        assert ledger_rows(c) == 9
    finally:
        stop_corral(c)


def test_kill_9_loses_at_most_the_last_ledger_window():
    c = start_corral()
    try:
        send_chats(c, 20)
        wait_until(lambda: ledger_rows(c) == 20, seconds=20, what="the rows of the first twenty answers written")
        send_chats(c, 3)  # these may be lost: they finish within the window before the kill
        children = c.children()
        os.kill(c.proc.pid, signal.SIGKILL)
        c.proc.wait(timeout=10)
        for pid in children:
            assert wait_gone(pid, 10), "llama-server outlived kill -9 of Corral"
        assert 20 <= ledger_rows(c) <= 23
    finally:
        stop_corral(c)
