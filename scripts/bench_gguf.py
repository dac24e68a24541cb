#!/usr/bin/env python3
"""Header parse throughput: Corral's GGUF reader vs llama.cpp's gguf-py on the same files.

Generates sparse llama-shaped models (real headers with 32k-150k-token vocabularies, tensor
data left as holes) and times:
  - corral: `corral inspect --json FILE...` (one process for all files; includes its start-up)
  - gguf-py: GGUFReader(path) for each file in one Python process (import excluded)
Usage: bench_gguf.py --corral .build/debug/corral [--files 24] [--rounds 3]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from corral_harness.results import record


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corral", default=".build/debug/corral")
    ap.add_argument("--files", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gguf-py", default=os.path.expanduser(
        os.environ.get("CORRAL_LLAMA_CACHE", "~/.cache/corral/llama.cpp") + "/11434.0.0/src/llama.cpp/gguf-py"))
    args = ap.parse_args()
    sys.path.insert(0, args.gguf_py)
    from gguf import GGUFReader  # noqa: E402

    d = tempfile.mkdtemp(prefix="corral-bench-gguf-")
    files = []
    for i in range(args.files):
        vocab = 32000 + (150000 - 32000) * i // max(1, args.files - 1)
        name = f"m{i:02d}"
        subprocess.run([args.corral, "models", "make-test", "--out", d, "--name", name, "--sparse",
                        "--shape", f"vocab={vocab},embd=256,layers=8,heads=8,kv=4,ff=512,type=f16"], check=True, capture_output=True)
        files.append(f"{d}/{name}.gguf")
    header_mb = sum(os.path.getsize(f) for f in files) / 1e6
    corral_times, py_times = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        subprocess.run([args.corral, "inspect", "--json", *files], check=True, capture_output=True)
        corral_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        for f in files:
            GGUFReader(f)
        py_times.append(time.perf_counter() - t)
    c, p = statistics.median(corral_times), statistics.median(py_times)
    print(f"files: {len(files)} (vocab 32k-150k, logical size {header_mb:.0f} MB, sparse)")
    print(f"corral inspect --json (whole process): median {c*1000:.0f} ms = {len(files)/c:.1f} files/s")
    print(f"gguf-py GGUFReader (in process):       median {p*1000:.0f} ms = {len(files)/p:.1f} files/s")
    print(f"ratio gguf-py / corral: {p/c:.1f}x")
    notes = f"{len(files)} files, {args.rounds} rounds"
    for measure, title, value, unit in (
            ("gguf.speedup", "Header parsing: gguf-py's time ÷ Corral's", round(p / c, 1), "×"),
            ("gguf.corral_ms", "corral inspect --json over the generated models (start-up included), median", round(c * 1000), "ms"),
            ("gguf.gguf_py_ms", "gguf-py GGUFReader over the same models (in process), median", round(p * 1000), "ms"),
            ("gguf.corral_files_per_s", "corral inspect, files per second", round(len(files) / c, 1), "files/s"),
            ("gguf.gguf_py_files_per_s", "gguf-py GGUFReader, files per second", round(len(files) / p, 1), "files/s")):
        record("bench-gguf", measure, title, value, unit, notes=notes)


if __name__ == "__main__":
    main()
