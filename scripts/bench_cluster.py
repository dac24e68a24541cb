#!/usr/bin/env python3
"""Cluster benchmark (issue 22), everything in one run on one real PostgreSQL:

  accounts   `corral store bench` on the SQLite backend and on the PostgreSQL backend, same
             build: 64 concurrent callers admitting (limits set, never reached), settling and
             recording requests for --seconds; admissions per second and admission p50/p99.
  end to end 64 concurrent clients sending max_tokens=1 chat requests with a team key to a
             SQLite node and to a PostgreSQL cluster node (same models, same build), alternating
             rounds; requests per second.
  routed hop sequential max_tokens=1 chat requests for a model loaded only on node B, sent to B
             directly and to A (which relays them to B), interleaved; p50 of each and what the
             hop adds.

Usage: bench_cluster.py --corral .build-release/release/corral [--seconds 5] [--n 300]
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import random
import statistics
import subprocess
import tempfile
import time

from corral_harness import corral as conftest
from corral_harness.cluster import start_node
from corral_harness.postgres import PASSWORD, Postgres
from corral_harness.results import record

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))] if s else float("nan")


def accounts(corral, pg, seconds, concurrency):
    out = {}
    env = {**os.environ, "BENCH_PGPASSWORD": PASSWORD}
    with tempfile.TemporaryDirectory() as d:
        for name, url in (("sqlite", f"sqlite:{d}/accounts.sqlite"), ("postgres", pg.url)):
            r = subprocess.run([corral, "store", "bench", "--url", url, "--password-env", "BENCH_PGPASSWORD", "--seconds", str(seconds),
                                "--concurrency", str(concurrency)], capture_output=True, text=True, env=env, check=True)
            out[name] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


class Client:
    def __init__(self, port, key):
        self.port, self.key = port, key
        self.conn = http.client.HTTPConnection("127.0.0.1", port)

    def chat(self, model):
        body = json.dumps({**BODY, "model": model})
        t = time.perf_counter()
        self.conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json", "authorization": f"Bearer {self.key}"})
        r = self.conn.getresponse()
        r.read()
        return r.status, (time.perf_counter() - t) * 1000


def admin_post(node, path, body, token):
    c = http.client.HTTPConnection("127.0.0.1", node.port)
    c.request("POST", path, json.dumps(body), {"content-type": "application/json", "authorization": f"Bearer {token}"})
    r = c.getresponse()
    return json.loads(r.read() or b"{}")


def team_key(node, token, name):
    team = admin_post(node, "/admin/teams", {"name": name, "tokensPerMinute": 100_000_000}, token)
    return admin_post(node, f"/admin/teams/{team['id']}/keys", {}, token)["key"]


def throughput(node, key, seconds, concurrency):
    deadline = time.time() + seconds

    def worker(_):
        c = Client(node.port, key)
        n = errors = 0
        while time.time() < deadline:
            status, _ = c.chat("chat")
            n += status == 200
            errors += status != 200
        return n, errors

    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(worker, range(concurrency)))
    elapsed = time.time() - started
    return sum(n for n, _ in results) / elapsed, sum(e for _, e in results)


def record_cluster(args, report: dict) -> None:
    """The run's headline measures, appended to the results file."""
    acc, e2e = report["accounts"], report["endToEnd"]
    notes = f"{args.concurrency} callers, {args.seconds:g} s, {args.rounds} end-to-end rounds, hop n={args.n}"
    for measure, title, value, unit, goal, met in (
            ("cluster.accounts_ratio", "Accounts on PostgreSQL ÷ on SQLite, admissions/s", round(report["accountsRatio"], 2), "×", "≥ 0.8",
             report["accountsRatio"] >= 0.8),
            ("cluster.hop_added_p50_ms", "Routed hop: through node A to node B over B directly, added p50", round(report["hopAddedP50Ms"], 2), "ms",
             "≤ 1", report["hopAddedP50Ms"] <= 1),
            ("cluster.postgres_admissions_per_s", "Accounts on PostgreSQL, admissions/s", round(acc["postgres"]["admissionsPerSecond"]),
             "admissions/s", None, None),
            ("cluster.sqlite_admissions_per_s", "Accounts on SQLite, admissions/s", round(acc["sqlite"]["admissionsPerSecond"]),
             "admissions/s", None, None),
            ("cluster.postgres_admission_p50_ms", "Accounts on PostgreSQL, admission p50", round(acc["postgres"]["admissionP50Ms"], 2), "ms",
             None, None),
            ("cluster.end_to_end_ratio", "End to end, PostgreSQL cluster node ÷ SQLite node, req/s", round(report["endToEndRatio"], 2), "×",
             None, None),
            ("cluster.end_to_end_postgres_rps", "End to end, PostgreSQL cluster node, req/s (median of rounds)", round(e2e["postgres"], 1),
             "req/s", None, None),
            ("cluster.end_to_end_sqlite_rps", "End to end, SQLite node, req/s (median of rounds)", round(e2e["sqlite"], 1), "req/s",
             None, None)):
        record("bench-cluster", measure, title, value, unit, goal=goal, met=met, notes=notes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", default=".build-release/release/corral")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    corral = os.path.abspath(args.corral)
    conftest.use_binary(corral)
    random.seed(22)
    pg = Postgres()
    nodes = []
    try:
        acc = accounts(corral, pg, args.seconds, args.concurrency)
        # End to end: a SQLite node and a PostgreSQL node, same models and build.
        single = conftest.start_corral(extra_models=())
        nodes.append(single)
        a = start_node(pg, "a", models=("chat", "solo"))
        b = start_node(pg, "b", models=("chat", "solo"))
        nodes += [a, b]
        single_key = team_key(single, single.admin_token, "bench")
        cluster_key = team_key(a, a.admin_token, "bench")
        for node, key in ((single, single_key), (a, cluster_key)):
            Client(node.port, key).chat("chat")  # load
        rates = {"sqlite": [], "postgres": []}
        for _ in range(args.rounds):
            for name, node, key in random.sample([("sqlite", single, single_key), ("postgres", a, cluster_key)], 2):
                rate, errors = throughput(node, key, args.seconds, args.concurrency)
                assert errors == 0, f"{name}: {errors} errors"
                rates[name].append(rate)
        # Routed hop: `solo` loaded on B only; A relays.
        admin_post(b, "/admin/models/solo/load", {}, a.admin_token)
        time.sleep(2.5)
        direct, routed = Client(b.port, cluster_key), Client(a.port, cluster_key)
        for c in (direct, routed):
            for _ in range(20):
                c.chat("solo")
        lat = {"direct": [], "routed": []}
        for _ in range(args.n):
            for name, c in random.sample([("direct", direct), ("routed", routed)], 2):
                status, ms = c.chat("solo")
                assert status == 200
                lat[name].append(ms)
        loaded_on_a = [i for i in json.loads(http_get(a, "/admin/instances", a.admin_token)) if i["model"] == "solo" and i["state"] == "loaded"]
        assert not loaded_on_a, "A loaded solo itself"
        report = {
            "accounts": acc,
            "accountsRatio": acc["postgres"]["admissionsPerSecond"] / acc["sqlite"]["admissionsPerSecond"],
            "endToEnd": {k: statistics.median(v) for k, v in rates.items()},
            "endToEndRounds": rates,
            "endToEndRatio": statistics.median(rates["postgres"]) / statistics.median(rates["sqlite"]),
            "hop": {k: {"p50": pct(v, 0.5), "p99": pct(v, 0.99)} for k, v in lat.items()},
            "hopAddedP50Ms": pct(lat["routed"], 0.5) - pct(lat["direct"], 0.5),
        }
        print(json.dumps(report, indent=2))
        record_cluster(args, report)
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                n.proc.terminate()
                n.proc.wait(timeout=30)
        pg.close()


def http_get(node, path, token):
    c = http.client.HTTPConnection("127.0.0.1", node.port)
    c.request("GET", path, headers={"authorization": f"Bearer {token}"})
    return c.getresponse().read()


if __name__ == "__main__":
    main()
