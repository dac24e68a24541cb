"""Three Corral nodes on one real PostgreSQL (issue 22): shared keys and admin token, changes on
one node applied on every node, exact team limits across nodes, relaying to the node that has a
model loaded, kill -9 of a node, PostgreSQL restarted under load, drain, and moving a SQLite
node's accounts into the cluster."""
import concurrent.futures
import os
import signal
import subprocess
import tempfile
import time

import httpx
import pytest

from cluster_nodes import SECRET, start_node
from conftest import CORRAL, start_corral, stop_corral
from postgres_server import PASSWORD, Postgres

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def cluster():
    pg = Postgres()
    nodes = {}
    try:
        for name in ("a", "b", "c"):
            nodes[name] = start_node(pg, name)
        yield pg, nodes
    finally:
        for n in nodes.values():
            if n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait()
        pg.close()


def admin(nodes) -> dict:
    # The token the first node printed (the others found it in the shared store).
    return {"authorization": f"Bearer {nodes['a'].admin_token}"}


def team_with_key(nodes, name: str, on: str = "a", **limits) -> tuple[str, str]:
    h = admin(nodes)
    base = nodes[on].base
    team = httpx.post(base + "/admin/teams", headers=h, json={"name": name, **limits})
    assert team.status_code == 201, team.text
    key = httpx.post(base + f"/admin/teams/{team.json()['id']}/keys", headers=h, json={})
    assert key.status_code == 201, key.text
    return team.json()["id"], key.json()["key"]


def chat(node, key: str, model: str = "chat", max_tokens: int = 4, timeout: float = 60, **extra):
    return httpx.post(node.base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": model, **CHAT, "max_tokens": max_tokens, **extra}, timeout=timeout)


def cluster_view(node, nodes) -> dict:
    return httpx.get(node.base + "/admin/cluster", headers=admin(nodes)).json()


def wait_for(condition, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {seconds} s waiting for {what}")


def test_every_node_registers_and_shares_the_admin_token(cluster):
    pg, nodes = cluster
    h = admin(nodes)
    # Only the first node made a token; the others have no token file of their own.
    assert not os.path.exists(f"{nodes['b'].directory}/data/admin-token")
    for n in nodes.values():
        view = wait_for(lambda: (v := httpx.get(n.base + "/admin/cluster", headers=h).json()) and len(v.get("nodes", [])) == 3 and v, 10,
                        "three registered nodes")
        assert view["clustered"] is True and view["node"] == n.name
        assert {x["name"] for x in view["nodes"]} == {"a", "b", "c"}
        assert all(x["inRouting"] and x["heartbeatAgeSeconds"] < 3 for x in view["nodes"])
        assert all("Host" in x["memory"] and x["version"] for x in view["nodes"])
    assert httpx.get(nodes["c"].base + "/admin/cluster", headers={"authorization": "Bearer wrong"}).status_code == 401


def test_a_key_made_on_one_node_works_on_all_and_revocation_applies_at_the_next_request(cluster):
    pg, nodes = cluster
    _, key = team_with_key(nodes, "shared-keys")
    for n in nodes.values():
        r = chat(n, key)
        assert r.status_code == 200, (n.name, r.text)
    keys = httpx.get(nodes["a"].base + "/admin/teams/shared-keys", headers=admin(nodes)).json()["keys"]
    assert len(keys) == 1
    revoked = httpx.post(nodes["a"].base + f"/admin/keys/{keys[0]['prefix']}/revoke", headers=admin(nodes))
    assert revoked.status_code == 200, revoked.text
    # No pause: B refuses at its very next request (checked in the admission transaction).
    r = chat(nodes["b"], key)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"], r.text
    assert chat(nodes["c"], key).status_code == 401


def test_team_changes_on_one_node_apply_on_the_others(cluster):
    pg, nodes = cluster
    team, key = team_with_key(nodes, "changes")
    assert chat(nodes["c"], key, model="solo").status_code == 200
    # Disabling is checked where the quota is taken: refused at once.
    assert httpx.patch(nodes["a"].base + f"/admin/teams/{team}", headers=admin(nodes), json={"disabled": True}).status_code == 200
    r = chat(nodes["c"], key)
    assert r.status_code == 403 and "disabled" in r.text, r.text
    assert httpx.patch(nodes["a"].base + f"/admin/teams/{team}", headers=admin(nodes), json={"disabled": False}).status_code == 200
    # A model permission comes with the change notice: within the bounded staleness (one heartbeat).
    started = time.time()
    assert httpx.patch(nodes["b"].base + f"/admin/teams/{team}", headers=admin(nodes), json={"models": ["chat"]}).status_code == 200
    wait_for(lambda: chat(nodes["c"], key, model="solo").status_code == 403, 2.5, "C to refuse a model B's change forbade")
    assert time.time() - started < 2.5
    assert chat(nodes["a"], key, model="chat").status_code == 200


def test_tokens_per_minute_hold_exactly_across_three_nodes(cluster):
    pg, nodes = cluster
    team, key = team_with_key(nodes, "tpm-300", tokensPerMinute=300)
    order = [nodes[n] for n in ("a", "b", "c")] * 20

    def one(node):
        r = chat(node, key, max_tokens=8, timeout=120)
        return r.status_code, (r.json().get("usage") if r.status_code == 200 else None), r.headers.get("retry-after")

    with concurrent.futures.ThreadPoolExecutor(max_workers=60) as pool:
        results = list(pool.map(one, order))
    ok = [u for s, u, _ in results if s == 200]
    limited = [ra for s, _, ra in results if s == 429]
    assert len(ok) + len(limited) == 60, [s for s, _, _ in results]
    served = sum(u["prompt_tokens"] + u["completion_tokens"] for u in ok)
    assert 0 < served <= 300, served
    assert limited and all(ra and int(ra) >= 1 for ra in limited)
    # What the team was charged is what its answers used, whichever node served them.
    used = httpx.get(nodes["b"].base + f"/admin/teams/{team}", headers=admin(nodes)).json()["usage"]
    assert used["tokensToday"] == served and used["inFlight"] == 0, used


def test_a_model_loaded_on_a_peer_is_served_there_without_loading_here(cluster):
    pg, nodes = cluster
    _, key = team_with_key(nodes, "relay")
    h = admin(nodes)
    for n in nodes.values():
        assert httpx.post(n.base + "/admin/models/solo/unload", headers=h).status_code == 200
    # Loaded on B by the admin route (a request might be relayed to a peer that still shows it).
    assert httpx.post(nodes["b"].base + "/admin/models/solo/load", headers=h, timeout=60).status_code == 200
    def has_solo(view):
        return {x["name"] for x in view["nodes"] if any(m["model"] == "solo" for m in x["models"])}
    wait_for(lambda: has_solo(cluster_view(nodes["a"], nodes)) == {"b"}, 5, "A to see solo loaded on B only")
    r = chat(nodes["a"], key, model="solo")
    assert r.status_code == 200, r.text
    request_id = r.headers["x-request-id"]
    loaded_on_a = [i for i in httpx.get(nodes["a"].base + "/admin/instances", headers=h).json() if i["model"] == "solo" and i["state"] == "loaded"]
    assert loaded_on_a == []
    # One ledger row, written by A (which admitted it), naming B as the node that served it.
    row = wait_for(lambda: pg.query(f"SELECT node, status, completion_tokens FROM usage WHERE request_id = '{request_id}'"), 5, "the ledger row")
    assert row == "b|200|4", row
    assert pg.query(f"SELECT COUNT(*) FROM usage WHERE request_id = '{request_id}'") == "1"
    # Streams are relayed too, events as they come.
    with httpx.stream("POST", nodes["a"].base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": "solo", **CHAT, "max_tokens": 4, "stream": True}, timeout=60) as s:
        assert s.status_code == 200
        body = "".join(s.iter_text())
    assert body.rstrip().endswith("data: [DONE]")


def test_a_relay_header_without_the_cluster_secret_is_not_trusted(cluster):
    pg, nodes = cluster
    team, _ = team_with_key(nodes, "forged")
    forged = {"x-corral-relayed-by": "b", "x-corral-cluster-secret": "guess", "x-corral-team": team, "x-corral-key-prefix": "ck-x"}
    r = httpx.post(nodes["a"].base + "/v1/chat/completions", headers=forged, json={"model": "chat", **CHAT, "max_tokens": 2})
    assert r.status_code == 401, r.text
    right = {**forged, "x-corral-cluster-secret": SECRET}
    assert httpx.post(nodes["a"].base + "/v1/chat/completions", headers=right, json={"model": "chat", **CHAT, "max_tokens": 2}).status_code == 200
