"""Corral nodes of one cluster on loopback ports, sharing a real PostgreSQL."""
import contextlib
import json
import os
import subprocess
import tempfile

from corral_harness import corral as harness
from corral_harness.corral import Corral, on_a_free_port, serve
from corral_harness.postgres import PASSWORD, Postgres
from corral_harness.waiting import wait_until

SECRET = "a-cluster-secret-for-the-tests-0123456789"


def start_node(pg: Postgres, name: str, models=("chat", "solo"), extra: dict | None = None, directory: str | None = None,
               model_entries: list | None = None) -> Corral:
    """A Corral node named `name` on a free port, its store on `pg`, with tiny generated models
    (or the `models` entries given in `model_entries`). Objects in `extra` merge with the
    configuration's (e.g. `cluster.rpc` next to the node's name)."""
    d = directory or tempfile.mkdtemp(prefix=f"corral-node-{name}-")
    for model in models if model_entries is None else ():
        if not os.path.exists(f"{d}/{model}.gguf"):
            subprocess.run([harness.CORRAL, "models", "make-test", "--out", d, "--name", model], check=True, capture_output=True)
    os.environ["CORRAL_TEST_PGPASSWORD"] = PASSWORD
    os.environ["CORRAL_TEST_CLUSTER_SECRET"] = SECRET
    log_path = f"{d}/corral.log"

    def attempt(port: int):
        config = {
            "listen": {"host": "127.0.0.1", "port": port},
            "dataDirectory": f"{d}/data",
            "models": model_entries if model_entries is not None else
            [{"name": m, "path": f"{d}/{m}.gguf", "contextSize": 1024, "parallel": 2} for m in models],
            "store": {"url": pg.url, "passwordEnv": "CORRAL_TEST_PGPASSWORD"},
            "cluster": {"nodeName": name, "advertiseURL": f"http://127.0.0.1:{port}", "secretEnv": "CORRAL_TEST_CLUSTER_SECRET"},
        }
        for key, value in (extra or {}).items():
            config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
        with open(f"{d}/routes.json", "w") as f:
            json.dump(config, f)
        return serve(d, f"http://127.0.0.1:{port}", None, (), log_path, "a")

    port, proc = on_a_free_port(attempt)
    node = Corral(d, port, proc, log_path)
    node.name = name
    return node


def wait_for_fresh_reading(pg: Postgres, node: str, seconds: float = 10):
    """Returns once node `node` has read the registry after this call began. A node routes on
    its last heartbeat's reading of its peers, so what a test has just seen in the registry
    (a model loaded on a peer) reaches that node's routing only then. A heartbeat writes the
    node's row, then reads its peers; so the heartbeat after the first one written after now
    means that reading is in place."""
    now = float(pg.query("SELECT EXTRACT(EPOCH FROM clock_timestamp())"))

    def heartbeat() -> float:
        return float(pg.query(f"SELECT heartbeat FROM cluster_node WHERE name = '{node}'") or 0)

    first = wait_until(lambda: (h := heartbeat()) > now and h, seconds, f"a heartbeat of {node} after now")
    wait_until(lambda: heartbeat() > first, seconds, f"the heartbeat of {node} after that one")


@contextlib.contextmanager
def running_cluster(nodes: dict[str, dict]):
    """A PostgreSQL server and a node per entry of `nodes` (name → `start_node`'s keyword
    arguments), started in order; yields `(pg, {name: node})`, then kills the nodes and stops the
    server."""
    pg = Postgres()
    started: dict[str, Corral] = {}
    try:
        for name, options in nodes.items():
            started[name] = start_node(pg, name, **options)
        yield pg, started
    finally:
        for n in started.values():
            if n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait()
        pg.close()
