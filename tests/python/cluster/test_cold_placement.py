"""Cold loads placed across a cluster by free memory (issue 35, part 3): three nodes on one real
PostgreSQL with memory budgets of 3, 6 and 12 GiB. A request for a model no node has loaded,
sent to the smallest, loads it on the roomiest and is answered from there; a model only the
receiving node can serve loads there; a peer that cannot load what was placed on it declines and
the receiving node serves the request itself."""
import os

import httpx
import pytest

from corral_harness.cluster import running_cluster, wait_for_fresh_reading
from corral_harness.corral import wait_until

pytestmark = pytest.mark.cluster

BUDGETS = {"small": 3000, "mid": 6000, "big": 12000}
MODELS = {"small": ("cold", "fragile", "mine"), "mid": ("cold", "fragile"), "big": ("cold", "fragile")}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def cluster():
    with running_cluster({name: {"models": MODELS[name], "extra": {"scheduler": {"memoryBudgetMiB": budget}}}
                          for name, budget in BUDGETS.items()}) as running:
        yield running


def admin(nodes) -> dict:
    return {"authorization": f"Bearer {nodes['small'].admin_token}"}


def loaded_on(nodes, model: str) -> set[str]:
    h = admin(nodes)
    return {name for name, n in nodes.items()
            if any(i["model"] == model and i["state"] == "loaded" for i in httpx.get(n.base + "/admin/instances", headers=h).json())}


def team_with_key(nodes, name: str) -> tuple[str, str]:
    h = admin(nodes)
    team = httpx.post(nodes["small"].base + "/admin/teams", headers=h, json={"name": name})
    assert team.status_code == 201, team.text
    key = httpx.post(nodes["small"].base + f"/admin/teams/{team.json()['id']}/keys", headers=h, json={})
    assert key.status_code == 201, key.text
    return team.json()["id"], key.json()["key"]


@pytest.fixture(scope="module")
def key(cluster) -> str:
    return team_with_key(cluster[1], "placement")[1]


def chat(node, key: str, model: str):
    return httpx.post(node.base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json={"model": model, **CHAT}, timeout=60)


def ledger_row(pg, request_id: str) -> str:
    row = wait_until(lambda: pg.query(f"SELECT node, status, completion_tokens FROM usage WHERE request_id = '{request_id}'"), 5, "the ledger row")
    assert pg.query(f"SELECT COUNT(*) FROM usage WHERE request_id = '{request_id}'") == "1"
    return row


def test_a_cold_model_loads_on_the_node_with_the_most_free_memory(cluster, key):
    pg, nodes = cluster
    h = admin(nodes)

    def registry(view):
        named = {x["name"]: x for x in view.get("nodes", [])}
        return set(named) == set(BUDGETS) and all(x.get("serves") and x["memory"]["Host"]["budgetMiB"] == BUDGETS[n] for n, x in named.items())
    wait_until(lambda: registry(httpx.get(nodes["small"].base + "/admin/cluster", headers=h).json()), 15, "the three nodes with their catalogs")
    wait_for_fresh_reading(pg, "small")  # the smallest routes on its reading of its peers' heartbeats

    # Sent to the smallest node, loaded on the roomiest, answered from there.
    r = chat(nodes["small"], key, "cold")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    assert loaded_on(nodes, "cold") == {"big"}
    assert ledger_row(pg, r.headers["x-request-id"]) == "big|200|4"
    # The decision is logged with its reason on the node that made it.
    placed = [line for line in nodes["small"].log().splitlines() if "placing a cold load" in line and "cold" in line]
    assert placed and "big" in placed[-1] and "most free memory" in placed[-1], placed
    # /admin/cluster shows the roomiest's memory taken by it.
    view = httpx.get(nodes["small"].base + "/admin/cluster", headers=h).json()
    assert wait_until(lambda: next(x for x in httpx.get(nodes["mid"].base + "/admin/cluster", headers=h).json()["nodes"]
                                   if x["name"] == "big")["memory"]["Host"]["usedMiB"] > 0, 5, "big's memory in use")
    assert view["relayedFromHere"] >= 1

    # Loaded now: another node relays to it as before, without loading it.
    wait_until(lambda: any(m["model"] == "cold" for x in httpx.get(nodes["mid"].base + "/admin/cluster", headers=h).json()["nodes"]
                           if x["name"] == "big" for m in x["models"]), 5, "mid to see cold loaded on big")
    wait_for_fresh_reading(pg, "mid")
    again = chat(nodes["mid"], key, "cold")
    assert again.status_code == 200, again.text
    assert loaded_on(nodes, "cold") == {"big"}
    assert ledger_row(pg, again.headers["x-request-id"]) == "big|200|4"


def test_a_model_only_the_receiving_node_serves_loads_there(cluster, key):
    pg, nodes = cluster
    wait_for_fresh_reading(pg, "small")
    r = chat(nodes["small"], key, "mine")
    assert r.status_code == 200, r.text
    assert loaded_on(nodes, "mine") == {"small"}
    assert ledger_row(pg, r.headers["x-request-id"]) == "small|200|4"


def test_a_peer_that_cannot_load_what_was_placed_on_it_declines_and_the_request_is_served_here(cluster):
    pg, nodes = cluster
    team, key = team_with_key(nodes, "declined")
    # Its catalog still lists the model (heartbeats say so), but the file is gone: its load fails.
    os.remove(f"{nodes['big'].directory}/fragile.gguf")
    wait_for_fresh_reading(pg, "small")
    r = chat(nodes["small"], key, "fragile")
    assert r.status_code == 200, r.text
    assert loaded_on(nodes, "fragile") == {"small"}
    assert ledger_row(pg, r.headers["x-request-id"]) == "small|200|4"
    # The team is charged once, what the answer used (the reservation follows the request from
    # the declined relay to the local instance).
    usage = r.json()["usage"]
    used = usage["prompt_tokens"] + usage["completion_tokens"]
    wait_until(lambda: (u := httpx.get(nodes["mid"].base + f"/admin/teams/{team}", headers=admin(nodes)).json()["usage"])["inFlight"] == 0 and u,
               5, "the settlement")
    assert httpx.get(nodes["mid"].base + f"/admin/teams/{team}", headers=admin(nodes)).json()["usage"]["tokensToday"] == used
    placed = [line for line in nodes["small"].log().splitlines() if "placing a cold load" in line and "fragile" in line]
    assert placed and "big" in placed[-1], placed
    declined = [line for line in nodes["small"].log().splitlines() if "a peer declined the request; serving here" in line]
    assert declined and "could not be loaded on this node" in declined[-1] and "peer=big" in declined[-1], declined
