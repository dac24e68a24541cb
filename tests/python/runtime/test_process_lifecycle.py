"""Corral's own process: SIGTERM drains in-flight streams; kill -9 leaves no llama-server; what a
first load learned about allocations survives a restart."""
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request

import httpx

from corral_harness.corral import CORRAL, restart_corral, start_corral, stop_corral, wait_gone, wait_until


def stream_chat(base: str, max_tokens: int, out: dict):
    body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "go"}], "max_tokens": max_tokens, "stream": True}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", data=body, headers={"content-type": "application/json"})
    events = []
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            for line in r:
                if line.startswith(b"data:"):
                    events.append(line.decode().strip())
                    out["first"] = True
    except Exception as e:  # noqa: BLE001 - recorded for the assertion
        out["error"] = repr(e)
    out["events"] = events


def start_stream(base: str, max_tokens: int = 1500) -> tuple[threading.Thread, dict]:
    """Starts a long streamed chat in a thread and returns once its first event arrived."""
    out: dict = {}
    t = threading.Thread(target=stream_chat, args=(base, max_tokens, out))
    t.start()
    deadline = time.time() + 20
    while "first" not in out and time.time() < deadline:
        time.sleep(0.01)
    return t, out


def test_sigterm_drains_in_flight_stream_then_stops_children():
    c = start_corral()
    try:
        t, out = start_stream(c.base)
        children = c.children()
        assert children, "a llama-server should be running"
        c.proc.send_signal(signal.SIGTERM)
        t.join(timeout=300)  # a bound: two runs on two cores stream far slower than one
        assert not t.is_alive(), "the in-flight stream did not end"
        assert "error" not in out, out.get("error")
        assert out["events"][-1] == "data: [DONE]", "the in-flight stream must complete"
        assert c.proc.wait(timeout=30) == 0
        for pid in children:
            assert wait_gone(pid, 10), f"llama-server {pid} outlived Corral"
    finally:
        stop_corral(c)


def test_kill_9_of_corral_leaves_no_llama_server():
    c = start_corral()
    try:
        c.post("/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
        c.post("/v1/embeddings", {"model": "embed", "input": "x"})
        children = c.children()
        assert len(children) == 2
        os.kill(c.proc.pid, signal.SIGKILL)
        c.proc.wait(timeout=10)
        for pid in children:
            assert wait_gone(pid, 10), f"llama-server {pid} survived kill -9 of Corral"
    finally:
        stop_corral(c)


def test_tls_serves_https_and_refuses_plain_http():
    import ssl
    import urllib.error

    import pytest

    c = start_corral(tls=True)
    try:
        with urllib.request.urlopen(c.base + "/v1/models", context=c.ssl_context, timeout=10) as r:
            assert r.status == 200
            assert [m["id"] for m in json.load(r)["data"]] == ["chat", "embed"]
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{c.port}/health", timeout=5).read()
        # HTTP/2 is negotiated by ALPN for clients that offer it, streaming included.
        import subprocess as sp
        cert = c.ssl_context.get_ca_certs() and f"{c.directory}/server.crt"
        out = sp.run(["curl", "-sS", "--http2", "--cacert", cert, "-w", "\n%{http_version}", c.base + "/v1/chat/completions",
                      "-d", json.dumps({"model": "chat", "stream": True, "max_tokens": 3, "messages": [{"role": "user", "content": "x"}]})],
                     capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        body, version = out.stdout.rsplit("\n", 1)
        assert version == "2"
        assert "data: [DONE]" in body
        # An untrusted client must not accept the self-signed certificate silently.
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(c.base + "/health", context=ssl.create_default_context(), timeout=5)
    finally:
        stop_corral(c)


def test_routes_json_reload_on_change_and_sighup_keeps_in_flight_requests():
    c = start_corral()
    try:
        t, out = start_stream(c.base)
        subprocess.run([CORRAL, "models", "make-test", "--out", c.directory, "--name", "added"], check=True, capture_output=True)
        path = f"{c.directory}/routes.json"
        config = json.load(open(path))
        config["models"].append({"name": "added", "path": f"{c.directory}/added.gguf", "contextSize": 1024})
        json.dump(config, open(path, "w"))
        wait_until(lambda: "added" in [m["id"] for m in c.get("/v1/models")["data"]], 10, "the file change picked up")
        assert c.post("/v1/chat/completions", {"model": "added", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})["model"] == "added"
        # An invalid file is refused on SIGHUP; the previous catalog keeps serving.
        open(path, "w").write('{"listen": {"prot": 1}}')
        c.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reload failed" in c.log(), 10, "the refused reload in the log")
        assert c.proc.poll() is None
        assert "added" in [m["id"] for m in c.get("/v1/models")["data"]]
        assert "listen.prot" in c.log()
        t.join(timeout=300)  # a bound: two runs on two cores stream far slower than one
        assert not t.is_alive(), "the in-flight stream did not end"
        assert "error" not in out and out["events"][-1] == "data: [DONE]"
    finally:
        stop_corral(c)


def test_allocations_learned_at_the_first_load_survive_a_restart():
    """The first load runs llama-server at -lv 4 to read its allocation lines; after a restart
    on the same data directory the model loads at -lv 3 and reports the stored allocations."""
    c = start_corral()
    try:
        chat = {"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
        c.post("/v1/chat/completions", chat)
        first = next(i for i in c.get("/admin/instances") if i["model"] == "chat")
        assert first["arguments"][first["arguments"].index("-lv") + 1] == "4"
        assert first["allocationSource"] == "log" and first["allocatedMiB"].get("CPU KV", 0) > 0
        restart_corral(c)  # the same configuration and files, a new process
        c.post("/v1/chat/completions", chat)
        second = next(i for i in c.get("/admin/instances") if i["model"] == "chat")
        assert second["arguments"][second["arguments"].index("-lv") + 1] == "3"
        assert second["allocationSource"] == "learned"
        assert second["allocatedMiB"] == first["allocatedMiB"]
        lines = c.get("/admin/models/chat/log?lines=300")
        assert "buffer size" not in json.dumps(lines)
    finally:
        stop_corral(c)


def test_the_prompt_cache_is_set_per_instance_and_counted_in_its_projection():
    c = start_corral(extra_config={"cache": {"ramMiB": 300}})
    try:
        admin = {"authorization": f"Bearer {c.admin_token}"}
        for model in ("chat", "embed"):
            r = httpx.post(c.base + "/admin/models/" + model + "/load", headers=admin, timeout=60)
            assert r.status_code == 200, r.text
        instances = {i["model"]: i for i in httpx.get(c.base + "/admin/instances", headers=admin).json()}
        chat, embed = instances["chat"], instances["embed"]
        assert chat["arguments"][chat["arguments"].index("--cache-ram") + 1] == "300"
        # llama-fit-params does not count the prompt cache; the projection does.
        assert chat["projectedMiB"] >= 300, chat
        # An embedding model keeps no prompts: no cache, nothing counted for it.
        assert embed["arguments"][embed["arguments"].index("--cache-ram") + 1] == "0"
        assert embed["projectedMiB"] < 300, embed
    finally:
        stop_corral(c)
