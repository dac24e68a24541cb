#!/usr/bin/env python3
"""Side-by-side latency benchmark: Corral vs straight to llama-server vs llama.cpp router mode.

All three serve the same tiny generated model on loopback in one run; requests are interleaved
(each round in a shuffled order, seeded) so drift and the previous request's spinning threads hit
all three alike.

Measures
  warm non-streaming  max_tokens=1 chat: p50/p99 latency, and what each proxy adds over direct,
                      interleaved and again in blocks (one system at a time); Corral's CPU time
                      per request
  warm streaming      time to first token (first content event), interleaved and in blocks
  cold start          first request to first token from unloaded (Corral: admin unload;
                      router: /models/unload; direct: spawn llama-server + wait /health + request)
  swap                alternate two models with one slot (Corral maxLoadedModels=1; router --models-max 1)
  floor (with --floor) a bare SwiftNIO HTTP/1.1 proxy in front of the direct llama-server
                      (benchmarks/nio-floor): what any gateway on Corral's stack pays per request
                      before doing any work of its own; measured in the blocks only
Usage: bench_gateway.py --corral .build-release/release/corral [--n 300] [--floor benchmarks/nio-floor/.build/release/nio-floor]
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time

from corral_harness.corral import free_port
from corral_harness.results import record
from corral_http import answers

LLAMA_BIN = os.path.expanduser(os.environ.get("CORRAL_LLAMA_CACHE", "~/.cache/corral/llama.cpp") + "/11434.0.0/bin")
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def wait_http(port: int, path: str = "/health", timeout: float = 60) -> None:
    if answers(port, path, timeout, 0.005):
        return
    raise RuntimeError(f"port {port} not ready")


class Client:
    """One keep-alive connection, like a real client."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def chat(self, model: str | None, stream: bool = False, max_tokens: int = 1) -> tuple[float, float]:
        body = dict(BODY, max_tokens=max_tokens, stream=stream)
        if model:
            body["model"] = model
        data = json.dumps(body)
        if stream:  # servers may close after an event stream: a fresh connection for every system
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        t0 = time.perf_counter()
        self.conn.request("POST", "/v1/chat/completions", body=data, headers={"content-type": "application/json"})
        r = self.conn.getresponse()
        first = None
        if stream:
            while True:
                line = r.readline()
                if not line:
                    break
                if first is None and b'"content":"' in line:
                    first = time.perf_counter() - t0
                if line.startswith(b"data: [DONE]"):
                    break
            r.read()
        else:
            r.read()
        total = time.perf_counter() - t0
        if r.status != 200:
            raise RuntimeError(f"status {r.status} from port {self.port}")
        return total, first if first is not None else total

    def post(self, path: str, body: dict, token: str | None = None) -> int:
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self.conn.request("POST", path, body=json.dumps(body), headers=headers)
        r = self.conn.getresponse()
        r.read()
        return r.status


def cpu_seconds(pid: int) -> float:
    """CPU time of a process's threads so far, in nanoseconds from schedstat (the clock-tick
    counts in /proc/PID/stat are 10 ms coarse, too coarse for a few hundred 4 ms requests)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended; its time is lost to both readings alike
    return total / 1e9


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def ms(x: float) -> str:
    return f"{x * 1000:.2f} ms"


def record_gateway(args, added: dict, badded: dict, blocks: dict, corral_cpu: float, ttft_blocks: dict, cold: dict, swap: dict,
                   floor: bool) -> None:
    """The run's headline measures, appended to the results file (milliseconds, ratios)."""
    def r(measure, title, seconds, goal=None, limit=None):
        value = round(seconds * 1000, 2)
        record("bench-gateway", measure, title, value, "ms", goal=goal, met=None if limit is None else value <= limit, notes=notes)

    def ratio(measure, title, a, b):
        if b > 0:  # the router measured faster than direct leaves no ratio
            value = round(a / b, 2)
            record("bench-gateway", measure, title, value, "×", goal="≤ 0.5", met=value <= 0.5, notes=notes)

    notes = f"n={args.n}, {args.blocks} blocks, cold/swap n={args.cold}" + ("" if floor else ", no floor")
    ratio("gateway.added_p50_ratio_blocks", "Corral's added p50 ÷ the router's, warm chat in blocks", badded["corral"], badded["router"])
    ratio("gateway.added_p50_ratio_interleaved", "Corral's added p50 ÷ the router's, warm chat interleaved", added["corral"], added["router"])
    r("gateway.corral_added_p50_blocks_ms", "Corral's added p50 over straight to llama-server, in blocks", badded["corral"])
    r("gateway.router_added_p50_blocks_ms", "The router's added p50 over straight to llama-server, in blocks", badded["router"])
    if floor:
        r("gateway.floor_added_p50_blocks_ms", "A bare SwiftNIO proxy's added p50 (the floor), in blocks",
          pct(blocks["floor"], 50) - pct(blocks["direct"], 50))
    r("gateway.corral_added_p50_interleaved_ms", "Corral's added p50 over straight to llama-server, interleaved", added["corral"])
    r("gateway.router_added_p50_interleaved_ms", "The router's added p50 over straight to llama-server, interleaved", added["router"])
    r("gateway.corral_cpu_per_request_ms", "Corral's CPU time per warm request (all its threads)", corral_cpu / len(blocks["corral"]))
    r("gateway.ttft_blocks_corral_ms", "Streaming time to first token through Corral, p50, in blocks", pct(ttft_blocks["corral"], 50))
    r("gateway.ttft_blocks_router_ms", "Streaming time to first token through the router, p50, in blocks", pct(ttft_blocks["router"], 50))
    r("gateway.cold_start_over_direct_ms", "Cold start to first token, Corral's p50 minus a bare llama-server's",
      pct(cold["corral"], 50) - pct(cold["direct"], 50), goal="≤ 50", limit=50)
    r("gateway.swap_corral_p50_ms", "Swap between two models with one loaded, Corral p50", pct(swap["corral"], 50))
    r("gateway.swap_router_p50_ms", "Swap between two models with one loaded, router p50", pct(swap["router"], 50))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", default=".build-release/release/corral")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--cold", type=int, default=10)
    ap.add_argument("--blocks", type=int, default=3, help="rounds of the blocked measurement")
    ap.add_argument("--floor", help="nio-floor binary: a bare NIO proxy measured in the blocks for reference")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="corral-bench-")
    os.makedirs(f"{d}/models")
    for name in ("tiny", "tiny2"):
        subprocess.run([args.corral, "models", "make-test", "--out", f"{d}/models", "--name", name], check=True, capture_output=True)
    procs = []
    common = ["-c", "2048", "-np", "4", "--no-webui"]

    def spawn(cmd, log):
        p = subprocess.Popen(cmd, stdout=open(f"{d}/{log}", "w"), stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        direct_port, corral_port, router_port = free_port(), free_port(), free_port()
        spawn([f"{LLAMA_BIN}/llama-server", "-m", f"{d}/models/tiny.gguf", "--port", str(direct_port), *common], "direct.log")
        config = {
            "listen": {"host": "127.0.0.1", "port": corral_port}, "dataDirectory": f"{d}/data",
            "scheduler": {"maxLoadedModels": 1, "defaultTTL": -1},
            "models": [{"name": n, "path": f"{d}/models/{n}.gguf", "contextSize": 2048, "parallel": 4} for n in ("tiny", "tiny2")],
        }
        json.dump(config, open(f"{d}/routes.json", "w"))
        spawn([args.corral, "serve", "--config", f"{d}/routes.json", "--log-level", "warning"], "corral.log")
        spawn([f"{LLAMA_BIN}/llama-server", "--models-dir", f"{d}/models", "--models-max", "1", "--port", str(router_port), *common], "router.log")
        for p in (direct_port, corral_port, router_port):
            wait_http(p)
        clients = {"direct": Client(direct_port), "corral": Client(corral_port), "router": Client(router_port)}
        models = {"direct": None, "corral": "tiny", "router": "tiny", "floor": None}
        floor = None
        if args.floor:
            floor_port = free_port()
            spawn([args.floor, str(floor_port), str(direct_port)], "floor.log")
            wait_http(floor_port)
            floor = Client(floor_port)
        for name, c in clients.items():  # load and warm
            for _ in range(20):
                c.chat(models[name])
        # Corral's measured instance is a reload, as on any machine that has served the model
        # before: a model's first load with given arguments runs llama-server at -lv 4 to learn
        # its allocations (about 20 more log lines per request); later loads run at -lv 3, the
        # level the direct and router servers run at (docs/decisions/005-learned-allocations.md).
        token = open(f"{d}/data/admin-token").read().strip()
        Client(corral_port).post("/admin/models/tiny/unload", {}, token=token)
        for _ in range(20):
            clients["corral"].chat("tiny")

        lat = {k: [] for k in clients}
        ttft = {k: [] for k in clients}
        # Each round's order is shuffled (seeded): a request that lands right after another
        # system's competes with that system's llama-server threads, which still spin for a while
        # (worth 0.7-1.5 ms to a stream on two cores), so a fixed order charged that to whoever
        # came second, and a rotating one still put one system after direct twice in three.
        names = list(clients)
        shuffler = random.Random(11434)

        def round_order() -> list[str]:
            order = names[:]
            shuffler.shuffle(order)
            return order

        for _ in range(args.n):
            for name in round_order():
                lat[name].append(clients[name].chat(models[name])[0])
        # The same requests in blocks: one system at a time, so the other servers' threads are
        # idle. Interleaving spreads drift evenly but lets each system's request land while the
        # previous system's llama-server threads still spin, which inflates everyone's numbers
        # (the router's, with two processes, the most).
        blocked = dict(clients, floor=floor) if floor else clients
        blocks = {k: [] for k in blocked}
        corral_cpu = 0.0
        corral_pid = procs[1].pid
        for _ in range(args.blocks):
            for name, c in blocked.items():
                for _ in range(5):
                    c.chat(models[name])
                before = cpu_seconds(corral_pid)
                for _ in range(args.n // args.blocks):
                    blocks[name].append(c.chat(models[name])[0])
                if name == "corral":
                    corral_cpu += cpu_seconds(corral_pid) - before
        streams = max(50, args.n // 3)
        for _ in range(streams):
            for name in round_order():
                ttft[name].append(clients[name].chat(models[name], stream=True, max_tokens=4)[1])
        ttft_blocks = {k: [] for k in clients}
        for _ in range(args.blocks):
            for name in names:
                for _ in range(3):
                    clients[name].chat(models[name], stream=True, max_tokens=4)
                for _ in range(streams // args.blocks):
                    ttft_blocks[name].append(clients[name].chat(models[name], stream=True, max_tokens=4)[1])

        # Cold start: unloaded -> first token.
        cold = {k: [] for k in clients}
        admin = Client(corral_port)
        for _ in range(args.cold):
            admin.post("/admin/models/tiny/unload", {}, token=token)
            cold["corral"].append(Client(corral_port).chat("tiny", stream=True)[1])
            Client(router_port).post("/models/unload", {"model": "tiny"})
            time.sleep(0.3)  # the router unloads asynchronously
            cold["router"].append(Client(router_port).chat("tiny", stream=True)[1])
            port = free_port()
            t0 = time.perf_counter()
            p = subprocess.Popen([f"{LLAMA_BIN}/llama-server", "-m", f"{d}/models/tiny.gguf", "--port", str(port), *common],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_http(port)
            _, first = Client(port).chat(None, stream=True)
            cold["direct"].append(time.perf_counter() - t0 - (0) if first else 0)
            p.send_signal(signal.SIGTERM)
            p.wait()

        # Swap: alternate two models with one loaded at a time.
        swap = {"corral": [], "router": []}
        for i in range(args.cold * 2):
            m = "tiny2" if i % 2 == 0 else "tiny"
            swap["corral"].append(Client(corral_port).chat(m)[0])
            swap["router"].append(Client(router_port).chat(m)[0])
            time.sleep(0.05)

        d50 = pct(lat["direct"], 50)
        print(f"warm non-streaming chat, max_tokens=1, n={args.n} each (interleaved)")
        for k in clients:
            print(f"  {k:7s} p50 {ms(pct(lat[k], 50))}  p99 {ms(pct(lat[k], 99))}")
        added = {k: pct(lat[k], 50) - d50 for k in ("corral", "router")}
        print(f"  added p50 over direct: corral {ms(added['corral'])}, router {ms(added['router'])}"
              f"  -> corral/router = {added['corral'] / added['router']:.2f}" if added["router"] > 0 else "")
        print(f"  added p99 over direct: corral {ms(pct(lat['corral'], 99) - pct(lat['direct'], 99))}, router {ms(pct(lat['router'], 99) - pct(lat['direct'], 99))}")
        print(f"the same in blocks (one system at a time, {args.blocks} rounds of {args.n // args.blocks})")
        for k in blocks:
            print(f"  {k:7s} p50 {ms(pct(blocks[k], 50))}  p99 {ms(pct(blocks[k], 99))}")
        bd50 = pct(blocks["direct"], 50)
        if floor:
            print(f"  a bare NIO proxy (floor) adds {ms(pct(blocks['floor'], 50) - bd50)}")
        badded = {k: pct(blocks[k], 50) - bd50 for k in ("corral", "router")}
        print(f"  added p50 over direct: corral {ms(badded['corral'])}, router {ms(badded['router'])}"
              + (f"  -> corral/router = {badded['corral'] / badded['router']:.2f}" if badded["router"] > 0 else ""))
        print(f"  Corral's own CPU time per request (its process, all threads): {ms(corral_cpu / len(blocks['corral']))}")
        print("warm streaming time to first token (a new connection each, interleaved)")
        for k in clients:
            print(f"  {k:7s} p50 {ms(pct(ttft[k], 50))}  p99 {ms(pct(ttft[k], 99))}")
        print(f"the same in blocks ({args.blocks} rounds of {streams // args.blocks})")
        for k in clients:
            print(f"  {k:7s} p50 {ms(pct(ttft_blocks[k], 50))}  p99 {ms(pct(ttft_blocks[k], 99))}")
        print(f"cold start, unloaded -> first token, n={args.cold}")
        for k in clients:
            print(f"  {k:7s} p50 {ms(pct(cold[k], 50))}  max {ms(max(cold[k]))}")
        print(f"  corral - direct spawn: {ms(pct(cold['corral'], 50) - pct(cold['direct'], 50))} (p50)")
        print(f"swap (alternating two models, one loaded), n={len(swap['corral'])}")
        for k in swap:
            print(f"  {k:7s} p50 {ms(pct(swap[k], 50))}  max {ms(max(swap[k]))}")
        record_gateway(args, added, badded, blocks, corral_cpu, ttft_blocks, cold, swap, floor is not None)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
