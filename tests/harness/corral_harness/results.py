"""Benchmark results: every `make bench-*` (and `make soak`) appends one JSON object a line, one
per headline measure, to benchmarks/results.jsonl; scripts/gen_benchmarks.py turns the latest
record of each measure into the table in BENCHMARKS.md. The file is append-only: a new run adds
lines, nothing rewrites old ones, so it is the benchmarks' history too.

`CORRAL_BENCH_RESULTS` points the recorder at another file (a smoke run whose noisy numbers
must not reach the real one)."""
import datetime
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
DEFAULT_PATH = os.path.join(REPO, "benchmarks", "results.jsonl")
# Every record has these fields (`notes` is optional).
FIELDS = ("measure", "title", "value", "unit", "goal", "met", "date", "machine", "command", "commit", "benchmark")


def results_path() -> str:
    return os.environ.get("CORRAL_BENCH_RESULTS") or DEFAULT_PATH


@functools.cache
def machine() -> str:
    """Cores, memory and the GPU (by nvidia-smi) of this machine, e.g. "2 cores, 24 GiB, CPU-only llama.cpp"."""
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            memory = f", {int(f.readline().split()[1]) / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    gpu = "CPU-only llama.cpp"
    if shutil.which("nvidia-smi"):
        try:
            names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                                   timeout=20).stdout.split("\n")
            names = [n.strip() for n in names if n.strip()]
            if names:
                gpu = f"{len(names)} × {names[0]}" if len(names) > 1 else names[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return f"{os.cpu_count()} cores{memory}, {gpu}"


@functools.cache
def commit() -> str | None:
    """The checkout's short commit hash, or None outside a git checkout."""
    try:
        r = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None


def invocation(benchmark: str) -> str:
    """How this run was started: `make <benchmark>` (with its command-line variables) under make,
    else the script's own command line."""
    if "MAKELEVEL" in os.environ:
        # Variables set on make's command line (`make soak SOAK_SECONDS=60`) follow "--" in MAKEFLAGS.
        parts = re.split(r"(?:^|\s)--(?:\s|$)", os.environ.get("MAKEFLAGS", ""), maxsplit=1)
        overrides = parts[1].split() if len(parts) > 1 else []
        return " ".join(["make", benchmark, *overrides])
    python = sys.executable
    if python.startswith(REPO + os.sep):
        python = os.path.relpath(python, REPO)
    script = os.path.abspath(sys.argv[0])
    if script.startswith(REPO + os.sep):
        script = os.path.relpath(script, REPO)
    return " ".join(shlex.quote(a) for a in [python, script, *sys.argv[1:]])


def record(benchmark: str, measure: str, title: str, value: float, unit: str, goal: str | None = None,
           met: bool | None = None, command: str | None = None, notes: str | None = None) -> dict:
    """Appends one result (the date, machine and commit filled in) to the results file; the record."""
    if isinstance(value, float):
        value = float(f"{value:.6g}")
    entry = {"measure": measure, "title": title, "value": value, "unit": unit, "goal": goal,
             "met": None if met is None else bool(met),
             "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(), "machine": machine(),
             "command": command or invocation(benchmark), "commit": commit(), "benchmark": benchmark}
    if notes:
        entry["notes"] = notes
    path = results_path()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return entry


def read(path: str | None = None) -> list[dict]:
    """Every record of the results file, in the order written."""
    with open(path or results_path(), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
