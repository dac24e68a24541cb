"""Starts real Corral binaries on free loopback ports with generated models, and finds the
processes they start. Shared by the Python tests (tests/python) and the benchmark scripts
(scripts/): nothing here looks at processes machine-wide, so two runs on one machine do not
see each other's."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import httpx
import pytest

from corral_harness.waiting import wait_until  # noqa: F401 (the tests import it from here too)

CORRAL = os.path.abspath(os.environ.get("CORRAL_BIN", ".build/debug/corral"))


def use_binary(path: str):
    """Points every helper here at the Corral binary `path` (the benchmarks use a release build)."""
    global CORRAL
    CORRAL = os.path.abspath(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_gone(pid: int, seconds: float) -> bool:
    """Whether process `pid` exits (or is a zombie) within `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def llama_server_pids(c: "Corral") -> set[int]:
    """The llama-server processes Corral `c` started (its children), so two test runs on one
    machine never see each other's."""
    return child_pids(c, "llama-server")


def child_pids(c: "Corral", name: str) -> set[int]:
    """The processes named `name` whose parent is Corral `c`."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                comm, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        if comm.endswith("(" + name[:15]) and int(rest.split()[1]) == c.proc.pid:
            pids.add(int(entry))
    return pids


class Corral:
    def __init__(self, directory: str, port: int, proc: subprocess.Popen, log_path: str):
        self.directory, self.port, self.proc, self.log_path = directory, port, proc, log_path
        self.base = f"http://127.0.0.1:{port}"

    @property
    def admin_token(self) -> str:
        with open(f"{self.directory}/data/admin-token") as f:
            return f.read().strip()

    def headers(self, path: str) -> dict:
        """The admin token for operator routes (/admin, Corral's own /metrics)."""
        if path.startswith("/admin") or path.startswith("/metrics"):
            return {"authorization": f"Bearer {self.admin_token}"}
        return {}

    def get(self, path: str):
        req = urllib.request.Request(self.base + path, headers=self.headers(path))
        with urllib.request.urlopen(req, timeout=10, context=getattr(self, "ssl_context", None)) as r:
            return json.load(r)

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json", **self.headers(path)})
        with urllib.request.urlopen(req, timeout=30, context=getattr(self, "ssl_context", None)) as r:
            return json.load(r)

    def children(self) -> list[int]:
        return [i["pid"] for i in self.get("/admin/instances") if i.get("pid")]

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed localhost certificate generated for this test run."""
    cert, key = f"{directory}/server.crt", f"{directory}/server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


def make_model(directory: str, name: str, shape: str = "") -> str:
    """Generates a tiny GGUF model with `corral models make-test`; returns its path."""
    args = [CORRAL, "models", "make-test", "--out", directory, "--name", name]
    if shape:
        args += ["--shape", shape]
    subprocess.run(args, check=True, capture_output=True)
    return f"{directory}/{name}.gguf"


def llama_tool(name: str) -> str:
    """A llama.cpp tool where Corral finds it: the build cache, else PATH."""
    root = os.environ.get("CORRAL_LLAMA_CACHE", os.path.expanduser("~/.cache/corral/llama.cpp"))
    cached = os.path.join(root, os.environ.get("LLAMA_CPP_VERSION", "11434.0.0"), "bin", name)
    return cached if os.path.exists(cached) else (shutil.which(name) or pytest.fail(f"{name} not found"))


def start_corral(extra_models=(), scheduler=None, tls=False, extra_config=None, directory=None, serve_args=()) -> Corral:
    if not os.path.exists(CORRAL):
        pytest.fail(f"corral binary not found at {CORRAL}: run `swift build` first")
    if shutil.which("llama-server") is None and not os.path.exists(
        os.path.expanduser(f"~/.cache/corral/llama.cpp/{os.environ.get('LLAMA_CPP_VERSION', '11434.0.0')}/bin/llama-server")
    ) and not os.environ.get("CORRAL_LLAMA_CACHE"):
        if os.environ.get("CI") == "true":
            pytest.fail("llama-server missing under CI")
        pytest.skip("llama.cpp tools not built")
    d = directory or tempfile.mkdtemp(prefix="corral-py-")
    subprocess.run([CORRAL, "models", "make-test", "--out", d, "--name", "chat", "--shape", "fim=true"], check=True, capture_output=True)
    subprocess.run([CORRAL, "models", "make-test", "--out", d, "--name", "embed", "--shape", "embedding=true"], check=True, capture_output=True)
    models = [
        {"name": "chat", "path": f"{d}/chat.gguf", "aliases": ["chat-alias"], "contextSize": 2048, "parallel": 2},
        {"name": "embed", "path": f"{d}/embed.gguf", "contextSize": 1024, "parallel": 2},
    ] + list(extra_models)
    config = {"listen": {"host": "127.0.0.1"}, "dataDirectory": f"{d}/data", "models": models}
    if scheduler:
        config["scheduler"] = scheduler
    for key, value in (extra_config or {}).items():
        # Objects merge with what is set above (e.g. listen.idleTimeout next to host and port).
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    scheme, context = "http", None
    if tls:
        import ssl
        cert, key = make_certificate(d)
        config["tls"] = {"certificate": cert, "key": key}
        scheme, context = "https", ssl.create_default_context(cafile=cert)
    log_path = f"{d}/corral.log"

    def attempt(port: int) -> subprocess.Popen:
        config["listen"]["port"] = port
        with open(f"{d}/routes.json", "w") as f:
            json.dump(config, f)
        return serve(d, f"{scheme}://127.0.0.1:{port}", context, serve_args, log_path, "w")

    port, proc = on_a_free_port(attempt)
    c = Corral(d, port, proc, log_path)
    c.base = f"{scheme}://127.0.0.1:{port}"
    c.ssl_context = context
    return c


def on_a_free_port(start, tries: int = 3):
    """Calls `start(port)` with a free port, again with another when the port was taken between
    free_port() and the server's bind (another test run on the machine took it); (port, result)."""
    for attempt in range(tries):
        port = free_port()
        try:
            return port, start(port)
        except RuntimeError as e:
            if "already in use" not in str(e) or attempt == tries - 1:
                raise


def serve(directory: str, base: str, context, serve_args, log_path: str, log_mode: str) -> subprocess.Popen:
    """Runs `corral serve` on `directory/routes.json` and returns once `/health` answers."""
    log = open(log_path, log_mode)
    proc = subprocess.Popen([CORRAL, "serve", "--config", f"{directory}/routes.json", *serve_args], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=1, context=context)
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("corral did not start:\n" + open(log_path).read())


def restart_corral(c: Corral):
    """Stops `c` with SIGTERM (it must exit 0) and serves the same directory again."""
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(timeout=30) == 0
    c.proc = serve(c.directory, c.base, getattr(c, "ssl_context", None), (), c.log_path, "a")


def terminate(proc: subprocess.Popen, grace: float = 20):
    """SIGTERM, then SIGKILL after `grace` seconds; returns once the process is reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_corral(c: Corral):
    """Stops `c` and deletes its folder; a Corral that died by itself before (a crash: an exit
    status other than 0, or a signal the test did not send, SIGKILL and SIGTERM aside) keeps its
    folder, its log included, and says where on stderr."""
    status = c.proc.poll()
    terminate(c.proc)
    if status not in (None, 0, -signal.SIGKILL, -signal.SIGTERM):
        print(f"corral (pid {c.proc.pid}) had exited with status {status} before it was stopped; its folder and log are kept: "
              f"{c.directory}", file=sys.stderr)
        return
    shutil.rmtree(c.directory, ignore_errors=True)


def wait_job(c: Corral, job_id: str, seconds: float = 300) -> dict:
    """Polls `/admin/jobs/{id}` (admin token in `c.h`) until the job ends; the job."""
    deadline = time.time() + seconds
    while True:
        job = httpx.get(c.base + f"/admin/jobs/{job_id}", headers=c.h).json()
        if job["state"] in ("succeeded", "failed", "cancelled", "interrupted"):
            return job
        assert time.time() < deadline, job
        time.sleep(0.1)


def corral_with_model(directory: str, name: str, shape: str, **model) -> Corral:
    """A Corral (admin token in `h`) that also serves a generated model `name` of `shape`, with
    `model`'s other routes.json fields (contextSize, parallel, …)."""
    path = make_model(directory, name, shape)
    c = start_corral(extra_models=[{"name": name, "path": path, **model}])
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    return c


def team_keys(c: Corral, *names: str) -> dict:
    """Creates one team per name, each with a key: {name: (team id, key)}."""
    admin = {"authorization": f"Bearer {c.admin_token}"}
    made = {}
    for name in names:
        team = httpx.post(c.base + "/admin/teams", headers=admin, json={"name": name}).json()
        made[name] = (team["id"], httpx.post(c.base + f"/admin/teams/{team['id']}/keys", headers=admin, json={}).json()["key"])
    return made


def admin_get(c: Corral, path: str, status: int = 200, headers=None):
    """GET an admin route with the admin token (`c.h`), asserting the status; its JSON."""
    r = httpx.get(c.base + path, headers={**c.h, **(headers or {})}, timeout=60)
    assert r.status_code == status, (path, r.status_code, r.text[:300])
    return r.json()


def admin_post(c: Corral, path: str, body=None, status: int = 200):
    """POST to an admin route with the admin token (`c.h`), asserting the status; its JSON."""
    r = httpx.post(c.base + path, headers=c.h, json=body, timeout=60)
    assert r.status_code == status, (path, r.status_code, r.text[:300])
    return r.json()


def admin_cli(c: Corral, *args):
    """Runs a `corral` admin command against `c`; its JSON output."""
    out = subprocess.run([CORRAL, *args, "--url", c.base, "--token", c.admin_token], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
