#!/usr/bin/env python3
"""Pulling a 1 GiB blob from a registry on loopback: Corral's throughput against `curl -o` of the
same blob, what hashing costs (curl piped through sha256sum against curl alone), Corral's memory
while it pulls (RSS sampled every 50 ms), and the bytes a fit verdict reads from a 7 GiB model's
header. Usage: CORRAL_BIN=.build-release/release/corral .venv-test/bin/python scripts/bench_pull.py
[--mib 1024] [--rounds 3]"""
import argparse
import hashlib
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from corral_harness.corral import CORRAL, start_corral, stop_corral
from corral_harness.results import record


def registry(blobs: dict, manifests: dict):
    """A registry serving blobs from files with sendfile (ranges honoured)."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            parts = self.path.strip("/").split("/")
            if parts[3:4] == ["manifests"]:
                body = manifests[parts[2]]
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            path = blobs[parts[4]]
            size = os.path.getsize(path)
            start = 0
            if self.headers.get("Range", "").startswith("bytes="):
                start = int(self.headers["Range"][6:].split("-")[0])
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.send_header("Content-Length", str(size - start))
            self.send_header("ETag", '"' + parts[4] + '"')
            self.end_headers()
            with open(path, "rb") as f:
                os.sendfile(self.connection.fileno(), f.fileno(), start, size - start)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="corral-bench-pull-")
    blob_path = os.path.join(work, "blob.bin")
    with open(blob_path, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(args.mib):
            f.write(chunk)
    digest = hashlib.sha256(open(blob_path, "rb").read()).hexdigest()
    blobs = {"sha256:" + digest: blob_path}
    manifests = {}
    for r in range(args.rounds):
        manifests[f"m{r}"] = json.dumps({"schemaVersion": 2, "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + digest, "size": args.mib << 20}]}).encode()
    httpd = registry(blobs, manifests)
    host = f"127.0.0.1:{httpd.server_address[1]}"
    url = f"http://{host}/v2/library/m0/blobs/sha256:{digest}"
    c = start_corral()
    admin = {"authorization": f"Bearer {c.admin_token}"}
    try:
        results = {"curl": [], "curl_sha": [], "corral": [], "rss": []}
        for r in range(args.rounds):
            out = os.path.join(work, "curl.bin")
            t = time.perf_counter()
            subprocess.run(["curl", "-s", "-o", out, url], check=True)
            results["curl"].append(time.perf_counter() - t)
            os.remove(out)
            t = time.perf_counter()
            subprocess.run(f"curl -s {url} | tee {out} | sha256sum > /dev/null", shell=True, check=True)
            results["curl_sha"].append(time.perf_counter() - t)
            os.remove(out)
            blob = os.path.join(c.directory, "data", "models", "blobs", "sha256-" + digest)
            if os.path.exists(blob):
                os.remove(blob)
            base_rss = rss_mib(c.proc.pid)
            peak = base_rss
            t = time.perf_counter()
            job = httpx.post(c.base + "/admin/downloads", headers=admin, json={"model": f"{host}/library/m{r}", "insecure": True}).json()
            while True:
                peak = max(peak, rss_mib(c.proc.pid))
                state = httpx.get(c.base + f"/admin/downloads/{job['id']}", headers=admin).json()["state"]
                if state in ("completed", "failed", "cancelled"):
                    break
                time.sleep(0.05)
            results["corral"].append(time.perf_counter() - t)
            assert state == "completed", state
            results["rss"].append(peak - base_rss)
        mib = args.mib
        curl, curl_sha, corral = (statistics.median(results[k]) for k in ("curl", "curl_sha", "corral"))
        print(f"{mib} MiB blob over loopback, {args.rounds} rounds (medians), {os.cpu_count()} cores")
        print(f"  curl -o:                 {curl:.2f} s  {mib / curl:.0f} MiB/s")
        print(f"  curl | tee | sha256sum:  {curl_sha:.2f} s  (hashing adds {100 * (curl_sha / curl - 1):.0f} % to a plain copy)")
        print(f"  Corral pull (verified):  {corral:.2f} s  {mib / corral:.0f} MiB/s  -> {curl / corral:.2f}x curl's throughput")
        print(f"  Corral RSS growth during the pull: max {max(results['rss']):.1f} MiB (rounds: {', '.join(f'{x:.1f}' for x in results['rss'])})")

        # The header read of a 7 GiB-class model for a fit verdict, as a fraction of the file.
        subprocess.run([CORRAL, "models", "make-test", "--out", work, "--name", "big", "--sparse", "--shape",
                        "embd=4096,layers=32,heads=32,kv=8,ff=14336,vocab=32000,ctx=8192,type=q8_0"], check=True, capture_output=True)
        big = os.path.join(work, "big.gguf")
        blobs["sha256:" + "b" * 64] = big
        manifests["big"] = json.dumps({"schemaVersion": 2, "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + "b" * 64, "size": os.path.getsize(big)}]}).encode()
        t = time.perf_counter()
        verdict = httpx.get(c.base + "/admin/library/remote/compatibility", headers=admin, params={"model": f"{host}/library/big", "insecure": "true"},
                            timeout=120).json()
        h = verdict["header"]
        fit_ms = 1000 * (time.perf_counter() - t)
        print(f"  fit verdict of a {h['fileBytes'] / 2**30:.1f} GiB model from its header: {h['bytesFetched'] / 2**20:.2f} MiB in {h['requests']} "
              f"requests ({100 * h['fraction']:.3f} % of the file), {fit_ms:.0f} ms, verdict {verdict['verdict']}")
        notes = f"{mib} MiB blob, median of {args.rounds} rounds"
        fit_notes = f"{h['bytesFetched'] / 2**20:.2f} MiB in {h['requests']} requests of a {h['fileBytes'] / 2**30:.1f} GiB model"
        for measure, title, value, unit, goal, met, why in (
                ("pull.corral_over_curl", "Corral's verified pull ÷ curl -o, throughput", round(curl / corral, 2), "×", "≥ 0.9",
                 curl / corral >= 0.9, notes),
                ("pull.hash_overhead_pct", "What hashing adds to a plain copy: curl | tee | sha256sum over curl -o",
                 round(100 * (curl_sha / curl - 1)), "%", None, None, notes),
                ("pull.corral_mib_s", "Corral pull over loopback, throughput (median)", round(mib / corral), "MiB/s", None, None, notes),
                ("pull.curl_mib_s", "curl -o of the same blob, throughput (median)", round(mib / curl), "MiB/s", None, None, notes),
                ("pull.rss_growth_mib", "Corral's RSS growth during a pull (worst round)", round(max(results["rss"]), 1), "MiB", None, None,
                 "rounds " + ", ".join(f"{x:.1f}" for x in results["rss"])),
                ("pull.fit_read_pct", "Fit verdict of a remote 8B-Q8_0-shaped model: share of the file read", round(100 * h["fraction"], 3),
                 "%", None, None, fit_notes),
                ("pull.fit_ms", "Fit verdict of a remote 8B-Q8_0-shaped model: time", round(fit_ms), "ms", None, None, fit_notes)):
            record("bench-pull", measure, title, value, unit, goal=goal, met=met, notes=why)
    finally:
        stop_corral(c)
        httpd.shutdown()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
