#!/usr/bin/env python3
"""Where Corral's added latency goes: median latency of its own routes on a running Corral.

Usage: probe_overhead.py PORT TOKEN_FILE   (Corral serving the `demo` model; TOKEN_FILE is its
data/admin-token, for /admin/instances)
Prints /health (server only), /v1/models (one scheduler actor hop + JSON), an unknown model
(body parse + actor), and a proxied /tokenize next to the same call straight to the child.
"""
import http.client
import json
import statistics
import sys
import time

port = int(sys.argv[1])
token = open(sys.argv[2]).read().strip()


def run(p: int, path: str, body: dict | None = None, n: int = 600) -> float:
    c = http.client.HTTPConnection("127.0.0.1", p, timeout=10)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        if body is not None:
            c.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
        else:
            c.request("GET", path)
        r = c.getresponse()
        r.read()
        ts.append(time.perf_counter() - t)
    return round(statistics.median(ts) * 1000, 3)


run(port, "/tokenize", {"model": "demo", "content": "hi"}, n=5)  # load the model
c = http.client.HTTPConnection("127.0.0.1", port)
c.request("GET", "/admin/instances", headers={"authorization": f"Bearer {token}"})
child = [i for i in json.loads(c.getresponse().read()) if i["model"] == "demo"][0]["port"]
for _ in range(2):
    print("ms p50:", "/health", run(port, "/health"), "| /v1/models", run(port, "/v1/models"),
          "| unknown model", run(port, "/v1/chat/completions", {"model": "zzz", "messages": []}),
          "| /tokenize via corral", run(port, "/tokenize", {"model": "demo", "content": "hi"}),
          "| /tokenize direct", run(child, "/tokenize", {"content": "hi"}))
