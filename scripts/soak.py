#!/usr/bin/env python3
"""Soak: a bounded run of mixed traffic against one Corral, watching for leaks and lost records.

Three tiny generated models (two chat, one embedding) behind `scheduler.maxLoadedModels: 2`, so
the fleet keeps swapping; three teams (two with generous limits, one deliberately limited to a
few requests per minute so 429 refusals show up as a counted kind); `--concurrency` client
threads sending, until the deadline, a random mix of OpenAI and Ollama requests, streamed and
not, about 10% of streams abandoned after their first event. Every 10 s it samples Corral's RSS,
open file descriptors, threads, child llama-servers and orphans. At the end it reads Corral's
`/metrics` (gateway overhead, queue, load, TTFT histograms) and the usage ledger, stops Corral
with SIGTERM, and checks that no llama-server of this run is left.

Prints a markdown report, writes it to artifacts/soak.md and, with --benchmarks FILE, between the
`<!-- soak:begin -->` / `<!-- soak:end -->` markers of FILE; appends its headline measures to
benchmarks/results.jsonl (corral_harness.results). Exits 1 when Corral crashed, stalled
(no request finished between two samples while clients were waiting), did not exit within 60 s of
SIGTERM, an orphan llama-server was seen, or the ledger does not hold one row per request sent.
`--max-loaded 3` turns swapping off (to tell swap problems from others).

Usage: soak.py --corral .build-release/release/corral [--seconds 600] [--concurrency 16]
               [--benchmarks FILE] [--keep]
"""
import argparse
import collections
import datetime
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

from corral_harness.corral import free_port
from corral_harness.results import record
from corral_http import call

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
CHAT_MODELS = ["soak-a", "soak-b"]
EMBED_MODEL = "soak-embed"
# Team name -> (share of requests, limits). "limited" is meant to be refused now and then.
TEAMS = {
    "soak-alpha": (0.45, {"requestsPerMinute": 10_000_000, "tokensPerMinute": 1_000_000_000, "maxParallel": 1000,
                          "tokensPerDay": 10_000_000_000}),
    "soak-beta": (0.45, {"requestsPerMinute": 10_000_000, "tokensPerMinute": 1_000_000_000, "maxParallel": 1000,
                         "tokensPerDay": 10_000_000_000}),
    "soak-limited": (0.10, {"requestsPerMinute": 30, "tokensPerMinute": 1_000_000_000, "maxParallel": 2,
                            "tokensPerDay": 10_000_000_000}),
}
# kind -> (route, streamed)
KINDS = {
    "openai chat": ("/v1/chat/completions", False),
    "openai chat stream": ("/v1/chat/completions", True),
    "openai completions": ("/v1/completions", False),
    "openai completions stream": ("/v1/completions", True),
    "openai embeddings": ("/v1/embeddings", False),
    "ollama chat": ("/api/chat", False),
    "ollama chat stream": ("/api/chat", True),
    "ollama generate": ("/api/generate", False),
    "ollama generate stream": ("/api/generate", True),
    "ollama embed": ("/api/embed", False),
}
# The tiny models' vocabulary is mostly byte tokens (a word is ~5 tokens) and a chat slot has
# 1024 / 4 = 256 tokens: prompts stay under ~100 tokens so prompt + 32 generated always fit.
PROMPT_WORDS = (2, 16)
WORDS = ("soak corral llama model token stream gateway ledger queue swap team key latency "
         "memory budget slot prompt answer river stone cloud lamp").split()
DISCONNECT_SHARE = 0.10


def start(corral: str, d: str, config: dict, port: int) -> subprocess.Popen:
    with open(f"{d}/routes.json", "w") as f:
        json.dump(config, f, indent=2)
    log = open(f"{d}/corral.log", "wb")
    p = subprocess.Popen([corral, "serve", "--config", f"{d}/routes.json", "--log-level", "warning"],
                         stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"corral exited with {p.returncode} at start; see {d}/corral.log")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return p
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("corral did not start")


def run_tool(args: list[str], retries: int = 20) -> None:
    """Runs the corral CLI, retrying while the binary is briefly missing (a rebuild in progress)."""
    for attempt in range(retries):
        try:
            subprocess.run(args, check=True, capture_output=True)
            return
        except FileNotFoundError:
            time.sleep(3)
    raise RuntimeError(f"{args[0]} not found")


# ---------------------------------------------------------------- /proc sampling

def proc_stat(pid: int) -> tuple[int, str] | None:
    """(ppid, comm) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.index("(") + 1:s.rindex(")")]
    return int(s[s.rindex(")") + 2:].split()[1]), comm


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def status_field(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def our_llama_servers(tmp: str) -> list[tuple[int, int]]:
    """(pid, ppid) of every llama-server started for this run (its command line names the temp dir)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        st = proc_stat(pid)
        if st is None:
            continue
        line = cmdline(pid)
        if "llama-server" in line and tmp in line:
            out.append((pid, st[0]))
    return out


def children(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st and st[0] == pid:
                out.append((int(entry), st[1]))
    return out


class Sampler(threading.Thread):
    def __init__(self, pid: int, tmp: str, every: float, port: int = 0, stats=None):
        super().__init__(daemon=True)
        self.pid, self.tmp, self.every, self.port, self.stats = pid, tmp, every, port, stats
        self.samples: list[dict] = []  # t (s since start), rss_mib, fds, threads, children, llama
        self.orphans: dict[int, str] = {}
        self.stop_event = threading.Event()
        self.t0 = time.time()

    def sample(self) -> dict | None:
        rss = status_field(self.pid, "VmRSS")
        if rss is None:
            return None
        try:
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return None
        kids = children(self.pid)
        for pid, ppid in our_llama_servers(self.tmp):
            if ppid != self.pid:
                self.orphans[pid] = f"pid {pid} ppid {ppid}: {cmdline(pid)[:200]}"
        s = {"t": time.time() - self.t0, "rss_mib": rss / 1024, "fds": fds, "threads": status_field(self.pid, "Threads") or 0,
             "children": len(kids), "llama": sum(1 for _, c in kids if c.startswith("llama-server")),
             "finished": self.stats.finished if self.stats else 0, "health_ms": None}
        if self.port:
            t0 = time.perf_counter()
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    s["health_ms"] = (time.perf_counter() - t0) * 1000
                c.close()
            except OSError:
                pass
        self.samples.append(s)
        return s

    def run(self):
        while not self.stop_event.wait(self.every):
            self.sample()


# ---------------------------------------------------------------- traffic

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0                                   # requests whose bytes reached Corral
        self.not_sent = collections.Counter()           # exceptions before the request was sent
        self.by_kind = collections.defaultdict(collections.Counter)  # kind -> sent/ok/disconnect/error
        self.errors = collections.Counter()             # "kind of error" -> n
        self.latency = collections.defaultdict(list)    # kind -> seconds (served requests)
        self.ttfb = collections.defaultdict(list)       # kind -> seconds to the first event (streams)
        self.by_route_status = collections.Counter()    # (route, status) as the client saw it
        self.by_team = collections.Counter()
        self.request_ids = set()                        # x-request-id of OpenAI answers
        self.disconnects = 0
        self.finished = 0                               # requests answered (any outcome), for stall detection

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


def words(n: int) -> str:
    return " ".join(random.choice(WORDS) for _ in range(n))


def body_for(kind: str) -> dict:
    route, stream = KINDS[kind]
    n = random.randint(4, 32)
    chat = random.choice(CHAT_MODELS)
    if route == "/v1/chat/completions":
        return {"model": chat, "messages": [{"role": "user", "content": words(random.randint(*PROMPT_WORDS))}], "max_tokens": n, "stream": stream}
    if route == "/v1/completions":
        return {"model": chat, "prompt": words(random.randint(*PROMPT_WORDS)), "max_tokens": n, "stream": stream}
    if route == "/v1/embeddings":
        inp = words(random.randint(*PROMPT_WORDS)) if random.random() < 0.7 else [words(random.randint(2, 12)) for _ in range(3)]
        return {"model": EMBED_MODEL, "input": inp}
    if route == "/api/chat":
        return {"model": chat, "messages": [{"role": "user", "content": words(random.randint(*PROMPT_WORDS))}], "stream": stream,
                "options": {"num_predict": n}}
    if route == "/api/generate":
        return {"model": chat, "prompt": words(random.randint(*PROMPT_WORDS)), "stream": stream, "options": {"num_predict": n}}
    inp = words(random.randint(*PROMPT_WORDS)) if random.random() < 0.7 else [words(random.randint(2, 12)) for _ in range(3)]
    return {"model": EMBED_MODEL, "input": inp}


def error_code(data: bytes) -> str:
    """`code`/`type` of an OpenAI error body, or the start of an Ollama `error` string."""
    try:
        o = json.loads(data)
    except ValueError:
        return "unparsable body"
    e = o.get("error") if isinstance(o, dict) else None
    if isinstance(e, dict):
        return str(e.get("code") or e.get("type") or "?")
    if isinstance(e, str):
        return re.sub(r"'[^']*'", "'…'", e)[:60]
    return "?"


def one_request(port: int, key: str, team: str, kind: str, stats: Stats) -> float:
    """Sends one request and accounts for it; returns seconds to pause (Retry-After) before the next."""
    route, stream = KINDS[kind]
    body = json.dumps(body_for(kind))
    disconnect = stream and random.random() < DISCONNECT_SHARE
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    sent = False
    t0 = time.perf_counter()
    try:
        conn.request("POST", route, body=body, headers={"content-type": "application/json", "authorization": f"Bearer {key}"})
        sent = True
        with stats.lock:
            stats.sent += 1
            stats.by_kind[kind]["sent"] += 1
            stats.by_team[team] += 1
        sock = conn.sock
        r = conn.getresponse()
        rid = r.getheader("x-request-id")
        with stats.lock:
            stats.by_route_status[(route, r.status)] += 1
            if rid:
                stats.request_ids.add(rid)
        if r.status != 200:
            data = r.read()
            code = error_code(data)
            with stats.lock:
                stats.errors[f"HTTP {r.status} {code}"] += 1
                stats.by_kind[kind]["error"] += 1
            if r.status in (429, 503):
                return min(float(r.getheader("retry-after") or 1), 1.0)
            return 0
        if not stream:
            data = r.read()
            o = json.loads(data)
            if isinstance(o, dict) and "error" in o:
                with stats.lock:
                    stats.errors[f"HTTP 200 with error body: {error_code(data)}"] += 1
                    stats.by_kind[kind]["error"] += 1
                return 0
            with stats.lock:
                stats.by_kind[kind]["ok"] += 1
                stats.latency[kind].append(time.perf_counter() - t0)
            return 0
        # Streamed: SSE (`data: {...}` events, `data: [DONE]`) or NDJSON (one object per line).
        first = None
        error = None
        ndjson = route.startswith("/api/")
        while True:
            line = r.readline()  # (r.fp would show the chunked framing)
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            if not ndjson:
                if not line.startswith(b"data:"):
                    continue
                line = line[5:].strip()
                if line == b"[DONE]":
                    break
            try:
                event = json.loads(line)
            except ValueError:
                error = error or "unparsable event"
                continue
            if first is None:
                first = time.perf_counter() - t0
                if disconnect:
                    # Go away mid-stream: shut the socket so Corral sees the client leave.
                    sock.shutdown(socket.SHUT_RDWR)
                    with stats.lock:
                        stats.disconnects += 1
                        stats.by_kind[kind]["disconnected"] += 1
                        stats.ttfb[kind].append(first)
                    return 0
            if isinstance(event, dict) and "error" in event:
                e = event["error"]
                error = str(e.get("code") or e.get("type")) if isinstance(e, dict) else re.sub(r"'[^']*'", "'…'", str(e))[:60]
            if ndjson and isinstance(event, dict) and event.get("done"):
                break
        with stats.lock:
            if error:
                stats.errors[f"mid-stream error event: {error}"] += 1
                stats.by_kind[kind]["error"] += 1
            elif first is None:
                stats.errors["stream ended without events"] += 1
                stats.by_kind[kind]["error"] += 1
            else:
                stats.by_kind[kind]["ok"] += 1
                stats.latency[kind].append(time.perf_counter() - t0)
                stats.ttfb[kind].append(first)
        return 0
    except Exception as e:  # noqa: BLE001 - every client-side failure is a counted kind
        with stats.lock:
            if sent:
                stats.errors[f"client {type(e).__name__}"] += 1
                stats.by_kind[kind]["error"] += 1
            else:
                stats.not_sent[type(e).__name__] += 1
        return 0.1
    finally:
        conn.close()
        if sent:
            with stats.lock:
                stats.finished += 1


def worker(port: int, keys: dict, deadline: float, stats: Stats, seed: int):
    rnd = random.Random(seed)
    teams = list(TEAMS)
    weights = [TEAMS[t][0] for t in teams]
    kinds = list(KINDS)
    while time.time() < deadline:
        team = rnd.choices(teams, weights)[0]
        pause = one_request(port, keys[team], team, rnd.choice(kinds), stats)
        if pause:
            time.sleep(min(pause, max(0, deadline - time.time())))


# ---------------------------------------------------------------- metrics and numbers

def parse_histograms(text: str) -> dict:
    """name -> {le: cumulative count} summed over label sets."""
    out: dict = collections.defaultdict(lambda: collections.defaultdict(float))
    for line in text.splitlines():
        m = re.match(r'^(\w+)_bucket\{(.*)\}\s+(\S+)$', line)
        if not m:
            continue
        le = re.search(r'le="([^"]+)"', m.group(2)).group(1)
        out[m.group(1)][float("inf") if le == "+Inf" else float(le)] += float(m.group(3))
    return out


def parse_counter(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(None, 1)[1])
    return total


def histogram_quantile(buckets: dict, q: float) -> float | None:
    """Prometheus-style: linear interpolation inside the bucket holding the q-th observation."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total == 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if b == float("inf"):
                return prev_bound  # beyond the last finite bound: the best we can say
            if c == prev_count:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (c - prev_count)
        prev_bound, prev_count = b, c
    return prev_bound


def quantile_text(buckets: dict, q: float) -> str:
    """The interpolated quantile with the edges of the bucket it falls in, e.g. "0.29 ms (0–0.5 ms)"."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return "–"
    rank, lo = q * buckets[bounds[-1]], 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if b == float("inf"):
                return f"> {ms(lo)} (beyond the last bucket)"
            return f"{ms(histogram_quantile(buckets, q))} ({lo * 1000:g}–{b * 1000:g} ms)"
        lo = b
    return "–"


def pct(v: list[float], p: float) -> float | None:
    if not v:
        return None
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    if den == 0:
        return None
    return sum((t - mx) * (y - my) for t, y in points) / den * 60


def ms(v: float | None) -> str:
    return "–" if v is None else (f"{v * 1000:.2f} ms" if v < 1 else f"{v:.2f} s")


def machine() -> str:
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        pass
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}){', ' + cpu if cpu else ''}, {mem}, {platform.system()} {platform.release()}"


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corral", required=True, help="the corral binary")
    ap.add_argument("--seconds", type=float, default=600, help="how long to send traffic (default 600)")
    ap.add_argument("--concurrency", type=int, default=16, help="client threads (default 16: saturates 2 cores)")
    ap.add_argument("--sample-every", type=float, default=10, help="seconds between resource samples (default 10)")
    ap.add_argument("--max-loaded", type=int, default=2,
                    help="scheduler.maxLoadedModels (default 2: three models keep swapping; 3 turns swaps off)")
    ap.add_argument("--benchmarks", help="replace the text between the soak markers of this file with the report")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (config, data, log)")
    args = ap.parse_args()
    corral = os.path.abspath(args.corral)
    started_at = datetime.datetime.now(datetime.timezone.utc)

    d = tempfile.mkdtemp(prefix="corral-soak-")
    data_dir = f"{d}/data"
    port = free_port()
    for name, shape in ((CHAT_MODELS[0], None), (CHAT_MODELS[1], None), (EMBED_MODEL, "embedding=true")):
        run_tool([corral, "models", "make-test", "--out", d, "--name", name] + (["--shape", shape] if shape else []))
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "dataDirectory": data_dir,
        "scheduler": {"maxLoadedModels": args.max_loaded},
        "models": [{"name": m, "path": f"{d}/{m}.gguf", "contextSize": 1024, "parallel": 4} for m in CHAT_MODELS]
        + [{"name": EMBED_MODEL, "path": f"{d}/{EMBED_MODEL}.gguf", "contextSize": 1024, "parallel": 2, "embeddings": True}],
    }
    p = None
    for attempt in range(10):
        try:
            p = start(corral, d, config, port)
            break
        except FileNotFoundError:
            time.sleep(3)
    if p is None:
        raise RuntimeError(f"{corral} not found")

    stats = Stats()
    sampler = Sampler(p.pid, d, args.sample_every, port, stats)
    print(f"soak: corral pid {p.pid}, port {port}, temp dir {d}", file=sys.stderr, flush=True)
    crashed = None
    shutdown_s = None
    exit_code = None
    ledger_before_stop = None
    ledger = {}
    metrics_text = ""
    leftover = []
    end_sample = None
    traffic_s = 0.0
    metrics_error = None
    try:
        token = open(f"{data_dir}/admin-token").read().strip()
        keys = {}
        for team, (_, limits) in TEAMS.items():
            s, r = call(port, "POST", "/admin/teams", {"name": team, **limits}, token)
            if s >= 300:
                raise RuntimeError(f"creating team {team}: {s} {r}")
            s, r = call(port, "POST", f"/admin/teams/{team}/keys", {"name": "soak"}, token)
            if s >= 300:
                raise RuntimeError(f"creating a key for {team}: {s} {r}")
            keys[team] = r["key"]

        sampler.sample()  # the start: before any traffic, no model loaded
        sampler.start()
        t_start = time.time()
        deadline = t_start + args.seconds
        threads = [threading.Thread(target=worker, args=(port, keys, deadline, stats, i), daemon=True) for i in range(args.concurrency)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            if p.poll() is not None and crashed is None:
                crashed = f"corral exited with {p.returncode} during the run"
        traffic_s = time.time() - t_start  # until the last client thread ended (sending stops at the deadline)
        sampler.stop_event.set()
        sampler.join()

        time.sleep(1.2)  # the ledger writes every 200 ms
        if p.poll() is not None and crashed is None:
            crashed = f"corral exited with {p.returncode} during the run"
        end_sample = sampler.sample() if crashed is None else None  # after the drain: nothing in flight
        metrics_error = None
        if crashed is None:
            try:
                s, metrics_text = call(port, "GET", "/metrics", None, token, timeout=15)
                if s != 200:
                    metrics_error, metrics_text = f"HTTP {s}", ""
            except OSError as e:
                metrics_error, metrics_text = f"{type(e).__name__} {e}", ""
        db = f"{data_dir}/corral.sqlite"
        try:
            c = sqlite3.connect(db, timeout=10)
            ledger_before_stop = c.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
            c.close()
        except sqlite3.Error as e:
            ledger_before_stop = f"unreadable: {e}"

        # Stop Corral: SIGTERM, time to exit, then what is left of this run.
        if p.poll() is None:
            t0 = time.perf_counter()
            p.send_signal(signal.SIGTERM)
            try:
                exit_code = p.wait(timeout=60)
                shutdown_s = time.perf_counter() - t0
            except subprocess.TimeoutExpired:
                p.kill()
                exit_code = p.wait()
                shutdown_s = None
        else:
            exit_code = p.returncode
        leftover = our_llama_servers(d)
        if leftover:
            time.sleep(2)
            leftover = our_llama_servers(d)
        for pid, ppid in leftover:
            sampler.orphans.setdefault(pid, f"pid {pid} ppid {ppid} (left after Corral exited): {cmdline(pid)[:200]}")

        # The ledger after the final flush.
        try:
            c = sqlite3.connect(db, timeout=10)
            cols = [r[1] for r in c.execute("PRAGMA table_info(usage)")]
            ledger["rows"] = c.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
            ledger["by_route_status"] = collections.Counter(
                {(r[0], r[1]): r[2] for r in c.execute("SELECT route, status, COUNT(*) FROM usage GROUP BY route, status")})
            ledger["disconnected"] = c.execute("SELECT COUNT(*) FROM usage WHERE clientDisconnected").fetchone()[0] \
                if "clientDisconnected" in cols else None
            ledger["error_kinds"] = collections.Counter(
                {(r[0] or "-"): r[1] for r in c.execute("SELECT errorKind, COUNT(*) FROM usage WHERE status != 200 OR errorKind IS NOT NULL GROUP BY errorKind")})
            ledger["ids"] = {r[0] for r in c.execute("SELECT requestID FROM usage")}
            team_names = {}
            try:
                team_names = {r[0]: r[1] for r in c.execute("SELECT id, name FROM team")}
            except sqlite3.Error:
                pass
            ledger["by_team"] = collections.Counter(
                {team_names.get(r[0], r[0]): r[1] for r in c.execute("SELECT team, COUNT(*) FROM usage GROUP BY team")})
            c.close()
        except sqlite3.Error as e:
            ledger["error"] = str(e)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for pid, _ in our_llama_servers(d):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    # ------------------------------------------------------------ the report
    log_text = open(f"{d}/corral.log", errors="replace").read() if os.path.exists(f"{d}/corral.log") else ""
    log_lines = [l for l in log_text.splitlines() if l.strip()]
    levels = collections.Counter()
    messages = collections.Counter()
    for l in log_lines:
        m = re.search(r"\b(trace|debug|info|notice|warning|error|critical)\b", l)
        lv = m.group(1) if m else "other"
        levels[lv] += 1
        if lv in ("warning", "error", "critical"):
            msg = re.sub(r"^\S+\s+", "", l)  # drop the timestamp
            msg = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(\.\d+)?", "N", msg)[:160]
            messages[msg] += 1

    samples = sampler.samples
    start_s = samples[0] if samples else None
    during = [s for s in samples if end_sample is None or s is not end_sample]
    half = args.seconds / 2
    second_half = [(s["t"], s["rss_mib"]) for s in during if s["t"] >= half]
    rss_slope = slope_per_minute(second_half)
    fd_slope = slope_per_minute([(s["t"], s["fds"]) for s in during if s["t"] >= half])
    first_half_fd_max = max((s["fds"] for s in during if s["t"] < half), default=None)
    last = end_sample or (samples[-1] if samples else None)

    # Stalls: the longest stretch between samples in which no request finished while traffic ran.
    stall_s, prev = 0.0, None
    for s_ in during[1:]:
        if prev is not None and s_["finished"] == prev["finished"]:
            stall_s = max(stall_s, s_["t"] - stall_start)
        else:
            stall_start = s_["t"]
        prev = s_
    health_failures = sum(1 for s_ in during if s_.get("health_ms") is None)
    hist = parse_histograms(metrics_text)
    sent = stats.sent
    total_ok = sum(c["ok"] for c in stats.by_kind.values())
    total_err = sum(c["error"] for c in stats.by_kind.values())
    rows = ledger.get("rows")
    expected_rows = sent  # every request our traffic sends reaches a model route with a valid key and body
    missing_ids = stats.request_ids - ledger.get("ids", set())

    L = []
    L.append(f"Soak run {started_at.strftime('%Y-%m-%d %H:%M UTC')}; machine: {machine()}.")
    shown = os.path.relpath(corral, ROOT) if corral.startswith(ROOT + "/") else corral
    L.append(f"Binary `{shown}`; new requests for {args.seconds:g} s, the last answer {traffic_s:.0f} s after the start; "
             f"concurrency {args.concurrency}. Reproduce: `python3 scripts/soak.py --corral {shown} --seconds {args.seconds:g} "
             f"--concurrency {args.concurrency}" + (f" --max-loaded {args.max_loaded}" if args.max_loaded != 2 else "")
             + "` (`make soak` runs it for 600 s on the release build).")
    L.append("")
    L.append(f"Setup: three generated tiny models ({', '.join(CHAT_MODELS)} chat with 4 slots, {EMBED_MODEL} embeddings with 2), "
             f"context 1024, `scheduler.maxLoadedModels: {args.max_loaded}`{' so the fleet swaps' if args.max_loaded < 3 else ' (no swaps)'}; three teams: "
             + ", ".join(f"{t} ({int(w * 100)}% of requests{', limited to ' + str(lim['requestsPerMinute']) + ' req/min and ' + str(lim['maxParallel']) + ' parallel, so 429s are expected' if lim['requestsPerMinute'] < 1000 else ''})"
                         for t, (w, lim) in TEAMS.items())
             + f". Each request: a random team and kind, fresh connection, max_tokens/num_predict 4–32; "
             f"{int(DISCONNECT_SHARE * 100)}% of streamed requests close the socket after the first event; after a 429/503 the "
             "client waits Retry-After (at most 1 s).")
    L.append("")
    L.append(f"**Requests sent: {sent}** ({sent / traffic_s:.1f}/s), served OK {total_ok}, disconnected on purpose {stats.disconnects}, "
             f"errors {total_err}" + (f"; not sent (connection failed): {sum(stats.not_sent.values())} {dict(stats.not_sent)}" if stats.not_sent else "") + ".")
    L.append("")
    L.append("| kind | sent | ok | disconnected | errors | client p50 | client p99 | first event p50 |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind in KINDS:
        c = stats.by_kind.get(kind, collections.Counter())
        L.append(f"| {kind} | {c['sent']} | {c['ok']} | {c['disconnected']} | {c['error']} | {ms(pct(stats.latency[kind], 50))} | "
                 f"{ms(pct(stats.latency[kind], 99))} | {ms(pct(stats.ttfb[kind], 50)) if KINDS[kind][1] else ''} |")
    L.append("")
    L.append("Client latency is send → last byte of a served answer (fresh TCP connection included"
             + (", models swapping" if args.max_loaded < 3 else "") + ", 2 cores shared by Corral, llama-servers and the client).")
    L.append("")
    L.append("| error kind (as the client saw it) | count |")
    L.append("|---|---:|")
    if stats.errors:
        for k, v in stats.errors.most_common():
            L.append(f"| {k} | {v} |")
    else:
        L.append("| none | 0 |")
    L.append("")
    L.append("Latency added by Corral, from its `/metrics` histograms over every request of the run (all models; p50/p99 "
             "interpolated linearly inside the bucket, as Prometheus' `histogram_quantile`, so they are estimates bounded by "
             "the bucket edges 0.5/1/2.5/5/10/25 ms…, shown in parentheses; a value in the 0–0.5 ms bucket means about zero for "
             "queue and load). The gateway overhead is Corral's own measure from the start of the relay to the request going "
             "upstream (admission, lease, request building), queue and load excluded; it does not include reading the body, "
             "authentication before the relay, nor the response path:")
    L.append("")
    L.append("| histogram | count | p50 | p99 |")
    L.append("|---|---:|---:|---:|")
    for name, what in (("corral_gateway_overhead_seconds", "gateway overhead (arrival → sent upstream, queue and load excluded)"),
                       ("corral_queue_seconds", "queue (waiting for a slot)"),
                       ("corral_load_seconds", "load (model start for the request)"),
                       ("corral_time_to_first_token_seconds", "time to first byte from the model"),
                       ("corral_request_duration_seconds", "request duration")):
        h = hist.get(name, {})
        count = int(h.get(float("inf"), 0))
        L.append(f"| {what} | {count} | {quantile_text(h, 0.5)} | {quantile_text(h, 0.99)} |")
    if metrics_error:
        L.append("")
        L.append(f"**`/metrics` did not answer at the end: {metrics_error}.**")
    if metrics_text:
        L.append("")
        L.append(f"`corral_requests_total` {parse_counter(metrics_text, 'corral_requests_total'):.0f}, "
                 f"`corral_client_disconnects_total` {parse_counter(metrics_text, 'corral_client_disconnects_total'):.0f}.")
    L.append("")
    L.append("| resource (Corral process) | start | end | max | trend over the second half |")
    L.append("|---|---:|---:|---:|---:|")
    if start_s and last:
        L.append(f"| RSS | {start_s['rss_mib']:.1f} MiB | {last['rss_mib']:.1f} MiB | {max(s['rss_mib'] for s in samples):.1f} MiB | "
                 f"{'–' if rss_slope is None else f'{rss_slope:+.2f} MiB/min'} |")
        L.append(f"| open fds | {start_s['fds']} | {last['fds']} | {max(s['fds'] for s in samples)} | "
                 f"{'–' if fd_slope is None else f'{fd_slope:+.2f} /min'} |")
        L.append(f"| threads | {start_s['threads']} | {last['threads']} | {max(s['threads'] for s in samples)} | |")
        L.append(f"| child llama-servers | {start_s['llama']} | {last['llama']} | {max(s['llama'] for s in samples)} | |")
        L.append(f"| child processes (any) | {start_s['children']} | {last['children']} | {max(s['children'] for s in samples)} | |")
    L.append("")
    L.append(f"Sampled every {args.sample_every:g} s ({len(samples)} samples; start = after the teams were made, before traffic; "
             "end = after the traffic drained). Requests finished by each sample: "
             + ", ".join(str(s["finished"]) for s in samples) + ". `/health` answer time (ms): "
             + ", ".join("–" if s.get("health_ms") is None else f"{s['health_ms']:.0f}" for s in samples) + ". RSS samples (MiB): "
             + ", ".join(f"{s['rss_mib']:.0f}" for s in samples) + ". Fds: " + ", ".join(str(s["fds"]) for s in samples) + ".")
    L.append("")
    L.append(f"Shutdown: SIGTERM → " + (f"exit {exit_code} after {ms(shutdown_s)}." if shutdown_s is not None
             else "no exit within 60 s; killed with SIGKILL (rows still queued in the ledger are lost)." if not crashed else "(had crashed)."))
    lr = ledger.get("by_route_status", collections.Counter())
    L.append("")
    L.append("| route | status | client saw | ledger rows |")
    L.append("|---|---:|---:|---:|")
    for key in sorted(set(stats.by_route_status) | set(lr)):
        L.append(f"| {key[0]} | {key[1]} | {stats.by_route_status.get(key, 0)} | {lr.get(key, 0)} |")
    if ledger.get("by_team"):
        L.append("")
        L.append("Ledger rows by team: " + ", ".join(f"{t} {n} (sent {stats.by_team.get(t, 0)})" for t, n in sorted(ledger["by_team"].items(), key=str)) + ".")
    if ledger.get("error_kinds"):
        L.append("Ledger error kinds: " + ", ".join(f"{k} {v}" for k, v in ledger["error_kinds"].most_common()) + ".")
    if ledger.get("disconnected") is not None:
        L.append(f"Ledger rows marked clientDisconnected: {ledger['disconnected']} (the client abandoned {stats.disconnects} streams; "
                 "a stream whose remaining bytes fit in the socket buffers ends normally on Corral's side).")
    L.append("")
    if levels:
        L.append("Corral log (`--log-level warning`): " + ", ".join(f"{k} {v}" for k, v in levels.most_common()) + " lines"
                 + (". Most frequent: " + "; ".join(f"`{m}` ×{n}" for m, n in messages.most_common(3)) if messages else "") + ".")
    else:
        L.append("Corral log (`--log-level warning`): empty.")
    L.append("")

    verdicts = []
    failed = False
    if crashed:
        verdicts.append(f"- Corral: **crashed** ({crashed}).")
        failed = True
    else:
        verdicts.append(f"- Corral: stayed up; " + (f"SIGTERM → exit {exit_code} in {ms(shutdown_s)}." if shutdown_s is not None
                        else "**did not exit within 60 s of SIGTERM** (killed)."))
        failed |= shutdown_s is None
    if stall_s > 0 or health_failures:
        verdicts.append(f"- Progress: **stalled**: no request finished for about {stall_s:.0f} s while clients were sending; "
                        f"`/health` failed to answer within 5 s in {health_failures} of {len(during)} samples.")
        failed = True
    else:
        verdicts.append("- Progress: requests finished between every pair of samples; `/health` always answered.")
    if rss_slope is None:
        verdicts.append("- RSS trend: not enough samples in the second half to judge.")
    else:
        grow = rss_slope > 1.0
        verdicts.append(f"- RSS trend: {'**growing**' if grow else 'flat'} ({rss_slope:+.2f} MiB/min over the second half; "
                        f"start {start_s['rss_mib']:.1f}, end {last['rss_mib']:.1f}, max {max(s['rss_mib'] for s in samples):.1f} MiB).")
    if start_s and last and first_half_fd_max is not None:
        leak = last["fds"] > first_half_fd_max + 8
        verdicts.append(f"- File descriptors: {'**leak suspected**' if leak else 'no leak'} (end {last['fds']} after the drain vs "
                        f"{first_half_fd_max} max in the first half, start {start_s['fds']}).")
    if sampler.orphans:
        verdicts.append(f"- Orphans: **{len(sampler.orphans)} llama-server(s) not parented by Corral**: "
                        + "; ".join(sampler.orphans.values()))
        failed = True
    else:
        verdicts.append(f"- Orphans: none (no llama-server of this run outside Corral during the run, none left after it exited).")
    if rows is None:
        verdicts.append(f"- Ledger: **unreadable** ({ledger.get('error')}).")
        failed = True
    else:
        match = rows == expected_rows
        verdicts.append(f"- Ledger: {rows} rows for {expected_rows} requests sent: {'equal' if match else '**not equal**'}"
                        f" (before SIGTERM {ledger_before_stop}); OpenAI answers whose x-request-id has no row: {len(missing_ids)}.")
        failed |= not match
    L.append("Verdict:")
    L.extend(verdicts)
    report = "\n".join(L) + "\n"

    print(report)
    notes = f"{args.seconds:g} s, concurrency {args.concurrency}, maxLoadedModels {args.max_loaded}"
    results = [("soak.orphans", "Orphan llama-servers seen", len(sampler.orphans), "processes", "= 0", not sampler.orphans, notes),
               ("soak.requests_sent", "Requests sent", sent, "requests", None, None, notes),
               ("soak.served_ok", "Requests served OK", total_ok, "requests", None, None, notes),
               ("soak.errors", "Errors as the client saw them (429s expected)", total_err, "requests", None, None,
                ", ".join(f"{k} {v}" for k, v in stats.errors.most_common()) or notes)]
    if rows is not None:
        results.append(("soak.ledger_rows_minus_sent", "Ledger rows minus requests sent", rows - expected_rows, "rows", "= 0",
                        rows == expected_rows, f"{rows} rows for {expected_rows} requests sent"))
    if rss_slope is not None:
        results.append(("soak.rss_slope_mib_per_min", "Corral's RSS trend over the second half", round(rss_slope, 2), "MiB/min", "≤ 1",
                         rss_slope <= 1.0, notes))
    if start_s and last and first_half_fd_max is not None:
        results.append(("soak.fds_end", "Corral's open file descriptors after the drain", last["fds"], "fds", "≤ first half's max + 8",
                        last["fds"] <= first_half_fd_max + 8, f"{first_half_fd_max} at most in the first half, {start_s['fds']} at the start"))
    if shutdown_s is not None:
        results.append(("soak.shutdown_ms", "SIGTERM to exit", round(shutdown_s * 1000, 2), "ms", "≤ 60000", True, notes))
    if traffic_s > 0:
        results.append(("soak.requests_per_s", "Requests sent per second", round(sent / traffic_s, 1), "req/s", None, None, notes))
    for q in (50, 99):
        overhead = histogram_quantile(hist.get("corral_gateway_overhead_seconds", {}), q / 100)
        if overhead is not None:
            results.append((f"soak.gateway_overhead_p{q}_ms", f"Gateway overhead p{q} (Corral's histogram, an estimate)", round(overhead * 1000, 2),
                            "ms", None, None, notes))
    for measure, title, value, unit, goal, met, why in results:
        record("soak", measure, title, value, unit, goal=goal, met=met, notes=why)
    os.makedirs(f"{ROOT}/artifacts", exist_ok=True)
    with open(f"{ROOT}/artifacts/soak.md", "w") as f:
        f.write(report)
    if args.benchmarks:
        text = open(args.benchmarks).read()
        i, j = text.find(BEGIN), text.find(END)
        if i < 0 or j < i:
            print(f"{args.benchmarks}: soak markers not found; not updated", file=sys.stderr)
        else:
            with open(args.benchmarks, "w") as f:
                f.write(text[:i + len(BEGIN)] + "\n" + report + text[j:])
    if missing_ids:
        print("x-request-ids without a ledger row (first 10): " + ", ".join(sorted(missing_ids)[:10]), file=sys.stderr)
    if args.keep:
        print(f"kept {d}", file=sys.stderr)
    else:
        shutil.rmtree(d, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
