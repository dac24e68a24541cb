#!/usr/bin/env python3
"""What accounts cost: the same 64-way concurrent load through Corral with a team key (auth +
admission with reservations + usage ledger + metrics) and through Corral with accounts switched
off (--benchmark-without-accounts), on the same tiny model, rounds alternated so drift hits both.

Reports requests/s and p50/p99 latency per mode and the ratios (accounts / none).
Usage: bench_auth.py --corral .build-release/release/corral [--requests 640] [--rounds 3]
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time

from corral_harness.corral import free_port, terminate
from corral_harness.results import record
from corral_http import call

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def start(corral: str, d: str, name: str, extra: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    os.makedirs(f"{d}/{name}", exist_ok=True)
    config = {"listen": {"host": "127.0.0.1", "port": port}, "dataDirectory": f"{d}/{name}/data",
              "models": [{"name": "tiny", "path": f"{d}/tiny.gguf", "contextSize": 512, "parallel": 4}]}
    with open(f"{d}/{name}/routes.json", "w") as f:
        json.dump(config, f)
    p = subprocess.Popen([corral, "serve", "--config", f"{d}/{name}/routes.json", "--log-level", "warning", *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return p, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("corral did not start")


def run_load(port: int, key: str | None, n: int, concurrency: int) -> tuple[float, list[float]]:
    local = threading.local()
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    data = json.dumps(BODY)

    def one(_):
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        t0 = time.perf_counter()
        local.conn.request("POST", "/v1/chat/completions", body=data, headers=headers)
        r = local.conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"status {r.status}")
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, range(n)))
    return time.perf_counter() - t0, latencies


def pct(v: list[float], p: float) -> float:
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", default=".build-release/release/corral")
    ap.add_argument("--requests", type=int, default=640)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="corral-bench-auth-")
    subprocess.run([args.corral, "models", "make-test", "--out", d, "--name", "tiny"], check=True, capture_output=True)
    with_accounts, port_a = start(args.corral, d, "accounts", [])
    without, port_b = start(args.corral, d, "none", ["--benchmark-without-accounts"])
    try:
        token = open(f"{d}/accounts/data/admin-token").read().strip()
        call(port_a, "POST", "/admin/teams", {"name": "bench", "requestsPerMinute": 10_000_000, "tokensPerMinute": 1_000_000_000,
                                              "maxParallel": 1000, "tokensPerDay": 10_000_000_000}, token)
        _, key = call(port_a, "POST", "/admin/teams/bench/keys", {}, token)
        key = key["key"]
        for port, k in ((port_a, key), (port_b, None)):  # load the model and warm both
            run_load(port, k, 64, 8)
        results = {"accounts": ([], []), "none": ([], [])}
        for _ in range(args.rounds):
            for name, port, k in (("accounts", port_a, key), ("none", port_b, None)):
                elapsed, lat = run_load(port, k, args.requests, args.concurrency)
                results[name][0].append(args.requests / elapsed)
                results[name][1].extend(lat)
        time.sleep(0.5)  # let the ledger write its last batch
        import sqlite3
        rows = sqlite3.connect(f"{d}/accounts/data/corral.sqlite").execute("SELECT COUNT(*) FROM usage").fetchone()[0]
        print(f"{args.rounds} rounds x {args.requests} requests at concurrency {args.concurrency}, max_tokens=1, tiny model, 2 cores")
        print(f"{'mode':10} {'req/s':>8} {'p50':>10} {'p99':>10}")
        summary = {}
        for name, (rates, lat) in results.items():
            summary[name] = (statistics.median(rates), pct(lat, 50), pct(lat, 99))
            print(f"{name:10} {summary[name][0]:8.1f} {summary[name][1] * 1000:8.2f}ms {summary[name][2] * 1000:8.2f}ms")
        a, n = summary["accounts"], summary["none"]
        print(f"ratio accounts/none: throughput {a[0] / n[0]:.3f}, p50 latency {a[1] / n[1]:.3f}, p99 latency {a[2] / n[2]:.3f}")
        sent = 64 + args.rounds * args.requests
        print(f"ledger rows written: {rows} (requests sent with accounts: {sent})")
        notes = f"{args.rounds} rounds x {args.requests} requests at concurrency {args.concurrency}"
        for measure, title, value, unit in (
                ("auth.throughput_ratio", "Accounts on ÷ accounts off, throughput at 64 clients", round(a[0] / n[0], 3), "×"),
                ("auth.p50_ratio", "Accounts on ÷ accounts off, p50 latency", round(a[1] / n[1], 3), "×"),
                ("auth.p99_ratio", "Accounts on ÷ accounts off, p99 latency", round(a[2] / n[2], 3), "×"),
                ("auth.accounts_rps", "With accounts (key, admission, ledger), req/s", round(a[0], 1), "req/s"),
                ("auth.none_rps", "Accounts off, req/s", round(n[0], 1), "req/s")):
            record("bench-auth", measure, title, value, unit, notes=notes)
        record("bench-auth", "auth.ledger_rows_minus_sent", "Ledger rows minus requests sent with accounts", rows - sent, "rows",
               goal="= 0", met=rows == sent, notes=f"{rows} rows, {sent} sent")
    finally:
        for p in (with_accounts, without):
            terminate(p, grace=30)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
