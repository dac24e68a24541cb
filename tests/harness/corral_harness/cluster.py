"""Corral nodes of one cluster on loopback ports, sharing a real PostgreSQL."""
import json
import os
import subprocess
import tempfile

from corral_harness import corral as harness
from corral_harness.corral import Corral, free_port, serve
from corral_harness.postgres import PASSWORD, Postgres

SECRET = "a-cluster-secret-for-the-tests-0123456789"


def start_node(pg: Postgres, name: str, models=("chat", "solo"), extra: dict | None = None, directory: str | None = None) -> Corral:
    """A Corral node named `name` on a free port, its store on `pg`, with tiny generated models."""
    d = directory or tempfile.mkdtemp(prefix=f"corral-node-{name}-")
    for model in models:
        if not os.path.exists(f"{d}/{model}.gguf"):
            subprocess.run([harness.CORRAL, "models", "make-test", "--out", d, "--name", model], check=True, capture_output=True)
    port = free_port()
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "dataDirectory": f"{d}/data",
        "models": [{"name": m, "path": f"{d}/{m}.gguf", "contextSize": 1024, "parallel": 2} for m in models],
        "store": {"url": pg.url, "passwordEnv": "CORRAL_TEST_PGPASSWORD"},
        "cluster": {"nodeName": name, "advertiseURL": f"http://127.0.0.1:{port}", "secretEnv": "CORRAL_TEST_CLUSTER_SECRET"},
        **(extra or {}),
    }
    with open(f"{d}/routes.json", "w") as f:
        json.dump(config, f)
    os.environ["CORRAL_TEST_PGPASSWORD"] = PASSWORD
    os.environ["CORRAL_TEST_CLUSTER_SECRET"] = SECRET
    log_path = f"{d}/corral.log"
    base = f"http://127.0.0.1:{port}"
    node = Corral(d, port, serve(d, base, None, (), log_path, "a"), log_path)
    node.name = name
    return node
