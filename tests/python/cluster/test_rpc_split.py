"""A model split over machines with llama.cpp's RPC (issue 35, parts 1 and 2), with real processes
on loopback: two Corral nodes offer their CPUs as RPC workers (`cluster.rpc`: a real
ggml-rpc-server each behind Corral's gate), two nodes with a budget too small for a model load it
across them, all on one real PostgreSQL.

- the split model answers at temperature 0 exactly as the same file loaded whole by a single Corral;
- /admin/instances says where each part runs; the registry holds the workers' reservations;
- a non-member connecting to a worker's port is refused before a byte reaches the RPC server;
- killing a worker's ggml-rpc-server stops the instance; the next request plans again and answers;
- two nodes planning at once never get the same worker memory: one loads, the other is refused.
"""
import os
import shutil
import signal
import socket
import tempfile
import threading
import time

import httpx
import pytest

from corral_harness import corral as harness
from corral_harness.corral import Corral, child_pids, make_model, start_corral, stop_corral
from corral_harness.postgres import Postgres
from corral_harness.rpc_cluster import reservations, rpc_server_available, start_node, stop_nodes
from corral_harness.waiting import wait_until

pytestmark = pytest.mark.cluster

# 8 layers of about 4 MiB (43 MiB in all: 30 of weights, 4 of KV cache, 9 of compute buffer): big enough
SHAPE = "embd=256,layers=8,heads=4,kv=2,ff=1024,ctx=1024"
# The loading nodes' budget holds the host's part (embeddings, output, compute buffer) and a few
# layers, not the whole model; each worker offers enough for one split, not two.
BUDGET_MIB = int(os.environ.get("CORRAL_TEST_SPLIT_BUDGET", "20"))
WORKER_MIB = int(os.environ.get("CORRAL_TEST_SPLIT_WORKER", "30"))
ASK = {"messages": [{"role": "user", "content": "tell me"}], "max_tokens": 24, "temperature": 0, "seed": 1}


@pytest.fixture(scope="module")
def cluster():
    if not rpc_server_available():
        pytest.skip("ggml-rpc-server not built (scripts/install-llama.sh)")
    models = tempfile.mkdtemp(prefix="corral-rpc-model-")
    path = make_model(models, "big", SHAPE)
    pg = Postgres()
    nodes: dict[str, Corral] = {}
    whole = None
    try:
        for name in ("w1", "w2"):
            nodes[name] = start_node(pg, name, rpc_port=harness.free_port(), worker_mib=WORKER_MIB)
        for name in ("main", "main2"):
            nodes[name] = start_node(pg, name, model=path, budget=BUDGET_MIB)
        whole = start_corral(extra_models=[{"name": "big", "path": path, "contextSize": 1024, "parallel": 1}], extra_config={"cache": {"ramMiB": 0}})
        ADMIN[:] = [nodes["w1"].admin_token]
        wait_until(lambda: pg.query("SELECT COUNT(*) FROM rpc_worker") == "2", 20, "both workers in the registry")
        yield pg, nodes, whole
    finally:
        if whole:
            stop_corral(whole)
        stop_nodes(nodes.values())
        pg.close()
        shutil.rmtree(models, ignore_errors=True)


def admin(node: Corral) -> dict:
    """The cluster's admin token (written by the first node, w1; it works on every node)."""
    return {"authorization": f"Bearer {node.admin_token if os.path.exists(node.directory + '/data/admin-token') else ADMIN[0]}"}


ADMIN: list[str] = []


def chat(node: Corral, timeout: float = 120):
    return httpx.post(node.base + "/v1/chat/completions", json={"model": "big", **ASK}, timeout=timeout)


def instance(node: Corral) -> dict | None:
    return next((i for i in httpx.get(node.base + "/admin/instances", headers=admin(node)).json() if i["model"] == "big"), None)


def rpc_server_pid(node: Corral) -> int:
    pids = child_pids(node, "ggml-rpc-server")
    assert len(pids) == 1, pids
    return pids.pop()


def test_a_model_too_large_for_the_node_answers_split_over_two_workers_as_it_does_whole(cluster):
    pg, nodes, whole = cluster
    reference = chat(whole)
    assert reference.status_code == 200, reference.text
    r = chat(nodes["main"])
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == reference.json()["choices"][0]["message"]["content"]
    assert r.json()["usage"]["completion_tokens"] == reference.json()["usage"]["completion_tokens"]

    # Where each part runs: this node's RAM and both workers, by layers and MiB.
    info = instance(nodes["main"])
    assert info["state"] == "loaded", info
    parts = {p["node"]: p for p in info["split"]}
    assert set(parts) == {"Host", "w1", "w2"}, info["split"]
    assert sum(p["layers"] for p in info["split"]) == 8
    assert parts["w1"]["layers"] > 0 and parts["w2"]["layers"] > 0
    assert "--rpc" in info["arguments"]
    assert info["projectedMiB"] <= BUDGET_MIB
    # The workers' memory is reserved in the registry for it, within what they offer.
    held = reservations(pg)
    assert held == {"w1": parts["w1"]["memoryMiB"], "w2": parts["w2"]["memoryMiB"]}, held
    assert all(v <= WORKER_MIB for v in held.values())


def test_a_non_member_connecting_to_a_worker_is_refused(cluster):
    pg, nodes, _ = cluster
    endpoint = pg.query("SELECT endpoint FROM rpc_worker WHERE node = 'w1'")
    host, port = endpoint.rsplit(":", 1)
    refused_before = nodes["w1"].log().count("refused a connection to the RPC worker")
    # Speaks llama.cpp's RPC directly, as an unauthenticated client would: a HELLO command.
    with socket.create_connection((host, int(port)), timeout=10) as s:
        challenge = b""
        while len(challenge) < 32:
            chunk = s.recv(32 - len(challenge))
            assert chunk, "closed before the challenge"
            challenge += chunk
        s.sendall(bytes([14]) + (0).to_bytes(8, "little") + bytes(23))  # not an answer to the challenge
        s.settimeout(10)
        try:
            answer = s.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b"", "the RPC server answered a non-member"
    wait_until(lambda: nodes["w1"].log().count("refused a connection to the RPC worker") > refused_before, 5, "the refusal in w1's log")
    # A connection that never answers is dropped too (after 5 s).
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.settimeout(10)
        got = b""
        started = time.time()
        while True:
            chunk = s.recv(100)
            if not chunk:
                break
            got += chunk
        assert len(got) == 32 and time.time() - started < 9


def test_killing_a_worker_fails_the_instance_and_the_next_request_plans_again(cluster):
    pg, nodes, whole = cluster
    if (instance(nodes["main"]) or {}).get("state") != "loaded":
        assert chat(nodes["main"]).status_code == 200
    expected = chat(whole).json()["choices"][0]["message"]["content"]
    crashes = instance(nodes["main"])["crashes"]
    os.kill(rpc_server_pid(nodes["w1"]), signal.SIGKILL)
    # The instance stops (a lost worker, counted like a crash) and its reservations are given back.
    info = wait_until(lambda: (i := instance(nodes["main"]))["state"] != "loaded" and i, 15, "the split instance to stop")
    assert info["crashes"] == crashes + 1
    assert "RPC worker lost" in (info["lastError"] or ""), info
    wait_until(lambda: reservations(pg) == {}, 10, "the reservations released")
    assert "an RPC worker of a split model went away" in nodes["main"].log()
    # w1 starts its worker again; the next request plans the model again and answers the same.
    wait_until(lambda: len(child_pids(nodes["w1"], "ggml-rpc-server")) == 1, 15, "w1's worker again")
    wait_until(lambda: float(pg.query("SELECT EXTRACT(EPOCH FROM clock_timestamp()) - heartbeat FROM rpc_worker WHERE node = 'w1'") or 99) < 1.5,
               15, "w1's worker back in the registry")
    r = chat(nodes["main"])
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == expected
    assert instance(nodes["main"])["split"]


def test_two_nodes_planning_at_once_never_get_the_same_worker_memory(cluster):
    pg, nodes, _ = cluster
    for name in ("main", "main2"):
        httpx.post(nodes[name].base + "/admin/models/big/unload", headers=admin(nodes[name]), timeout=60)
    wait_until(lambda: reservations(pg) == {}, 10, "no reservation left")
    # Watch the registry while both load: a worker's reservations never exceed what it offers.
    peak: dict[str, int] = {}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for worker, mib in reservations(pg).items():
                peak[worker] = max(peak.get(worker, 0), mib)
            time.sleep(0.02)
    watcher = threading.Thread(target=watch)
    watcher.start()
    results = {}

    def load(name):
        results[name] = httpx.post(nodes[name].base + "/admin/models/big/load", headers=admin(nodes[name]), timeout=120)
    threads = [threading.Thread(target=load, args=(n,)) for n in ("main", "main2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    statuses = sorted(r.status_code for r in results.values())
    assert statuses[0] < 300 and statuses[1] >= 400, {n: (r.status_code, r.text) for n, r in results.items()}
    assert all(mib <= WORKER_MIB for mib in peak.values()), peak
    loaded = [n for n in ("main", "main2") if (instance(nodes[n]) or {}).get("state") == "loaded"]
    assert len(loaded) == 1, loaded
    refused = next(n for n in ("main", "main2") if n not in loaded)
    assert "cannot be split over RPC workers" in nodes[refused].log()
