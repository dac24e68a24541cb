"""Three Corral nodes on one real PostgreSQL (issue 22): shared keys and admin token, changes on
one node applied on every node, exact team limits across nodes, relaying to the node that has a
model loaded, kill -9 of a node, PostgreSQL restarted under load, drain, and moving a SQLite
node's accounts into the cluster."""
import concurrent.futures
import json
import os
import signal
import subprocess
import tempfile
import threading
import time

import httpx
import openai
import pytest
from openai import OpenAI

from corral_harness.cluster import SECRET, running_cluster, start_node, wait_for_fresh_reading
from corral_harness.corral import CORRAL, start_corral, stop_corral, wait_until
from corral_harness.postgres import PASSWORD

pytestmark = pytest.mark.cluster

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def cluster():
    # A node restarted by a test replaces its entry in `nodes`, and is killed at the end like the others.
    with running_cluster({"a": {}, "b": {}, "c": {}}) as (pg, nodes):
        yield pg, nodes


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


def test_every_node_registers_and_shares_the_admin_token(cluster):
    pg, nodes = cluster
    h = admin(nodes)
    # Only the first node made a token; the others have no token file of their own.
    assert not os.path.exists(f"{nodes['b'].directory}/data/admin-token")
    for n in nodes.values():
        view = wait_until(lambda: (v := httpx.get(n.base + "/admin/cluster", headers=h).json()) and len(v.get("nodes", [])) == 3 and v, 10,
                        "three registered nodes")
        assert view["clustered"] is True and view["node"] == n.name
        assert {x["name"] for x in view["nodes"]} == {"a", "b", "c"}
        assert all(x["inRouting"] and x["heartbeatAgeSeconds"] < 3 for x in view["nodes"])
        assert all(x["memory"]["Host"]["budgetMiB"] > 0 and x["memory"]["Host"]["freeMiB"] > 0 and x["version"] for x in view["nodes"])
    assert httpx.get(nodes["c"].base + "/admin/cluster", headers={"authorization": "Bearer wrong"}).status_code == 401


def test_an_alias_made_on_one_node_is_everyones_until_another_deletes_it(cluster):
    # Before any team exists (open mode): Ollama's /api/copy and /api/delete are not for team keys.
    pg, nodes = cluster
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    assert httpx.post(a.base + "/api/copy", json={"source": "chat", "destination": "team-chat"}).status_code == 200

    def known_on_c():
        return httpx.post(c.base + "/api/show", json={"model": "team-chat"}).status_code
    wait_until(lambda: known_on_c() == 200, 2.5, "C to know A's alias")
    assert httpx.request("DELETE", b.base + "/api/delete", json={"model": "team-chat"}).status_code == 200
    wait_until(lambda: known_on_c() == 404, 2.5, "C to drop the alias B deleted")

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


def test_a_key_works_on_every_node_the_moment_its_creation_returns(cluster):
    # No wait for the change notice: a node that has not heard of a key looks it up in the
    # shared store before refusing it. Several keys, each used on B and C right away.
    pg, nodes = cluster
    h = admin(nodes)
    team = httpx.post(nodes["a"].base + "/admin/teams", headers=h, json={"name": "instant-keys"}).json()
    for _ in range(5):
        key = httpx.post(nodes["a"].base + f"/admin/teams/{team['id']}/keys", headers=h, json={}).json()["key"]
        for n in ("b", "c"):
            r = chat(nodes[n], key, max_tokens=1)
            assert r.status_code == 200, (n, r.text)
    # A key that exists nowhere is still refused, however often it is tried.
    fake = "ck-zzzzzzzz-" + "x" * 43
    for _ in range(3):
        r = chat(nodes["b"], fake)
        assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key", r.text


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
    wait_until(lambda: chat(nodes["c"], key, model="solo").status_code == 403, 2.5, "C to refuse a model B's change forbade")
    assert time.time() - started < 2.5
    assert chat(nodes["a"], key, model="chat").status_code == 200



def test_profiles_default_model_and_pins_set_on_one_node_apply_on_the_others(cluster):
    pg, nodes = cluster
    h = admin(nodes)
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    assert httpx.put(a.base + "/admin/profiles/cluster-cold", headers=h, json={"temperature": 0.05}).status_code == 200
    wait_until(lambda: httpx.get(c.base + "/admin/profiles/cluster-cold", headers=h).status_code == 200, 2.5, "C to know A's profile")
    assert httpx.put(b.base + "/admin/default-model", headers=h, json={"model": "solo"}).status_code == 200
    wait_until(lambda: httpx.get(c.base + "/admin/default-model", headers=h).json()["model"] == "solo", 2.5, "C to take B's default model")
    assert httpx.post(a.base + "/admin/models/chat/pin", headers=h).status_code == 200
    wait_until(lambda: any(i["model"] == "chat" and i["pinned"] for i in httpx.get(b.base + "/admin/instances", headers=h).json()), 2.5,
             "B to pin what A pinned")
    # Back as they were, everywhere.
    assert httpx.post(c.base + "/admin/models/chat/unpin", headers=h).status_code == 200
    assert httpx.put(a.base + "/admin/default-model", headers=h, json={"model": None}).status_code == 200
    assert httpx.delete(b.base + "/admin/profiles/cluster-cold", headers=h).status_code == 204
    wait_until(lambda: httpx.get(a.base + "/admin/profiles/cluster-cold", headers=h).status_code == 404, 2.5, "A to drop the deleted profile")
    wait_until(lambda: not any(i["model"] == "chat" and i["pinned"] for i in httpx.get(a.base + "/admin/instances", headers=h).json()), 2.5,
             "A to unpin what C unpinned")
    wait_until(lambda: httpx.get(b.base + "/admin/default-model", headers=h).json()["model"] != "solo", 2.5, "B to drop the default model")


def test_usage_from_rollups_equals_the_shared_ledger_on_every_node(cluster):
    # Rows written by three nodes into one PostgreSQL ledger: each node's /admin/usage (summed in
    # SQL over rollups) and /admin/stats equal what the raw rows say.
    pg, nodes = cluster
    h = admin(nodes)
    team, key = team_with_key(nodes, "rollup-team")
    for n in ("a", "b", "c", "a", "b", "c"):
        assert chat(nodes[n], key, max_tokens=2).status_code == 200
    assert chat(nodes["b"], key, model="no-such-model").status_code == 404

    def rows():
        return pg.query(f"SELECT COUNT(*) || ' ' || SUM(COALESCE(completion_tokens, 0)) FROM usage WHERE team = '{team}'")
    wait_until(lambda: rows().startswith("7 "), 5, "seven ledger rows")
    count, completion = map(int, rows().split())
    for n in nodes.values():
        usage = httpx.get(n.base + "/admin/usage?group=team&bucket=hour", headers=h).json()["data"]
        mine = [u for u in usage if u["team"] == team]
        assert sum(u["requests"] for u in mine) == count and sum(u["completionTokens"] for u in mine) == completion, (n.name, mine)
        assert sum(u["errors"] for u in mine) == 1
        stats = {m["model"]: m for m in httpx.get(n.base + "/admin/stats?window=1h", headers=h).json()["models"]}
        assert stats["chat"]["requests"] >= 6 and stats["chat"]["latencyMs"]["p50"] is not None


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


def test_requests_per_minute_and_parallel_limits_are_exact_when_admissions_arrive_together(cluster):
    """Admissions that arrive together go to the store in one batch per node; each must see the
    ones before it, in its own batch and in the other nodes' batches, so the counts are exact."""
    pg, nodes = cluster
    _, key = team_with_key(nodes, "rpm-7", requestsPerMinute=7)
    order = [nodes[n] for n in ("a", "b", "c")] * 10

    def one(node):
        r = chat(node, key, max_tokens=2, timeout=120)
        return r.status_code, r.headers.get("retry-after"), r.headers.get("x-ratelimit-limit-requests")

    with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(one, order))
    statuses = sorted(s for s, _, _ in results)
    assert statuses.count(200) == 7 and statuses.count(429) == 23, statuses
    assert all(1 <= int(ra) <= 60 for s, ra, _ in results if s == 429)

    # One at a time, one after another on a node: each request's settlement is written before (or with)
    # the next admission, so a client that waits for each answer is never refused.
    _, key = team_with_key(nodes, "parallel-1", maxParallel=1)
    statuses = [chat(nodes["a"], key, max_tokens=2).status_code for _ in range(20)]
    assert statuses == [200] * len(statuses), statuses

    # At most two at once for this team, whatever node they arrive on: sampled in the store while
    # 12 streams sent together over the three nodes run, the team never has more than two.
    team, key = team_with_key(nodes, "parallel-2", maxParallel=2)

    def stream(node):
        with httpx.stream("POST", node.base + "/v1/chat/completions", timeout=120, headers={"authorization": f"Bearer {key}"},
                          json={"model": "chat", "messages": [{"role": "user", "content": "count"}], "max_tokens": 32, "stream": True}) as r:
            r.read()
            return r.status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=13) as pool:
        done = []
        peaks = pool.submit(lambda: [int(pg.query(f"SELECT coalesce(max(in_flight), 0) FROM quota_subject WHERE subject = '{team}'") or 0)
                                     for _ in iter(lambda: len(done) == 0, False)])
        codes = list(pool.map(stream, [nodes[n] for n in ("a", "b", "c")] * 4))
        done.append(True)
        peak = max(peaks.result() or [0])
    assert set(codes) <= {200, 429} and codes.count(200) >= 2, codes
    assert 1 <= peak <= 2, peak
    used = httpx.get(nodes["c"].base + f"/admin/teams/{team}", headers=admin(nodes)).json()["usage"]
    assert used["inFlight"] == 0, used


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
    wait_until(lambda: has_solo(cluster_view(nodes["a"], nodes)) == {"b"}, 5, "A to see solo loaded on B only")
    b_entry = next(x for x in cluster_view(nodes["a"], nodes)["nodes"] if x["name"] == "b")
    solo = next(m for m in b_entry["models"] if m["model"] == "solo")
    assert solo["slots"] == 2 and solo["free"] == 2 and solo["queued"] == 0, solo
    assert b_entry["memory"]["Host"]["usedMiB"] > 0, b_entry["memory"]
    wait_for_fresh_reading(pg, "a")  # A routes on its last heartbeat's reading of the registry
    r = chat(nodes["a"], key, model="solo")
    assert r.status_code == 200, r.text
    request_id = r.headers["x-request-id"]
    loaded_on_a = [i for i in httpx.get(nodes["a"].base + "/admin/instances", headers=h).json() if i["model"] == "solo" and i["state"] == "loaded"]
    assert loaded_on_a == []
    # One ledger row, written by A (which admitted it), naming B as the node that served it.
    row = wait_until(lambda: pg.query(f"SELECT node, status, completion_tokens FROM usage WHERE request_id = '{request_id}'"), 5, "the ledger row")
    assert row == "b|200|4", row
    assert pg.query(f"SELECT COUNT(*) FROM usage WHERE request_id = '{request_id}'") == "1"
    # The openai SDK sees a relayed answer as any other (non-streamed and streamed).
    from openai import OpenAI
    client = OpenAI(base_url=nodes["a"].base + "/v1", api_key=key, max_retries=0)
    done = client.chat.completions.create(model="solo", messages=CHAT["messages"], max_tokens=3)
    assert done.model == "solo" and done.usage.completion_tokens == 3 and done.choices[0].message.content
    streamed = list(client.chat.completions.create(model="solo", messages=CHAT["messages"], max_tokens=3, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    # Streams are relayed too, events as they come.
    with httpx.stream("POST", nodes["a"].base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": "solo", **CHAT, "max_tokens": 4, "stream": True}, timeout=60) as s:
        assert s.status_code == 200
        body = "".join(s.iter_text())
    assert body.rstrip().endswith("data: [DONE]")


def test_files_evaluations_and_jobs_are_every_nodes_and_a_job_is_controlled_from_any_node(cluster):
    """A file uploaded to A is read by a run that C takes; an evaluation made on B is seen on A; a
    run that A runs is followed and cancelled from C (the cancel is carried out by A) and deleted
    from B. Each job runs on the node that took it, named in its row."""
    pg, nodes = cluster
    _, key = team_with_key(nodes, "workbench")
    a, b, c = (OpenAI(base_url=nodes[n].base + "/v1", api_key=key, max_retries=0, timeout=120) for n in ("a", "b", "c"))
    lines = [{"item": {"answer": "Paris"}, "sample": {"output_text": text}} for text in ("Paris", "paris", "The capital is Paris")]
    content = "\n".join(json.dumps(line) for line in lines).encode()
    uploaded = a.files.create(file=("samples.jsonl", content), purpose="evals")
    assert c.files.retrieve(uploaded.id).bytes == len(content)
    assert c.files.content(uploaded.id).content == content
    evaluation = b.evals.create(
        name="shared", testing_criteria=[{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}],
        data_source_config={"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True})
    assert a.evals.retrieve(evaluation.id).name == "shared"
    run = c.evals.runs.create(evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": uploaded.id}})
    assert pg.query(f"SELECT node FROM job WHERE id = '{run.id}'") == "c"
    deadline = time.time() + 120
    while (done := a.evals.runs.retrieve(run.id, eval_id=evaluation.id)).status not in ("completed", "failed", "canceled"):
        assert time.time() < deadline, done
        time.sleep(0.2)
    assert done.status == "completed" and (done.result_counts.passed, done.result_counts.failed) == (1, 2), done
    assert [i.datasource_item_id for i in b.evals.runs.output_items.list(run.id, eval_id=evaluation.id)] == [0, 1, 2]

    # A long run taken by A, cancelled from C.
    evaluation = a.evals.create(
        name="long", testing_criteria=[{"type": "string_check", "name": "self", "input": "{{sample.output_text}}", "reference": "{{sample.output_text}}", "operation": "eq"}],
        data_source_config={"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True})
    many = [{"item": {"question": f"Q{i}"}} for i in range(300)]
    run = a.evals.runs.create(evaluation.id, data_source={
        "type": "completions", "model": "chat", "sampling_params": {"temperature": 0, "max_completion_tokens": 16, "seed": 7},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
        "source": {"type": "file_content", "content": many}})
    deadline = time.time() + 60
    while c.evals.runs.retrieve(run.id, eval_id=evaluation.id).status != "in_progress":
        assert time.time() < deadline
        time.sleep(0.1)
    assert pg.query(f"SELECT node FROM job WHERE id = '{run.id}'") == "a"
    assert httpx.get(nodes["b"].base + f"/admin/jobs/{run.id}", headers=admin(nodes)).json()["node"] == "a"
    # Paused from B and resumed from C through the job API: A carries both out.
    r = httpx.post(nodes["b"].base + f"/admin/jobs/{run.id}/pause", headers=admin(nodes))
    assert r.status_code == 200 and r.json()["state"] == "paused", r.text[:300]
    assert httpx.get(nodes["a"].base + f"/admin/jobs/{run.id}", headers=admin(nodes)).json()["state"] == "paused"
    r = httpx.post(nodes["b"].base + f"/admin/jobs/{run.id}/pause", headers=admin(nodes))
    assert r.status_code == 409 and "paused" in r.json()["error"]["message"], r.text[:300]
    # C restarts meanwhile: a node recovers only its own jobs, so A's paused run stays A's, paused.
    stop_corral(nodes["c"])
    nodes["c"] = start_node(pg, "c", directory=nodes["c"].directory)
    c = OpenAI(base_url=nodes["c"].base + "/v1", api_key=key, max_retries=0, timeout=120)
    assert httpx.get(nodes["a"].base + f"/admin/jobs/{run.id}", headers=admin(nodes)).json()["state"] == "paused"
    assert pg.query(f"SELECT node || ' ' || state FROM job WHERE id = '{run.id}'") == "a paused"
    wait_until(lambda: any(n["name"] == "a" and n["inRouting"] for n in cluster_view(nodes["c"], nodes)["nodes"]), 5, "C to see A")
    r = httpx.post(nodes["c"].base + f"/admin/jobs/{run.id}/resume", headers=admin(nodes))
    assert r.status_code == 200 and r.json()["state"] == "running", r.text[:300]
    listed = httpx.get(nodes["b"].base + "/admin/jobs?state=running", headers=admin(nodes)).json()
    assert run.id in [j["id"] for j in listed["jobs"]], str(listed)[:300]
    canceled = c.evals.runs.cancel(run.id, eval_id=evaluation.id)
    assert canceled.status == "canceled"
    assert a.evals.runs.retrieve(run.id, eval_id=evaluation.id).status == "canceled"
    assert len(list(b.evals.runs.output_items.list(run.id, eval_id=evaluation.id))) < 300
    assert b.evals.runs.delete(run.id, eval_id=evaluation.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        a.evals.runs.retrieve(run.id, eval_id=evaluation.id)
    # A file deleted on B is gone everywhere, its bytes included.
    assert b.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        a.files.content(uploaded.id)
    assert pg.query(f"SELECT count(*) FROM file WHERE id = '{uploaded.id}'") == "0"


def test_the_job_control_route_needs_the_cluster_secret(cluster):
    _, nodes = cluster
    for headers in ({}, {"x-corral-cluster-secret": "not-the-secret-at-all"}):
        r = httpx.post(nodes["a"].base + "/cluster/jobs/evalrun-x/cancel", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_cluster_secret", r.text
    r = httpx.post(nodes["a"].base + "/cluster/jobs/evalrun-x/cancel", headers={"x-corral-cluster-secret": SECRET})
    assert r.status_code == 404


def test_a_relay_header_without_the_cluster_secret_is_not_trusted(cluster):
    pg, nodes = cluster
    team, key = team_with_key(nodes, "forged")
    assert chat(nodes["a"], key).status_code == 200  # "chat" loaded on A: a trusted relay is served, not declined
    forged = {"x-corral-relayed-by": "b", "x-corral-cluster-secret": "guess", "x-corral-team": team, "x-corral-key-prefix": "ck-x"}
    r = httpx.post(nodes["a"].base + "/v1/chat/completions", headers=forged, json={"model": "chat", **CHAT, "max_tokens": 2})
    assert r.status_code == 401, r.text
    right = {**forged, "x-corral-cluster-secret": SECRET}
    assert httpx.post(nodes["a"].base + "/v1/chat/completions", headers=right, json={"model": "chat", **CHAT, "max_tokens": 2}).status_code == 200


def test_dashboard_cluster_page_shows_every_node_and_who_is_in_routing(cluster, browser):
    pg, nodes = cluster
    from corral_harness.browser import go, screenshot, sign_in, text_of, wait

    a = nodes["a"]
    sign_in(browser, a)
    go(browser, "#/cluster", "Cluster")
    wait(browser, lambda d: len(d.find_elements("css selector", "#cluster-nodes tbody tr")) == 3, "three node rows")
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#cluster-nodes tbody tr')].map((r) => [...r.cells].map((c) => c.innerText))")
    by_name = {r[0].split(" ")[0]: r for r in rows}
    assert set(by_name) == {"a", "b", "c"} and "this one" in by_name["a"][0]
    assert all(r[1] == "in routing" for r in rows), rows
    # B's loaded model with its free slots, as the registry has it.
    assert "free" in by_name["b"][4] and "MiB free" in by_name["b"][5], by_name["b"]
    assert "This node: a (serving)" in text_of(browser, "#cluster-summary")
    screenshot(browser, "cluster")


def test_store_copy_moves_a_single_node_into_the_cluster(cluster):
    pg, nodes = cluster
    single = start_corral()
    try:
        h = {"authorization": f"Bearer {single.admin_token}"}
        team = httpx.post(single.base + "/admin/teams", headers=h, json={"name": "moved", "tokensPerDay": 100000}).json()
        key = httpx.post(single.base + f"/admin/teams/{team['id']}/keys", headers=h, json={}).json()["key"]
        r = httpx.post(single.base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                       json={"model": "chat", **CHAT, "max_tokens": 3}, timeout=60)
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        # Its workbench: an uploaded file, an evaluation and a finished run of it.
        client = OpenAI(base_url=single.base + "/v1", api_key=key, max_retries=0, timeout=120)
        lines = [{"item": {"answer": "Paris"}, "sample": {"output_text": text}} for text in ("Paris", "paris", "Lyon")]
        content = "\n".join(json.dumps(line) for line in lines).encode()
        uploaded = client.files.create(file=("moved.jsonl", content), purpose="evals")
        evaluation = client.evals.create(
            name="moved", testing_criteria=[{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}],
            data_source_config={"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True})
        run = client.evals.runs.create(evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": uploaded.id}})
        wait_until(lambda: client.evals.runs.retrieve(run.id, eval_id=evaluation.id).status == "completed", 60, "the run to complete")
    finally:
        single.proc.send_signal(signal.SIGTERM)
        assert single.proc.wait(timeout=30) == 0
    env = {**os.environ, "CORRAL_TEST_PGPASSWORD": PASSWORD}
    migrate = subprocess.run([CORRAL, "store", "migrate", "--url", pg.url, "--password-env", "CORRAL_TEST_PGPASSWORD"],
                             capture_output=True, text=True, env=env)
    assert migrate.returncode == 0 and "pg1-accounts, pg2-quotas-and-nodes" in migrate.stdout, migrate.stdout + migrate.stderr
    copy = subprocess.run([CORRAL, "store", "copy", "--from", f"sqlite:{single.directory}/data/corral.sqlite", "--to", pg.url,
                           "--password-env", "CORRAL_TEST_PGPASSWORD"], capture_output=True, text=True, env=env)
    assert copy.returncode == 0, copy.stderr
    copied = json.loads(copy.stdout)["copied"]
    assert copied["teams"] == 1 and copied["ledgerRows"] >= 1, copy.stdout
    assert (copied["files"], copied["evals"], copied["jobs"], copied["evalOutputItems"]) == (1, 1, 1, 3), copy.stdout
    assert copied["jobEvents"] > 0, copy.stdout
    # The cluster's own admin token stays (the copy keeps the destination's).
    assert httpx.get(nodes["a"].base + "/admin/cluster", headers=admin(nodes)).status_code == 200
    # The moved key works on every node once the copy's change notice arrives.
    wait_until(lambda: chat(nodes["c"], key).status_code == 200, 3, "the copied key to work on C")
    assert pg.query(f"SELECT status FROM usage WHERE request_id = '{request_id}'") == "200"
    # Its file, evaluation and run are every node's now (the bytes came from its files folder).
    moved = OpenAI(base_url=nodes["b"].base + "/v1", api_key=key, max_retries=0, timeout=120)
    assert moved.files.content(uploaded.id).content == content
    done = moved.evals.runs.retrieve(run.id, eval_id=evaluation.id)
    assert done.status == "completed" and (done.result_counts.passed, done.result_counts.failed) == (1, 2), done
    assert [i.datasource_item_id for i in moved.evals.runs.output_items.list(run.id, eval_id=evaluation.id)] == [0, 1, 2]
    events = httpx.get(nodes["c"].base + f"/admin/jobs/{run.id}/events", headers=admin(nodes), timeout=10).text
    assert '"completed"' in events or "succeeded" in events, events[:300]
    # Copying again adds nothing twice.
    again = subprocess.run([CORRAL, "store", "copy", "--from", f"sqlite:{single.directory}/data/corral.sqlite", "--to", pg.url,
                            "--password-env", "CORRAL_TEST_PGPASSWORD"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    copied = json.loads(again.stdout)["copied"]
    assert (copied["teams"], copied["files"], copied["evals"], copied["jobs"], copied["documents"]) == (0, 0, 0, 0, 0), again.stdout
    assert pg.query(f"SELECT COUNT(*) FROM usage WHERE request_id = '{request_id}'") == "1"
    stop_corral(single)


@pytest.mark.slow
def test_postgres_restarted_under_load_fails_cleanly_and_recovers(cluster):
    pg, nodes = cluster
    _, key = team_with_key(nodes, "restart", tokensPerMinute=1_000_000)
    statuses: list[tuple[int, str | None, str | None]] = []
    stop = time.time() + 10

    def traffic(node):
        while time.time() < stop:
            try:
                r = chat(node, key, max_tokens=2, timeout=30)
                statuses.append((r.status_code, r.headers.get("retry-after"), r.headers.get("x-request-id")))
            except httpx.HTTPError as e:
                statuses.append((-1, None, f"{type(e).__name__}: {e}"))
            time.sleep(0.02)

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        running = [pool.submit(traffic, nodes[n]) for n in ("a", "b", "c")]
        wait_until(lambda: sum(1 for s, _, _ in statuses if s == 200) >= 6, 10, "traffic answered before the stop")
        # Down for four seconds (twice the admission deadline), then up again.
        pg.stop("fast")
        time.sleep(4)
        pg.start()
        for f in running:
            f.result()
    codes = {s for s, _, _ in statuses}
    assert codes <= {200, 503}, [x for x in statuses if x[0] not in (200, 503)]
    refused = [(s, ra) for s, ra, _ in statuses if s == 503]
    assert refused and all(ra and int(ra) >= 1 for _, ra in refused), refused[:5]
    # Recovered by themselves: the last requests of every node succeeded, no node died.
    assert all(n.proc.poll() is None for n in nodes.values())
    for n in nodes.values():
        wait_until(lambda: chat(n, key, max_tokens=2).status_code == 200, 10, f"{n.name} to serve again")
    # Every answered request has its ledger row (rows waited in memory while the store was down).
    answered = [rid for s, _, rid in statuses if s == 200]
    ids = ",".join(f"'{r}'" for r in answered)
    wait_until(lambda: pg.query(f"SELECT COUNT(*) FROM usage WHERE request_id IN ({ids})") == str(len(answered)), 10, "every answered row")
    # And every reservation settled: the settlements that waited for the store were written.
    team = httpx.get(nodes["a"].base + "/admin/teams/restart", headers=admin(nodes)).json()["id"]
    wait_until(lambda: httpx.get(nodes["b"].base + f"/admin/teams/{team}", headers=admin(nodes)).json()["usage"]["inFlight"] == 0, 10,
             "no reservation left in flight")
    assert pg.query("SELECT COUNT(*) FROM quota_lease WHERE state = 'live'") == "0"


@pytest.mark.slow
def test_kill_minus_9_of_a_node_releases_its_reservations_and_loses_no_row(cluster):
    pg, nodes = cluster
    team, key = team_with_key(nodes, "crash", tokensPerMinute=1_000_000)
    victim = nodes["c"]
    h = admin(nodes)
    assert httpx.post(victim.base + "/admin/models/chat/load", headers=h, timeout=60).status_code == 200
    # `solo` on C only, so that A relays its streams there.
    for n in nodes.values():
        assert httpx.post(n.base + "/admin/models/solo/unload", headers=h).status_code == 200
    assert httpx.post(victim.base + "/admin/models/solo/load", headers=h, timeout=60).status_code == 200
    wait_until(lambda: [x["name"] for x in cluster_view(nodes["a"], nodes)["nodes"] if any(m["model"] == "solo" for m in x["models"])] == ["c"],
             5, "A to see solo on C only")
    wait_for_fresh_reading(pg, "a")  # A routes on its last heartbeat's reading
    relayed: dict = {}
    completed: list[str] = []
    done = {"stop": False}

    other: list = []

    def short_requests():
        while not done["stop"]:
            try:
                r = chat(victim, key, max_tokens=2, timeout=30)
                if r.status_code == 200:
                    completed.append(r.headers["x-request-id"])
                else:
                    other.append((r.status_code, r.text[:200]))
            except httpx.HTTPError as e:
                if done["stop"] or victim.proc.poll() is not None:
                    return
                other.append(repr(e))

    def long_stream():
        try:
            with httpx.stream("POST", victim.base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                              json={"model": "chat", **CHAT, "max_tokens": 900, "stream": True}, timeout=30) as s:
                for _ in s.iter_bytes():
                    pass
        except httpx.HTTPError:
            pass

    def relayed_stream():
        # Sent to A, served by C: when C dies mid-stream, A ends it with an error event.
        wait_until(lambda: len(completed) >= 3 or (other and print(other[-3:])), 30, "answered requests on C")
        with httpx.stream("POST", nodes["a"].base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={"model": "solo", **CHAT, "max_tokens": 900, "stream": True}, timeout=60) as s:
            relayed["status"] = s.status_code
            chunks = []
            for chunk in s.iter_text():
                chunks.append(chunk)
                if not relayed.get("started"):
                    # C dies while it streams this answer (kill -9 at its first bytes).
                    relayed["started"] = True
                    victim.proc.send_signal(signal.SIGKILL)
            relayed["body"] = "".join(chunks)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        workers = [pool.submit(short_requests), pool.submit(long_stream), pool.submit(long_stream), pool.submit(relayed_stream)]
        wait_until(lambda: relayed.get("started"), 40, "a relayed stream under way, and C killed")
        victim.proc.wait()
        done["stop"] = True
        for w in workers:
            w.result()
    assert completed
    assert relayed["status"] == 200 and relayed["body"].count("data: ") >= 2, relayed
    last = [line for line in relayed["body"].splitlines() if line.startswith("data: ")][-1]
    assert '"error"' in last and "[DONE]" not in relayed["body"], last
    # Out of routing once its heartbeat is stale.
    view = wait_until(lambda: (v := cluster_view(nodes["a"], nodes)) and not next(x for x in v["nodes"] if x["name"] == "c")["inRouting"] and v,
                    6, "C out of routing")
    assert next(x for x in view["nodes"] if x["name"] == "a")["inRouting"]
    # Its reservations are released when their lease ends (15 s) and every request it answered
    # has a ledger row: its own, or one written for it by a live node (node_lost).
    wait_until(lambda: httpx.get(nodes["a"].base + f"/admin/teams/{team}", headers=admin(nodes)).json()["usage"]["inFlight"] == 0, 25,
             "C's reservations to be released")
    ids = ",".join(f"'{r}'" for r in completed)
    wait_until(lambda: pg.query(f"SELECT COUNT(*) FROM usage WHERE request_id IN ({ids})") == str(len(completed)), 25, "every answered row")
    # New requests avoid C: served by A or B.
    for n in ("a", "b"):
        r = chat(nodes[n], key, max_tokens=2)
        assert r.status_code == 200, r.text
        row = wait_until(lambda: pg.query(f"SELECT COALESCE(node, '') FROM usage WHERE request_id = '{r.headers['x-request-id']}'"), 5, "the row")
        assert row in ("a", "b"), row


def test_drain_finishes_in_flight_requests_then_leaves(cluster):
    pg, nodes = cluster
    _, key = team_with_key(nodes, "drain")
    node = nodes["b"]
    assert httpx.post(node.base + "/admin/models/chat/load", headers=admin(nodes), timeout=60).status_code == 200
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        answering = threading.Event()

        def stream():
            with httpx.stream("POST", node.base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                              json={"model": "chat", **CHAT, "max_tokens": 600, "stream": True}, timeout=60) as s:
                answering.set()
                return s.status_code, "".join(s.iter_text())
        running = pool.submit(stream)
        assert answering.wait(60), "the stream to be answering before the drain"
        drained = subprocess.run([CORRAL, "drain", "--url", node.base, "--token", nodes["a"].admin_token], capture_output=True, text=True)
        assert drained.returncode == 0 and '"draining"' in drained.stdout, drained.stdout + drained.stderr
        status, body = running.result()
    assert status == 200 and body.rstrip().endswith("data: [DONE]")
    assert node.proc.wait(timeout=30) == 0
    view = cluster_view(nodes["a"], nodes)
    assert {x["name"] for x in view["nodes"]} == {"a", "c"}
    assert chat(nodes["a"], key).status_code == 200
