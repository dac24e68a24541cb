#!/usr/bin/env python3
"""Gateway overhead under load, and admin queries over a large ledger.

Part 1 (load). An nginx from Debian answers `POST /v1/chat/completions` with a fixed OpenAI chat
completion (usage included) and `GET /v1/models` with a model list, in microseconds, so what is
measured is the gateway in front of it. Systems, all started once and measured interleaved (for
each connection count every system runs once, in an order rotated per connection count):

  direct   nginx itself
  open     Corral, no team (open mode), routes.json `upstreams: [{name, baseURL, models}]`
  keyed    Corral with a team key, no limits
  limits   Corral with a team key whose limits (team's and key's) are never reached
  cluster  Corral node A of a two-node cluster on a throw-away PostgreSQL, a team key as `keyed`;
           the load goes to node A only
  litellm  LiteLLM proxy (one worker, a master key), the upstream as an `openai/` model

Load: `wrk -t1 -cN --latency --timeout 30s -s post.lua` posting the same chat body (with the
Authorization header where the system needs one). Each (system, N) run is three back-to-back wrk
invocations on the same warm server: the first 10 s, the middle, the last 10 s (runs shorter than
30 s split into thirds); wrk reconnects between them. Requests/s is all requests over all three;
p50/p99 are those of the three pieces together (wrk's `done()` writes each piece's quantile
function, every 0.1 % and every 0.01 % above p99; they are merged weighted by requests);
"last/first" compares the last piece's requests/s with the first's. RSS (VmRSS of the process and
its children) is read before the first piece and after the last. Corral's ledger: after the load,
Corral's own request counter (/metrics `corral_requests_total`) is read, Corral gets SIGTERM and
the `usage` rows are counted (SQLite file, or PostgreSQL for the cluster) and compared with the
requests sent (every wrk piece incl. the warm-up, plus the sanity check). wrk stops a piece with
requests still in flight; the gateway may answer and record those, so rows may exceed wrk's count
by at most the connections open at each stop.

Part 2 (ledger queries, `--ledger-rows N`, default 10,000,000; `--skip-ledger` skips it). A Corral
data directory gets N generated `usage` rows spread over the last 30 days (Python's sqlite3
straight into the table Corral created, indexes dropped during the insert and recreated as they
were), `corral store rebuild-rollups --config routes.json` runs if the build has it, then Corral
serves it and `GET /admin/stats?window=1h`, `?window=24h`, `/admin/usage?group=model&bucket=hour`
and `/admin/usage?group=team&bucket=day` are each timed 5 times (median reported).

Usage: bench_load.py --corral .build-release/release/corral [--duration 60] [--connections 1,16,64,256]
                     [--systems direct,open,keyed,limits,cluster,litellm] [--ledger-rows N | --skip-ledger]
Tools: wrk and nginx-light (installed with apt-get when missing), PostgreSQL (for `cluster`, as the
test suite uses it), LiteLLM proxy (pip-installed into its own venv, .venv-bench-load by default).
"""
import argparse
import datetime
import glob
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral_http import answers, call  # noqa: E402

try:
    from corral_harness.corral import free_port
    from corral_harness.postgres import PASSWORD, Postgres
    from corral_harness.results import record
except ImportError as e:
    sys.exit(f"bench_load: uses the test harness (tests/harness), installed in .venv-test ({e}): run with .venv-test (make venv)")

ALL_SYSTEMS = ["direct", "open", "keyed", "limits", "cluster", "litellm"]
CORRAL_SYSTEMS = {"open", "keyed", "limits", "cluster"}
LITELLM_SPEC = "litellm[proxy]==1.82.6"  # pinned: 1.82.7/1.82.8 (and 1.107.0) were compromised releases
BODY = {"model": "static", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
ANSWER = {"id": "chatcmpl-static", "object": "chat.completion", "created": 1700000000, "model": "static",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there!"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}
MODELS = {"object": "list", "data": [{"id": "static", "object": "model", "created": 1700000000, "owned_by": "bench"}]}
HUGE_LIMITS = {"requestsPerMinute": 100_000_000, "tokensPerMinute": 10**12, "maxParallel": 100_000,
               "tokensPerDay": 10**15, "tokensPerMonth": 10**16}
LITELLM_MASTER_KEY = "sk-bench-load-master-key"
PG_PASSWORD_ENV = "BENCH_LOAD_PGPASSWORD"
CLUSTER_SECRET_ENV = "BENCH_LOAD_CLUSTER_SECRET"

STARTED: list[tuple[str, subprocess.Popen]] = []  # every process this script started, stopped in `finally`


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Tools


def apt_install(packages: list[str]) -> None:
    sudo = [] if os.geteuid() == 0 else (["sudo"] if shutil.which("sudo") else None)
    if sudo is None:
        return
    log(f"installing with apt-get: {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env, capture_output=True)
    if r.returncode != 0:
        subprocess.run(sudo + ["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env, capture_output=True)


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)


def need_tools(systems: list[str], litellm_venv: str) -> dict:
    """wrk, nginx, PostgreSQL and LiteLLM as the chosen systems need them; exits naming what is missing."""
    tools, missing = {}, []
    wanted = {"wrk": "wrk", "nginx": "nginx-light"}
    absent = [pkg for tool, pkg in wanted.items() if find_tool(tool) is None]
    if "cluster" in systems and not glob.glob("/usr/lib/postgresql/*/bin/initdb") and not shutil.which("initdb"):
        absent.append("postgresql")
    if absent:
        apt_install(absent)
    for tool, pkg in wanted.items():
        tools[tool] = find_tool(tool)
        if tools[tool] is None:
            missing.append(f"{tool} (Debian package {pkg}: apt-get install {pkg})")
    if "cluster" in systems and not glob.glob("/usr/lib/postgresql/*/bin/initdb") and not shutil.which("initdb"):
        missing.append("PostgreSQL's initdb/pg_ctl (Debian package postgresql), for the `cluster` system")
    if "litellm" in systems:
        tools["litellm"] = litellm_binary(litellm_venv)
        if tools["litellm"] is None:
            missing.append(f"LiteLLM proxy ({LITELLM_SPEC} into {litellm_venv}; pip install failed, see above)")
    if missing:
        sys.exit("bench_load: missing:\n  " + "\n  ".join(missing))
    return tools


def litellm_binary(venv: str) -> str | None:
    """The `litellm` command of the benchmark's own venv, installing LiteLLM there when missing."""
    binary, ready = os.path.join(venv, "bin", "litellm"), os.path.join(venv, ".bench-load-ready")
    if not (os.path.exists(binary) and os.path.exists(ready)):
        log(f"installing {LITELLM_SPEC} into {venv} (once)")
        if not os.path.exists(os.path.join(venv, "bin", "python")):
            subprocess.run([sys.executable, "-m", "venv", venv])
        r = subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--quiet", LITELLM_SPEC])
        if r.returncode != 0 or not os.path.exists(binary):
            return None
        open(ready, "w").close()
    # The compromised releases dropped this file into site-packages; refuse such a venv.
    if glob.glob(os.path.join(venv, "lib", "python*", "site-packages", "litellm_init.pth")):
        sys.exit(f"bench_load: {venv} holds litellm_init.pth (a compromised LiteLLM release): delete the venv")
    return binary


def version(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        text = (r.stdout + r.stderr).strip().splitlines()
        return text[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# ---------------------------------------------------------------------------------------------
# Processes


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
        except (OSError, IndexError, ValueError):
            pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def rss_mib(pid: int) -> float:
    """VmRSS of `pid` and its descendants, MiB."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def spawn(name: str, cmd: list[str], log_path: str, env: dict | None = None, cwd: str | None = None) -> subprocess.Popen:
    out = open(log_path, "w")
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    out.close()
    STARTED.append((name, p))
    return p


def stop(p: subprocess.Popen, sig=signal.SIGTERM, seconds: float = 30) -> int | None:
    """Stops a process this script started (and then any child it left), by id."""
    if p.poll() is None:
        kids = descendants(p.pid)
        p.send_signal(sig)
        try:
            p.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return p.returncode


def wait_http(port: int, path: str, p: subprocess.Popen, log_path: str, seconds: float) -> None:
    if answers(port, path, seconds, 0.1, alive=lambda: p.poll() is None):
        return
    tail = open(log_path, errors="replace").read()[-3000:]
    raise RuntimeError(f"{log_path}: did not answer {path} on port {port}:\n{tail}")


def start_nginx(nginx: str, root: str) -> tuple[subprocess.Popen, int]:
    """nginx in the foreground with its own prefix on a free loopback port: the static upstream."""
    d = os.path.join(root, "nginx")
    os.makedirs(d)
    os.chmod(root, 0o755)
    os.chmod(d, 0o755)
    port = free_port()
    answer, models = json.dumps(ANSWER, separators=(",", ":")), json.dumps(MODELS, separators=(",", ":"))
    temp = " ".join(f"{k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = f"""daemon off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    {temp}
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v1/chat/completions {{ default_type application/json; return 200 '{answer}'; }}
        location = /v1/models {{ default_type application/json; return 200 '{models}'; }}
    }}
}}
"""
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(conf)
    p = spawn("nginx", [nginx, "-p", d, "-c", f"{d}/nginx.conf", "-e", f"{d}/error.log"], f"{d}/stdout.log")
    wait_http(port, "/v1/models", p, f"{d}/error.log", 15)
    return p, port


class System:
    def __init__(self, name: str, port: int, proc: subprocess.Popen | None, auth: str | None, kind: str):
        self.name, self.port, self.proc, self.auth, self.kind = name, port, proc, auth, kind
        self.sent = 0  # every request sent to it (wrk pieces incl. warm-up, sanity check)
        self.directory = None
        self.admin_token = None
        self.others: list[subprocess.Popen] = []  # the cluster's node B
        self.rss_pid = proc.pid if proc else None  # whose RSS (with its children) is reported


def start_corral(corral: str, root: str, name: str, upstream_port: int, extra: dict | None = None, env: dict | None = None,
                 port: int | None = None) -> tuple[subprocess.Popen, int, str]:
    d = os.path.join(root, name)
    os.makedirs(d)
    port = port or free_port()
    config = {"listen": {"host": "127.0.0.1", "port": port}, "dataDirectory": f"{d}/data",
              "upstreams": [{"name": "static", "baseURL": f"http://127.0.0.1:{upstream_port}", "models": ["static"]}]}
    for k, v in (extra or {}).items():
        config[k] = v
    with open(f"{d}/routes.json", "w") as f:
        json.dump(config, f, indent=2)
    p = spawn(f"corral {name}", [corral, "serve", "--config", f"{d}/routes.json", "--log-level", "warning"], f"{d}/corral.log",
              env={**os.environ, **(env or {})})
    wait_http(port, "/health", p, f"{d}/corral.log", 60)
    return p, port, d


def team_key(port: int, token: str, name: str, limits: dict | None) -> str:
    status, team = call(port, "POST", "/admin/teams", {"name": name, **(limits or {})}, token)
    assert status in (200, 201), f"POST /admin/teams: {status} {team}"
    status, key = call(port, "POST", f"/admin/teams/{team['id']}/keys", dict(limits or {}), token)
    assert status in (200, 201), f"POST /admin/teams/{team['id']}/keys: {status} {key}"
    return key["key"]


def start_litellm(binary: str, root: str, upstream_port: int) -> tuple[subprocess.Popen, int]:
    d = os.path.join(root, "litellm")
    os.makedirs(d)
    port = free_port()
    config = {  # JSON is YAML
        "model_list": [{"model_name": "static", "litellm_params": {"model": "openai/static", "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                                                                   "api_key": "sk-upstream-not-checked"}}],
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
        "litellm_settings": {"telemetry": False},
    }
    with open(f"{d}/config.yaml", "w") as f:
        json.dump(config, f, indent=2)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "HOME": d})
    p = spawn("litellm", [binary, "--config", f"{d}/config.yaml", "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
              f"{d}/litellm.log", env=env, cwd=d)
    wait_http(port, "/health/liveliness", p, f"{d}/litellm.log", 240)
    return p, port


# ---------------------------------------------------------------------------------------------
# Load

LUA = """wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
%(auth)s
function done(summary, latency, requests)
  -- This wrk's stats object cannot be indexed by number, so the piece's latency distribution is
  -- written as its quantile function: every 0.1 %% up to 99 %%, then every 0.01 %%.
  local h = {}
  if summary.requests > 0 then
    for i = 1, 990 do h[#h + 1] = string.format("[%%.2f,%%d]", i / 10, latency:percentile(i / 10)) end
    for i = 1, 100 do h[#h + 1] = string.format("[%%.2f,%%d]", 99 + i / 100, latency:percentile(99 + i / 100)) end
  end
  local e = summary.errors
  io.write(string.format('BENCHJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d,"p50":%%d,"p99":%%d,"quantiles":[%%s]}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), table.concat(h, ",")))
end
"""


def lua_script(root: str, system: System) -> str:
    path = os.path.join(root, f"post-{system.name}.lua")
    auth = f'wrk.headers["Authorization"] = "Bearer {system.auth}"' if system.auth else ""
    with open(path, "w") as f:
        f.write(LUA % {"body": json.dumps(json.dumps(BODY, separators=(",", ":"))), "auth": auth})
    return path


def wrk_piece(wrk: str, system: System, lua: str, connections: int, seconds: int) -> dict:
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "30s", "-s", lua,
           f"http://127.0.0.1:{system.port}/v1/chat/completions"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 180)
    line = next((l for l in r.stdout.splitlines() if l.startswith("BENCHJSON ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    out = json.loads(line[len("BENCHJSON "):])
    out["seconds"] = seconds
    out["rps"] = out["requests"] / (out["duration_us"] / 1e6)
    system.sent += out["requests"]
    return out


def merged_percentile(pieces: list[dict], p: float) -> float:
    """The p-th percentile (ms) of several wrk pieces together: each piece's quantile points weighted by
    its share of the requests (resolution 0.1 % of a piece's requests below p99, 0.01 % above)."""
    points = []
    for piece in pieces:
        last = 0.0
        for q, v in piece["quantiles"]:
            points.append((v, (q - last) / 100 * piece["requests"]))
            last = q
    total = sum(w for _, w in points)
    if total == 0:
        return float("nan")
    seen = 0.0
    for v, w in sorted(points):
        seen += w
        if seen >= p / 100 * total - 1e-9:
            return v / 1000
    return max(v for v, _ in points) / 1000


def pieces_for(duration: int) -> list[int]:
    if duration >= 30:
        return [10, duration - 20, 10]
    edge = max(1, duration // 3)
    return [edge, max(1, duration - 2 * edge), edge]


def load_run(wrk: str, system: System, lua: str, connections: int, duration: int) -> dict:
    pid = system.rss_pid
    rss_start = rss_mib(pid) if pid else None
    pieces = [wrk_piece(wrk, system, lua, connections, s) for s in pieces_for(duration)]
    rss_end = rss_mib(pid) if pid else None
    p50, p99 = merged_percentile(pieces, 50), merged_percentile(pieces, 99)
    for piece in pieces:
        del piece["quantiles"]
    requests = sum(p["requests"] for p in pieces)
    return {
        "system": system.name, "connections": connections, "requests": requests,
        "seconds": sum(p["duration_us"] for p in pieces) / 1e6,
        "rps": requests / (sum(p["duration_us"] for p in pieces) / 1e6),
        "p50": p50, "p99": p99,
        "non2xx": sum(p["status"] for p in pieces), "socketErrors": sum(p[k] for p in pieces for k in ("connect", "read", "write", "timeout")),
        "firstRps": pieces[0]["rps"], "middleRps": pieces[1]["rps"], "lastRps": pieces[2]["rps"],
        "rssStartMiB": rss_start, "rssEndMiB": rss_end, "pieces": pieces,
    }


def sanity(system: System) -> None:
    c = http.client.HTTPConnection("127.0.0.1", system.port, timeout=60)
    headers = {"content-type": "application/json"}
    if system.auth:
        headers["authorization"] = f"Bearer {system.auth}"
    c.request("POST", "/v1/chat/completions", json.dumps(BODY), headers)
    r = c.getresponse()
    data = r.read()
    system.sent += 1
    if r.status != 200:
        raise RuntimeError(f"{system.name}: POST /v1/chat/completions answered {r.status}: {data[:500]!r}")
    usage = json.loads(data).get("usage", {})
    if usage.get("completion_tokens") != ANSWER["usage"]["completion_tokens"]:
        raise RuntimeError(f"{system.name}: unexpected answer {data[:500]!r}")


def corral_counter(system: System) -> int | None:
    """The sum of Corral's corral_requests_total over every node of the system."""
    total = 0
    for port in [system.port, *getattr(system, "other_ports", [])]:
        status, text = call(port, "GET", "/metrics", None, system.admin_token)
        if status != 200:
            return None
        for line in str(text).splitlines():
            if line.startswith("corral_requests_total"):
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


# ---------------------------------------------------------------------------------------------
# Ledger part


def grdb_date(epoch_ms: int, cache: dict) -> str:
    sec = epoch_ms // 1000
    prefix = cache.get(sec)
    if prefix is None:
        cache.clear()
        prefix = cache[sec] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec))
    return f"{prefix}.{epoch_ms % 1000:03d}"


def ledger_part(corral: str, root: str, upstream_port: int, n_rows: int) -> dict:
    proc, port, d = start_corral(corral, root, "ledger", upstream_port)
    token = open(f"{d}/data/admin-token").read().strip()
    teams = []
    for i in range(8):
        status, team = call(port, "POST", "/admin/teams", {"name": f"ledger-team-{i}"}, token)
        keys = [call(port, "POST", f"/admin/teams/{team['id']}/keys", {}, token)[1]["key"] for _ in range(2)]
        teams.append((team["id"], [k[:11] for k in keys]))
    for _ in range(3):  # rows Corral writes itself, to check the format against
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("POST", "/v1/chat/completions", json.dumps(BODY), {"content-type": "application/json", "authorization": f"Bearer {keys[0]}"})
        assert c.getresponse().status == 200
    rc = stop(proc)
    assert rc == 0, f"corral exited {rc}"
    db = f"{d}/data/corral.sqlite"
    con = sqlite3.connect(db, isolation_level=None)
    con.row_factory = sqlite3.Row
    sample = dict(con.execute("SELECT * FROM usage ORDER BY ts DESC LIMIT 1").fetchone())
    log(f"a ledger row Corral wrote: {json.dumps(sample)}")
    if not re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", str(sample["ts"])):
        raise RuntimeError(f"usage.ts is stored as {sample['ts']!r}, not 'YYYY-MM-DD HH:MM:SS.SSS': update the generator")
    if sample["team"] not in {t for t, _ in teams} or sample["keyPrefix"] not in {k for _, ks in teams for k in ks}:
        raise RuntimeError(f"usage.team/keyPrefix hold {sample['team']!r}/{sample['keyPrefix']!r}, not a team id and key prefix: update the generator")
    columns = {r["name"]: r for r in con.execute("PRAGMA table_info(usage)")}
    models = ["static"] + [f"gen-model-{i}" for i in range(1, 6)]
    now_ms = int(time.time() * 1000) - 60_000
    span_ms = 30 * 86_400_000
    start_ms = now_ms - span_ms
    generated = {
        "requestID": lambda i, h: f"gen-{i:010d}",
        "ts": None,  # filled below
        "team": lambda i, h: teams[h % 8][0],
        "keyPrefix": lambda i, h: teams[h % 8][1][(h >> 3) & 1],
        "model": lambda i, h: models[(h >> 4) % 6],
        "route": lambda i, h: "/v1/chat/completions",
        "status": lambda i, h: 429 if h % 97 == 0 else 200,
        "errorKind": lambda i, h: "rate_limited" if h % 97 == 0 else None,
        "promptTokens": lambda i, h: 10 + h % 500,
        "cachedTokens": lambda i, h: 0,
        "completionTokens": lambda i, h: 1 + (h >> 9) % 300,
        "queueMs": lambda i, h: float(h % 7),
        "loadMs": lambda i, h: 0.0,
        "ttftMs": lambda i, h: 20.0 + h % 80,
        "totalMs": lambda i, h: 50.0 + h % 2000,
        "promptTPS": lambda i, h: 500.0 + h % 300,
        "generationTPS": lambda i, h: 30.0 + h % 40,
        "clientDisconnected": lambda i, h: 0,
        "node": lambda i, h: None,
    }
    unknown = [c for c, r in columns.items() if c not in generated and r["notnull"] and r["dflt_value"] is None]
    if unknown:
        raise RuntimeError(f"usage has NOT NULL columns the generator does not fill: {unknown}")
    cols = [c for c in generated if c in columns]
    fns = [generated[c] for c in cols]
    ts_at = cols.index("ts")
    indexes = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'usage' AND sql IS NOT NULL").fetchall()
    triggers = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'usage'")]
    if triggers:
        log(f"note: usage has triggers {triggers}; they fire for every generated row")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-262144")
    for name, _ in indexes:
        con.execute(f'DROP INDEX "{name}"')
    sql = f"INSERT INTO usage ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    cache: dict = {}

    def rows(lo: int, hi: int):
        for i in range(lo, hi):
            h = (i * 2654435761) & 0xFFFFFFFF
            h ^= h >> 15
            row = [f(i, h) if f else None for f in fns]
            row[ts_at] = grdb_date(start_ms + i * span_ms // n_rows, cache)
            yield row

    t0 = time.time()
    chunk = 1_000_000
    for lo in range(0, n_rows, chunk):
        con.execute("BEGIN")
        con.executemany(sql, rows(lo, min(n_rows, lo + chunk)))
        con.execute("COMMIT")
        log(f"  ledger rows: {min(n_rows, lo + chunk):,} / {n_rows:,} ({time.time() - t0:.0f} s)")
    t_insert = time.time() - t0
    t0 = time.time()
    for _, index_sql in indexes:
        con.execute(index_sql)
    t_index = time.time() - t0
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    total_rows = con.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
    con.close()
    size_mib = os.path.getsize(db) / 2**20
    log(f"generated {n_rows:,} rows in {t_insert:.0f} s, indexes rebuilt in {t_index:.0f} s; {size_mib:.0f} MiB")

    t0 = time.time()
    r = subprocess.run([corral, "store", "rebuild-rollups", "--config", f"{d}/routes.json"], capture_output=True, text=True, cwd=d)
    rollups = {"exitCode": r.returncode, "seconds": time.time() - t0, "output": (r.stdout + r.stderr).strip()[-1500:]}
    if r.returncode == 0:
        log(f"corral store rebuild-rollups: done in {rollups['seconds']:.1f} s: {rollups['output'][-300:]}")
    else:
        log(f"corral store rebuild-rollups exited {r.returncode}: rollups were NOT rebuilt; timing the endpoints anyway\n  {rollups['output'][-500:]}")

    proc = spawn("corral ledger", [corral, "serve", "--config", f"{d}/routes.json", "--log-level", "warning"], f"{d}/corral-2.log")
    port2 = json.load(open(f"{d}/routes.json"))["listen"]["port"]
    wait_http(port2, "/health", proc, f"{d}/corral-2.log", 120)
    timings = {}
    for path in ("/admin/stats?window=1h", "/admin/stats?window=24h", "/admin/usage?group=model&bucket=hour", "/admin/usage?group=team&bucket=day"):
        runs = []
        for _ in range(5):
            c = http.client.HTTPConnection("127.0.0.1", port2, timeout=900)
            t = time.perf_counter()
            c.request("GET", path, headers={"authorization": f"Bearer {token}"})
            resp = c.getresponse()
            body = resp.read()
            runs.append((time.perf_counter() - t) * 1000)
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: {resp.status} {body[:300]!r}")
            c.close()
        timings[path] = {"medianMs": statistics.median(runs), "runsMs": runs, "bytes": len(body)}
        log(f"  {path}: median {statistics.median(runs):.1f} ms ({', '.join(f'{x:.0f}' for x in runs)})")
    rss = rss_mib(proc.pid)
    stop(proc)
    return {"rows": total_rows, "generatedRows": n_rows, "insertSeconds": t_insert, "indexSeconds": t_index, "databaseMiB": size_mib,
            "rollups": rollups, "timings": timings, "rssAfterMiB": rss, "triggers": triggers}


# ---------------------------------------------------------------------------------------------
# Report


def fmt(v, spec=".2f", none="–"):
    return none if v is None or (isinstance(v, float) and v != v) else format(v, spec)


def report(args, env: dict, runs: list[dict], ledgers: dict, ledger_q: dict | None, command: str) -> str:
    by = {(r["system"], r["connections"]): r for r in runs}
    lines = []
    if runs:
        lines.append(f"### Load: Corral vs nginx direct vs LiteLLM ({env['date']})")
        lines.append("")
        lines.append(f"{env['machine']}; Corral {env['corral']}; {env['wrk']}; {env['nginx']}; LiteLLM {env['litellm']}. "
                     f"`wrk -t1 -cN --timeout 30s`, {args.duration} s per run as three back-to-back wrk pieces "
                     f"({'/'.join(map(str, pieces_for(args.duration)))} s; req/s over all three, p50/p99 of the three together, "
                     f"last/first = last piece's req/s over the first's), systems interleaved per connection count; "
                     f"body `{json.dumps(BODY, separators=(',', ':'))}`; upstream: nginx `return 200` with a fixed chat completion; "
                     f"added = the system's percentile minus direct nginx's at the same connections; RSS of the process and its children.")
        lines.append("")
        lines.append("| system | conns | req/s | p50 ms | p99 ms | p50 added ms | p99 added ms | first / middle / last req/s | last/first | RSS start → end MiB | non-2xx | socket errors |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|")
        for system in args.systems:
            for c in args.connections:
                r = by.get((system, c))
                if r is None:
                    continue
                d = by.get(("direct", c))
                add50 = r["p50"] - d["p50"] if d and system != "direct" else None
                add99 = r["p99"] - d["p99"] if d and system != "direct" else None
                rss = f"{r['rssStartMiB']:.1f} → {r['rssEndMiB']:.1f}" if r["rssStartMiB"] is not None else "–"
                lines.append(f"| {system} | {c} | {r['rps']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {fmt(add50, '.3f')} | {fmt(add99, '.3f')} | "
                             f"{r['firstRps']:.0f} / {r['middleRps']:.0f} / {r['lastRps']:.0f} | {r['lastRps'] / r['firstRps']:.3f} | {rss} | {r['non2xx']} | {r['socketErrors']} |")
        lines.append("")
    if ledgers:
        lines.append("Ledger after SIGTERM: rows in `usage` against the requests wrk counted (non-2xx included; warm-up and the sanity request too) "
                     "and Corral's own `corral_requests_total`; wrk drops the answers to requests in flight when a piece stops, so rows may exceed "
                     "wrk's count by up to the connections open at the stops.")
        lines.append("")
        lines.append("| Corral system | requests sent | Corral's request counter | ledger rows | rows − sent | allowed (in flight at wrk stops) |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for system, l in ledgers.items():
            lines.append(f"| {system} | {l['sent']} | {fmt(l['counter'], 'd')} | {l['rows']} | {l['rows'] - l['sent']} | 0 … {l['slack']} |")
        lines.append("")
    goals = goal_checks(args, by, ledgers)
    if goals:
        lines.append("| goal | measured | pass |")
        lines.append("|---|---|---|")
        for g, measured, ok, _ in goals:
            lines.append(f"| {g} | {measured} | {'yes' if ok else ('n/a' if ok is None else '**no**')} |")
        lines.append("")
    if ledger_q:
        ro = ledger_q["rollups"]
        rollups = (f"`corral store rebuild-rollups` took {ro['seconds']:.1f} s" if ro["exitCode"] == 0
                   else f"rollups NOT rebuilt (`corral store rebuild-rollups` exited {ro['exitCode']})")
        lines.append(f"### Admin queries over a {ledger_q['rows']:,}-row ledger ({env['date']})")
        lines.append("")
        lines.append(f"{env['machine']}; Corral {env['corral']}. {ledger_q['rows']:,} `usage` rows in SQLite ({ledger_q['databaseMiB']:.0f} MiB), "
                     f"spread evenly over the last 30 days, 8 teams, 16 keys, 6 models, written straight into the table "
                     f"({ledger_q['insertSeconds']:.0f} s, then {ledger_q['indexSeconds']:.0f} s to rebuild its indexes); {rollups}. "
                     f"Each request 5 times in a row on a freshly started Corral (`/admin/usage` without from/to covers its default, "
                     f"the last 7 days); Corral's RSS after them {ledger_q['rssAfterMiB']:.0f} MiB.")
        lines.append("")
        lines.append("| request | median ms | runs ms | answer bytes |")
        lines.append("|---|---:|---|---:|")
        for path, t in ledger_q["timings"].items():
            lines.append(f"| `GET {path}` | {t['medianMs']:.1f} | {', '.join(f'{x:.0f}' for x in t['runsMs'])} | {t['bytes']} |")
        lines.append("")
    lines.append(f"Rerun: `{command}`")
    return "\n".join(lines)


def goal_checks(args, by: dict, ledgers: dict) -> list[tuple[str, str, bool | None, tuple]]:
    """Each goal as (goal, measured, pass, result): result is the measure recorded for it, as
    (id, title, value, unit, goal, notes)."""
    goals = []
    for c in (16, 64):
        k, o = by.get(("keyed", c)), by.get(("open", c))
        if k and o:
            ratio = k["rps"] / o["rps"]
            goals.append((f"keyed ≥ 0.9 × open req/s at {c}", f"{k['rps']:.0f} / {o['rps']:.0f} = {ratio:.3f}", ratio >= 0.9,
                          (f"load.keyed_over_open_rps_{c}", f"Corral keyed ÷ Corral open, req/s at {c} connections", round(ratio, 3), "×", "≥ 0.9", None)))
    drift = [(r["system"], r["connections"], r["lastRps"] / r["firstRps"]) for r in by.values() if r["system"] in CORRAL_SYSTEMS]
    if drift:
        worst = min(drift, key=lambda x: x[2])
        edge = pieces_for(args.duration)[0]
        goals.append((f"last {edge} s ≥ 0.95 × first {edge} s (every Corral run)", f"worst {worst[0]} at {worst[1]}: {worst[2]:.3f}", worst[2] >= 0.95,
                      ("load.worst_last_over_first", "Flatness: worst last-piece ÷ first-piece req/s over every Corral run", round(worst[2], 3), "×",
                       "≥ 0.95", f"{worst[0]} at {worst[1]} connections")))
    k, l = by.get(("keyed", 16)), by.get(("litellm", 16))
    if k and l:
        ratio = k["rps"] / l["rps"]
        goals.append(("Corral keyed ≥ 50 × LiteLLM req/s at 16", f"{k['rps']:.0f} / {l['rps']:.0f} = {ratio:.1f}×", ratio >= 50,
                      ("load.keyed_over_litellm_rps_16", "Corral keyed ÷ LiteLLM, req/s at 16 connections", round(ratio, 1), "×", "≥ 50", None)))
    k, d = by.get(("keyed", 16)), by.get(("direct", 16))
    if k and d:
        added = k["p99"] - d["p99"]
        goals.append(("Corral keyed p99 added over direct ≤ 2 ms at 16", f"{added:.3f} ms", added <= 2.0,
                      ("load.keyed_p99_added_16_ms", "Corral keyed p99 added over nginx direct at 16 connections", round(added, 3), "ms", "≤ 2", None)))
    rss = [(r["system"], r["connections"], r["rssEndMiB"] / r["rssStartMiB"] - 1) for r in by.values()
           if r["system"] in CORRAL_SYSTEMS and r["rssStartMiB"]]
    if rss:
        worst = max(rss, key=lambda x: abs(x[2]))
        goals.append(("RSS end within ±10 % of start (every Corral run)", f"worst {worst[0]} at {worst[1]}: {worst[2] * 100:+.1f} %", abs(worst[2]) <= 0.10,
                      ("load.worst_rss_change_pct", "Worst RSS change, end against start, over every Corral run", round(worst[2] * 100, 1), "%",
                       "within ±10", f"{worst[0]} at {worst[1]} connections")))
    for system, led in ledgers.items():
        exact = led["rows"] == led["sent"]
        counter_ok = led["counter"] is None or led["rows"] == led["counter"]
        within = led["sent"] <= led["rows"] <= led["sent"] + led["slack"]
        goals.append((f"{system}: ledger rows = requests", f"{led['rows']} rows, {led['sent']} sent by wrk, {fmt(led['counter'], 'd')} counted by Corral"
                      + ("" if exact else f" ({led['rows'] - led['sent']:+d}: requests in flight when a wrk piece stopped)" if within else ""),
                      counter_ok and within,
                      (f"load.ledger_rows_over_sent_{system}", f"Ledger rows minus requests sent by wrk, Corral {system}", led["rows"] - led["sent"],
                       "rows", "≥ 0, ≤ requests in flight at wrk stops", f"allowed 0 … {led['slack']}; Corral counted {fmt(led['counter'], 'd')}")))
    return goals


RPS_TITLES = {"direct": "nginx direct", "open": "Corral open", "keyed": "Corral keyed", "cluster": "Corral cluster node (PostgreSQL)",
              "litellm": "LiteLLM proxy"}
LEDGER_MEASURES = {"/admin/stats?window=1h": "load.admin_stats_1h_ms", "/admin/stats?window=24h": "load.admin_stats_24h_ms",
                   "/admin/usage?group=model&bucket=hour": "load.admin_usage_model_hour_ms",
                   "/admin/usage?group=team&bucket=day": "load.admin_usage_team_day_ms"}


def record_load(args, by: dict, ledgers: dict, ledger_q: dict | None, command: str) -> None:
    """The run's headline measures (every goal, req/s at 16 connections, the admin queries),
    appended to the results file."""
    run = f"{args.duration} s per run"
    for _, _, ok, (measure, title, value, unit, goal, notes) in goal_checks(args, by, ledgers):
        record("bench-load", measure, title, value, unit, goal=goal, met=ok, command=command, notes="; ".join(filter(None, (notes, run))))
    for system, name in RPS_TITLES.items():
        r = by.get((system, 16))
        if r:
            record("bench-load", f"load.{system}_rps_16", f"{name} req/s at 16 connections", round(r["rps"]), "req/s", command=command, notes=run)
    for path, t in (ledger_q or {}).get("timings", {}).items():
        record("bench-load", LEDGER_MEASURES[path], f"GET {path} over the generated ledger, median", round(t["medianMs"], 1), "ms",
               goal="≤ 50", met=t["medianMs"] <= 50, command=command, notes=f"{ledger_q['rows']:,} rows")


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corral", default=".build-release/release/corral")
    ap.add_argument("--duration", type=int, default=60, help="seconds per (system, connections) run (≥ 3; ≥ 30 gives 10 s first/last pieces)")
    ap.add_argument("--connections", default="1,16,64,256")
    ap.add_argument("--systems", default=",".join(ALL_SYSTEMS), help=f"subset of {','.join(ALL_SYSTEMS)}")
    ap.add_argument("--ledger-rows", type=int, default=10_000_000)
    ap.add_argument("--skip-ledger", action="store_true")
    ap.add_argument("--skip-load", action="store_true", help="only the ledger part")
    ap.add_argument("--litellm-venv", default=os.path.join(REPO, ".venv-bench-load"))
    ap.add_argument("--json", help="also write every measurement here")
    args = ap.parse_args()
    args.connections = [int(c) for c in args.connections.split(",") if c]
    args.systems = [s for s in args.systems.split(",") if s]
    bad = [s for s in args.systems if s not in ALL_SYSTEMS]
    if bad or args.duration < 3:
        ap.error(f"unknown systems {bad}" if bad else "--duration must be at least 3")
    if args.skip_load:
        args.systems = []
    corral = os.path.abspath(args.corral)
    if not os.access(corral, os.X_OK):
        sys.exit(f"bench_load: no corral binary at {corral} (make release)")
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, REPO) if sys.executable.startswith(REPO) else sys.executable,
                                                os.path.relpath(os.path.abspath(__file__), REPO), *sys.argv[1:]])
    if sys.argv[1:] == ["--corral", ".build-release/release/corral"]:
        command = "make bench-load"
    tools = need_tools(args.systems, args.litellm_venv)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)

    root = tempfile.mkdtemp(prefix="corral-bench-load-")
    pg = None
    systems: dict[str, System] = {}
    runs, ledgers, ledger_q = [], {}, None
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?')}",
        "corral": version(["git", "-C", REPO, "describe", "--always", "--dirty"]),
        "wrk": version([tools.get("wrk") or "wrk", "-v"]).split(" Copyright")[0],
        "nginx": version([tools.get("nginx") or "nginx", "-v"]).replace("nginx version: ", ""),
        "litellm": LITELLM_SPEC.split("==")[1] if "litellm" in args.systems else "not run",
    }
    try:
        nginx, nginx_port = start_nginx(tools["nginx"], root)
        log(f"nginx on {nginx_port}")
        if "direct" in args.systems:
            systems["direct"] = System("direct", nginx_port, None, None, "nginx")
            systems["direct"].rss_pid = nginx.pid
        if "open" in args.systems:
            p, port, d = start_corral(corral, root, "open", nginx_port)
            s = systems["open"] = System("open", port, p, None, "corral")
            s.directory, s.admin_token = d, open(f"{d}/data/admin-token").read().strip()
        for name, limits in (("keyed", None), ("limits", HUGE_LIMITS)):
            if name in args.systems:
                p, port, d = start_corral(corral, root, name, nginx_port)
                token = open(f"{d}/data/admin-token").read().strip()
                s = systems[name] = System(name, port, p, team_key(port, token, "bench", limits), "corral")
                s.directory, s.admin_token = d, token
        if "cluster" in args.systems:
            pg = Postgres()
            secret = "bench-load-cluster-secret-0123456789"
            node_env = {PG_PASSWORD_ENV: PASSWORD, CLUSTER_SECRET_ENV: secret}
            nodes = []
            for node in ("a", "b"):
                port = free_port()
                extra = {"store": {"url": pg.url, "passwordEnv": PG_PASSWORD_ENV},
                         "cluster": {"nodeName": node, "advertiseURL": f"http://127.0.0.1:{port}", "secretEnv": CLUSTER_SECRET_ENV}}
                nodes.append(start_corral(corral, root, f"cluster-{node}", nginx_port, extra, node_env, port))
            (pa, port_a, da), (pb, port_b, _) = nodes
            token = open(f"{da}/data/admin-token").read().strip()
            s = systems["cluster"] = System("cluster", port_a, pa, team_key(port_a, token, "bench", None), "corral")
            s.directory, s.admin_token, s.others, s.other_ports = da, token, [pb], [port_b]
        if "litellm" in args.systems:
            p, port = start_litellm(tools["litellm"], root, nginx_port)
            systems["litellm"] = System("litellm", port, p, LITELLM_MASTER_KEY, "litellm")
        luas = {}
        for name in args.systems:
            s = systems[name]
            sanity(s)
            luas[name] = lua_script(root, s)
            warm = wrk_piece(tools["wrk"], s, luas[name], 16, 2)
            log(f"{name} on {s.port}: answers; warm-up {warm['rps']:.0f} req/s")
        slack = {name: 16 for name in args.systems}  # the warm-up's connections
        for i, c in enumerate(args.connections if args.systems else []):
            order = args.systems[i % len(args.systems):] + args.systems[:i % len(args.systems)]
            for name in order:
                r = load_run(tools["wrk"], systems[name], luas[name], c, args.duration)
                slack[name] += c * 3
                runs.append(r)
                log(f"{name:8} c={c:<4} {r['rps']:9.0f} req/s  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms  "
                    f"first/last {r['firstRps']:.0f}/{r['lastRps']:.0f}  rss {fmt(r['rssStartMiB'], '.1f')}→{fmt(r['rssEndMiB'], '.1f')} MiB"
                    + (f"  non-2xx {r['non2xx']}" if r["non2xx"] else "") + (f"  socket errors {r['socketErrors']}" if r["socketErrors"] else ""))
        for name in args.systems:
            s = systems[name]
            if s.kind != "corral":
                continue
            counter = corral_counter(s)
            for p in [s.proc, *s.others]:
                rc = stop(p)
                if rc != 0:
                    log(f"warning: {name} exited {rc} on SIGTERM")
            if name == "cluster":
                rows = int(pg.query("SELECT COUNT(*) FROM usage"))
            else:
                con = sqlite3.connect(f"file:{s.directory}/data/corral.sqlite?mode=ro", uri=True)
                rows = con.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
                con.close()
            ledgers[name] = {"sent": s.sent, "counter": counter, "rows": rows, "slack": slack[name]}
        for name in args.systems:
            if systems[name].proc is not None:
                stop(systems[name].proc)
        if not args.skip_ledger:
            log(f"ledger part: {args.ledger_rows:,} rows")
            ledger_q = ledger_part(corral, root, nginx_port, args.ledger_rows)
        stop(nginx)
        text = report(args, env, runs, ledgers, ledger_q, command)
        print(text)
        record_load(args, {(r["system"], r["connections"]): r for r in runs}, ledgers, ledger_q, command)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"environment": env, "runs": runs, "ledgers": ledgers, "ledgerQueries": ledger_q, "command": command}, f, indent=2)
    finally:
        for name, p in reversed(STARTED):
            if p.poll() is None:
                stop(p, seconds=20)
        if pg is not None:
            pg.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
