"""BENCHMARKS.md is the table scripts/gen_benchmarks.py writes from benchmarks/results.jsonl, the
results file is well formed, and every `make bench-*` target has results in it."""
import json
import re
import subprocess
import sys
from pathlib import Path

from corral_harness.results import FIELDS

REPO = Path(__file__).resolve().parents[3]
RESULTS = REPO / "benchmarks" / "results.jsonl"


def records() -> list[tuple[int, dict]]:
    lines = RESULTS.read_text(encoding="utf-8").splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        assert line.strip(), f"results.jsonl:{n}: empty line"
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise AssertionError(f"results.jsonl:{n}: not JSON ({e})") from None
    return out


def test_benchmarks_md_is_the_generated_table():
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_benchmarks.py"), "--check"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr + r.stdout


def test_every_result_has_the_fields():
    problems = []
    for n, r in records():
        missing = [f for f in FIELDS if f not in r]
        if missing:
            problems.append(f"line {n}: missing {missing}")
            continue
        checks = {
            "measure": isinstance(r["measure"], str) and re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)+", r["measure"]),
            "title": isinstance(r["title"], str) and r["title"],
            "value": isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool),
            "unit": isinstance(r["unit"], str),
            "goal": r["goal"] is None or isinstance(r["goal"], str),
            "met": r["met"] is None or isinstance(r["met"], bool),
            "date": isinstance(r["date"], str) and re.fullmatch(r"\d{4}-\d\d-\d\d", r["date"]),
            "machine": isinstance(r["machine"], str) and r["machine"],
            "command": isinstance(r["command"], str) and r["command"],
            "commit": r["commit"] is None or (isinstance(r["commit"], str) and re.fullmatch(r"[0-9a-f]{4,40}", r["commit"])),
            "benchmark": isinstance(r["benchmark"], str) and r["benchmark"],
            "notes": "notes" not in r or isinstance(r["notes"], str),
        }
        problems += [f"line {n}: bad {field} {r.get(field)!r}" for field, ok in checks.items() if not ok]
    assert not problems, "\n".join(problems)


def test_a_measure_keeps_its_benchmark_and_unit():
    seen, problems = {}, []
    for n, r in records():
        first = seen.setdefault(r["measure"], (r["benchmark"], r["unit"], n))
        if (r["benchmark"], r["unit"]) != first[:2]:
            problems.append(f"line {n}: {r['measure']} as {r['benchmark']!r} in {r['unit']!r}, line {first[2]} had {first[0]!r} in {first[1]!r}")
    assert not problems, "\n".join(problems)


def test_every_bench_target_has_results():
    targets = set(re.findall(r"^(bench-[\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    assert targets, "no bench-* targets found in the Makefile"
    benchmarks = {r["benchmark"] for _, r in records()}
    missing = sorted(targets - benchmarks)
    assert not missing, f"Makefile targets with no results in benchmarks/results.jsonl: {', '.join(missing)}"
