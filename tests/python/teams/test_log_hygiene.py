"""No secret and no prompt reaches a log: a full run at trace level (teams, keys, rotation, a
wrong key, OpenAI and Ollama requests streamed and not, embeddings, a crash) leaves neither a key
nor the admin token (beyond the one line that shows it at first start) nor any prompt text in
Corral's output or in the llama-server log lines Corral keeps."""
import os
import signal
import uuid

import httpx

from corral_harness.corral import start_corral, stop_corral


def test_a_full_run_logs_no_key_token_or_prompt():
    c = start_corral(serve_args=("--log-level", "trace"))
    secrets, prompts = [], []
    try:
        admin = {"authorization": f"Bearer {c.admin_token}"}
        httpx.post(c.base + "/admin/teams", json={"name": "hygiene"}, headers=admin).raise_for_status()
        key = httpx.post(c.base + "/admin/teams/hygiene/keys", json={"name": "k"}, headers=admin).json()["key"]
        prefix = next(k["prefix"] for k in httpx.get(c.base + "/admin/keys?team=hygiene", headers=admin).json()["keys"] if key.startswith(k["prefix"]))
        rotated = httpx.post(c.base + f"/admin/keys/{prefix}/rotate", headers=admin).json()["key"]
        wrong = "sk-corral-" + uuid.uuid4().hex
        secrets += [key, rotated, wrong, key[len(prefix):], rotated[-16:]]
        auth = {"authorization": f"Bearer {rotated}"}

        def canary() -> str:
            prompts.append(f"CANARY{uuid.uuid4().hex}")
            return prompts[-1]

        assert httpx.post(c.base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json={"model": "chat", "messages": []}).status_code == 401
        assert httpx.post(c.base + "/v1/chat/completions", headers={"authorization": f"Bearer {wrong}"}, json={"model": "chat", "messages": []}).status_code == 401
        assert httpx.post(c.base + "/v1/chat/completions", headers={"x-api-key": wrong}, json={"model": "chat", "messages": []}).status_code == 401
        chat = {"model": "chat", "max_tokens": 3, "messages": [{"role": "system", "content": canary()}, {"role": "user", "content": canary()}]}
        assert httpx.post(c.base + "/v1/chat/completions", headers=auth, json=chat, timeout=60).status_code == 200
        with httpx.stream("POST", c.base + "/v1/chat/completions", headers=auth, json={**chat, "stream": True}, timeout=60) as r:
            assert r.status_code == 200 and list(r.iter_lines())
        assert httpx.post(c.base + "/v1/completions", headers=auth, json={"model": "chat", "prompt": canary(), "max_tokens": 2}, timeout=60).status_code == 200
        assert httpx.post(c.base + "/v1/embeddings", headers=auth, json={"model": "embed", "input": canary()}, timeout=60).status_code == 200
        # Bounded: a random model left to run generates until its context is full (over 60 s on a busy machine).
        assert httpx.post(c.base + "/api/chat", headers=auth, json={"model": "chat", "stream": False, "messages": [{"role": "user", "content": canary()}],
                                                                    "options": {"num_predict": 3}}, timeout=60).status_code == 200
        assert httpx.post(c.base + "/api/generate", headers=auth, json={"model": "chat", "prompt": canary(), "options": {"num_predict": 2}}, timeout=60).status_code == 200
        assert httpx.post(c.base + "/api/embed", headers=auth, json={"model": "embed", "input": [canary()]}, timeout=60).status_code == 200
        # A request whose prompt is too long is refused; its text must not appear in the error log.
        too_long = {"model": "chat", "max_tokens": 2, "messages": [{"role": "user", "content": (canary() + " ") * 3000}]}
        assert httpx.post(c.base + "/v1/chat/completions", headers=auth, json=too_long, timeout=60).status_code == 400
        # A crash mid-stream logs the child's last lines: they must not carry the prompt either.
        instance = next(i for i in httpx.get(c.base + "/admin/instances", headers=admin).json() if i["model"] == "chat")
        with httpx.stream("POST", c.base + "/v1/chat/completions", headers=auth, json={**chat, "max_tokens": 2000, "stream": True}, timeout=60) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data:"))
            os.kill(instance["pid"], signal.SIGKILL)
            list(lines)
        after_crash = httpx.post(c.base + "/v1/chat/completions", headers=auth, json=chat, timeout=60)
        assert after_crash.status_code == 200, after_crash.text
        kept = httpx.get(c.base + "/admin/models/chat/log?lines=300", headers=admin).json()["lines"]
        kept += httpx.get(c.base + "/admin/models/embed/log?lines=300", headers=admin).json()["lines"]
        crash = next(i for i in httpx.get(c.base + "/admin/instances", headers=admin).json() if i["model"] == "chat")["lastCrashLog"]
    finally:
        c.proc.send_signal(signal.SIGTERM)
        c.proc.wait(timeout=30)
    log = c.log()
    try:
        assert len(log) > 1000, "trace logging should have produced output"
        for secret in secrets:
            assert secret not in log, "a key reached Corral's log"
        assert log.count(c.admin_token) == 1 and "admin token (shown once" in log  # the first-start line only
        everything = log + "\n".join(kept) + "\n".join(crash)
        for prompt in prompts:
            assert prompt not in everything, "prompt text reached a log"
        assert any("llama" in line or "slot" in line for line in kept), "the kept llama-server lines should be there to scan"
    finally:
        stop_corral(c)
