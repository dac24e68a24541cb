"""Teams, keys and limits end to end: the CLI creates them, the real openai and ollama clients
and raw HTTP hit every denial path on both APIs, against a real llama-server."""
import concurrent.futures
import json
import os
import stat
import subprocess
import time

import httpx
import ollama
import openai
import pytest

from corral_harness.corral import CORRAL, start_corral, stop_corral, wait_until


@pytest.fixture(scope="module")
def corral():
    c = start_corral()
    yield c
    stop_corral(c)


def cli(c, *args) -> dict:
    out = subprocess.run([CORRAL, *args, "--url", c.base, "--token", c.admin_token], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip().startswith(("{", "[")) else {}


def chat_body(model="chat", n=4, stream=False):
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": n, "stream": stream}


def post(c, path, body, key=None, header="authorization"):
    headers = {}
    if key is not None:
        # "Bearer" alone is the empty key (httpx refuses a trailing space).
        headers[header] = (f"Bearer {key}" if key else "Bearer") if header == "authorization" else key
    return httpx.post(c.base + path, json=body, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def teams(corral):
    """Team A may use `chat` (and its alias), team B only `embed`."""
    a = cli(corral, "teams", "create", "alpha", "--models", "chat")
    b = cli(corral, "teams", "create", "beta", "--models", "emb*")
    key_a = cli(corral, "keys", "create", "alpha", "--name", "ci")
    key_b = cli(corral, "keys", "create", "beta")
    return {"a": a, "b": b, "key_a": key_a["key"], "prefix_a": key_a["prefix"], "key_b": key_b["key"]}


def test_admin_token_file_is_private_and_admin_routes_need_it(corral):
    path = f"{corral.directory}/data/admin-token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert httpx.get(corral.base + "/admin/instances").status_code == 401
    assert httpx.get(corral.base + "/metrics").status_code == 401
    ok = httpx.get(corral.base + "/admin/instances", headers={"authorization": f"Bearer {corral.admin_token}"})
    assert ok.status_code == 200
    # The token was shown once, on stdout, never through the logger.
    log = corral.log()
    assert log.count(corral.admin_token) == 1


def test_open_mode_until_a_team_exists(corral):
    # openai-python always sends some key; Copilot sends an empty one: both are fine in open mode.
    assert post(corral, "/v1/chat/completions", chat_body(), key="sk-whatever").status_code == 200
    assert post(corral, "/v1/chat/completions", chat_body(), key="").status_code == 200
    assert "open mode" in corral.log()


def test_keys_are_shown_once_and_stored_hashed(corral, teams):
    listed = cli(corral, "keys", "list", "--team", "alpha")["keys"]
    assert [k["prefix"] for k in listed] == [teams["prefix_a"]]
    assert "key" not in listed[0]
    assert teams["key_a"].startswith(teams["prefix_a"] + "-")
    import sqlite3
    db = sqlite3.connect(f"{corral.directory}/data/corral.sqlite")
    stored = db.execute("SELECT hash FROM api_key WHERE prefix = ?", (teams["prefix_a"],)).fetchone()[0]
    import hashlib
    assert stored == hashlib.sha256(teams["key_a"].encode()).hexdigest()
    assert teams["key_a"] not in open(f"{corral.directory}/data/corral.sqlite", "rb").read().decode("latin-1")


@pytest.mark.parametrize("path,body", [("/v1/chat/completions", chat_body()), ("/api/chat", {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": False})])
def test_missing_and_unknown_keys_get_401_in_the_apis_shape(corral, teams, path, body):
    for key in (None, "", "sk-unknown", teams["key_a"][:-1] + ("A" if teams["key_a"][-1] != "A" else "B"), corral.admin_token):
        r = post(corral, path, body, key=key)
        assert r.status_code == 401, (key, r.text)
        err = r.json()["error"]
        assert isinstance(err, dict) if path.startswith("/v1") else isinstance(err, str)


def test_both_header_styles_work(corral, teams):
    assert post(corral, "/v1/chat/completions", chat_body(), key=teams["key_a"]).status_code == 200
    assert post(corral, "/v1/chat/completions", chat_body(), key=teams["key_a"], header="x-api-key").status_code == 200
    client = openai.OpenAI(base_url=corral.base + "/v1", api_key=teams["key_a"], max_retries=0)
    assert client.chat.completions.create(model="chat-alias", messages=[{"role": "user", "content": "hi"}], max_tokens=2).usage.completion_tokens == 2


def test_a_team_sees_and_uses_only_its_models(corral, teams):
    a = openai.OpenAI(base_url=corral.base + "/v1", api_key=teams["key_a"], max_retries=0)
    assert [m.id for m in a.models.list()] == ["chat"]
    with pytest.raises(openai.PermissionDeniedError):
        a.embeddings.create(model="embed", input="x")
    ol = ollama.Client(host=corral.base, headers={"authorization": f"Bearer {teams['key_b']}"})
    assert [m.model for m in ol.list().models] == ["embed:latest"]
    with pytest.raises(ollama.ResponseError) as e:
        ol.chat(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 403
    assert len(ol.embed(model="embed", input="x").embeddings) == 1


def test_revocation_and_rotation_apply_to_the_next_request(corral, teams):
    key = cli(corral, "keys", "create", "alpha", "--name", "temp")
    assert post(corral, "/v1/chat/completions", chat_body(), key=key["key"]).status_code == 200
    rotated = cli(corral, "keys", "rotate", key["prefix"])
    assert post(corral, "/v1/chat/completions", chat_body(), key=key["key"]).status_code == 401
    assert post(corral, "/v1/chat/completions", chat_body(), key=rotated["key"]).status_code == 200
    cli(corral, "keys", "revoke", rotated["prefix"])
    r = post(corral, "/api/generate", {"model": "chat", "prompt": "x", "stream": False}, key=rotated["key"])
    assert r.status_code == 401 and "revoked" in r.json()["error"]


def test_expired_keys_and_disabled_teams(corral, teams):
    key = cli(corral, "keys", "create", "alpha", "--expires-in", "1s")
    wait_until(lambda: post(corral, "/v1/chat/completions", chat_body(), key=key["key"]).status_code == 401, 10, "the key to expire", interval=0.2)
    cli(corral, "teams", "disable", "beta")
    r = post(corral, "/api/embed", {"model": "embed", "input": "x"}, key=teams["key_b"])
    assert r.status_code == 403 and "disabled" in r.json()["error"]
    cli(corral, "teams", "enable", "beta")
    assert post(corral, "/api/embed", {"model": "embed", "input": "x"}, key=teams["key_b"]).status_code == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_requests_per_minute_gives_429_with_headers(corral, path):
    team = f"rpm{path.replace('/', '-')}"
    cli(corral, "teams", "create", team, "--rpm", "2")
    key = cli(corral, "keys", "create", team)["key"]
    body = chat_body() if path.startswith("/v1") else {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": False, "options": {"num_predict": 2}}
    first = post(corral, path, body, key=key)
    assert first.status_code == 200
    if path.startswith("/v1"):
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert post(corral, path, body, key=key).status_code == 200
    third = post(corral, path, body, key=key)
    assert third.status_code == 429
    assert 1 <= int(third.headers["retry-after"]) <= 60
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert "requests per minute" in (third.json()["error"]["message"] if path.startswith("/v1") else third.json()["error"])


def test_parallel_limit_and_per_key_limits_take_the_minimum(corral):
    cli(corral, "teams", "create", "par", "--tpm", "100000")
    key = cli(corral, "keys", "create", "par", "--tpm", "40")["key"]
    # The key's own limit (40) is smaller than the team's: a 64-token request cannot fit.
    r = post(corral, "/v1/chat/completions", chat_body(n=64), key=key)
    assert r.status_code == 400 and "lower max_tokens" in r.json()["error"]["message"]


def test_tokens_per_minute_is_never_overshot_by_50_parallel_requests(corral):
    limit = 600
    cli(corral, "teams", "create", "tpm", "--tpm", str(limit))
    key = cli(corral, "keys", "create", "tpm")["key"]
    body = {"model": "chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16}

    def one(_):
        r = post(corral, "/v1/chat/completions", body, key=key)
        return r.status_code, (r.json().get("usage") or {}).get("total_tokens", 0) if r.status_code == 200 else 0

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    admitted = [t for s, t in results if s == 200]
    refused = [s for s, _ in results if s != 200]
    assert set(refused) <= {429}
    used = sum(admitted)
    print(f"\nTPM {limit}: {len(admitted)} admitted, {len(refused)} refused, {used} tokens used")
    assert admitted and refused
    assert used <= limit


def test_daily_budget_refuses_until_midnight_utc(corral):
    cli(corral, "teams", "create", "daily", "--daily", "200")
    key = cli(corral, "keys", "create", "daily")["key"]
    statuses = [post(corral, "/v1/chat/completions", chat_body(n=16), key=key).status_code for _ in range(8)]
    assert statuses[0] == 200 and statuses[-1] == 429
    r = post(corral, "/v1/chat/completions", chat_body(n=16), key=key)
    now = time.time()
    assert abs(int(r.headers["retry-after"]) - (86400 - now % 86400)) < 5
    usage = httpx.get(corral.base + "/admin/teams/daily", headers={"authorization": f"Bearer {corral.admin_token}"}).json()["usage"]
    assert usage["tokensToday"] <= 200


def test_admin_api_validates_input(corral):
    h = {"authorization": f"Bearer {corral.admin_token}"}
    assert httpx.post(corral.base + "/admin/teams", json={"name": "x", "tokensPerMinute": -1}, headers=h).status_code == 400
    assert httpx.post(corral.base + "/admin/teams", json={"name": "alpha"}, headers=h).status_code == 409
    assert httpx.post(corral.base + "/admin/teams/nobody/keys", json={}, headers=h).status_code == 404
    assert httpx.post(corral.base + "/admin/keys/ck-nothing1/revoke", headers=h).status_code == 404
    # A team key never opens the admin API.
    team_key = cli(corral, "keys", "create", "alpha")["key"]
    assert httpx.get(corral.base + "/admin/teams", headers={"authorization": f"Bearer {team_key}"}).status_code == 401


def test_team_keys_never_reach_operator_routes_or_the_shared_library(corral, teams):
    key = {"authorization": f"Bearer {teams['key_a']}"}
    # The router ignores repeated slashes; the guard must too.
    for path in ("//admin/teams", "/admin//teams", "/ADMIN/teams", "//metrics", "/slots?model=chat"):
        assert httpx.get(corral.base + path, headers=key).status_code == 401, path
    copy = httpx.post(corral.base + "/api/copy", headers=key, json={"source": "embed", "destination": "chat-x"})
    assert copy.status_code == 403
    assert httpx.request("DELETE", corral.base + "/api/delete", headers=key, json={"model": "chat"}).status_code == 403
    # Loading or unloading a model the team may not use is refused too.
    beta = {"authorization": f"Bearer {teams['key_b']}"}
    assert httpx.post(corral.base + "/api/generate", headers=beta, json={"model": "chat", "keep_alive": 0}).status_code == 403


def test_no_key_ever_reaches_the_log(corral, teams):
    log = corral.log()
    assert teams["key_a"] not in log and teams["key_b"] not in log
    # Nor the secret part alone (after `ck-PREFIX-`; the secret may itself contain '-').
    for key in (teams["key_a"], teams["key_b"]):
        assert key.split("-", 2)[2] not in log


def test_refuses_to_run_open_beyond_loopback(tmp_path):
    config = {"listen": {"host": "0.0.0.0", "port": 0}, "dataDirectory": str(tmp_path / "data")}
    (tmp_path / "routes.json").write_text(json.dumps(config))
    out = subprocess.run([CORRAL, "serve", "--config", str(tmp_path / "routes.json")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "refusing to serve without API keys" in out.stderr
