"""Cluster nodes for models split over RPC workers (issue 35): nodes that offer their CPU as an RPC
worker (`cluster.rpc`) and nodes with a memory budget too small for a model, on one PostgreSQL."""
import os
import shutil
import tempfile

from corral_harness import cluster
from corral_harness import corral as harness
from corral_harness.corral import Corral
from corral_harness.postgres import Postgres


def rpc_server_available() -> bool:
    """Whether ggml-rpc-server was built (scripts/install-llama.sh)."""
    try:
        harness.llama_tool("ggml-rpc-server")
        return True
    except BaseException:  # pytest.fail when missing
        return False


def start_node(pg: Postgres, name: str, model: str | None = None, rpc_port: int | None = None, worker_mib: int | None = None,
               budget: int | None = None, context: int = 1024) -> Corral:
    """A cluster node on a free port: with `model` (a GGUF path, copied) served as `big`; with
    `rpc_port` an RPC worker offering `worker_mib`; with `budget` that memory budget. No prompt
    cache (`cache.ramMiB` 0), so the budget is the model's."""
    d = tempfile.mkdtemp(prefix=f"corral-rpc-{name}-")
    models = []
    if model:
        shutil.copy(model, f"{d}/big.gguf")
        models.append({"name": "big", "path": f"{d}/big.gguf", "contextSize": context, "parallel": 1})
    extra = {"cache": {"ramMiB": 0}}
    if rpc_port:
        extra["cluster"] = {"rpc": {"port": rpc_port, **({"memoryMiB": worker_mib} if worker_mib else {})}}
    if budget:
        extra["scheduler"] = {"memoryBudgetMiB": budget}
    return cluster.start_node(pg, name, extra=extra, directory=d, model_entries=models)


def reservations(pg: Postgres) -> dict[str, int]:
    """MiB reserved per worker in the registry."""
    rows = pg.query("SELECT worker || '=' || SUM(mib) FROM rpc_reservation GROUP BY worker ORDER BY worker")
    return {k: int(v) for k, v in (line.split("=") for line in rows.splitlines() if line)}


def stop_nodes(nodes) -> None:
    """Kills the nodes (their children die with them) and deletes their folders."""
    for n in nodes:
        if n.proc.poll() is None:
            n.proc.kill()
            n.proc.wait()
        if not os.environ.get("CORRAL_KEEP_NODES"):
            shutil.rmtree(n.directory, ignore_errors=True)
