"""The documentation stays true to the code: the generated pages (docs/configuration.md,
docs/api/admin.md, README.md's module map) equal what scripts/gen_docs.py writes now, every
relative link in README.md and docs/ reaches a file, README.md stays short, and the schema of
routes.json describes every key and accepts the configurations shipped."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema

ROOT = Path(__file__).resolve().parents[3]
README_LIMIT = 12 * 1024


def test_generated_pages_are_current():
    env = {**os.environ, "CORRAL_BIN": os.environ.get("CORRAL_BIN", ".build/debug/corral")}
    out = subprocess.run([sys.executable, "scripts/gen_docs.py", "--check"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (
        "generated documentation is stale: run `make docs` and commit the result\n" + out.stdout + out.stderr)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown page."""
    found = set()
    for title in re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M):
        base = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def test_relative_links_reach_files():
    broken = []
    for page in markdown_files():
        text = FENCE.sub("", page.read_text())
        for target in LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # a URL
            path, _, fragment = target.partition("#")
            linked = (page.parent / path) if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "links to files or headings that do not exist:\n" + "\n".join(broken)


def test_readme_is_short():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes; keep it within {README_LIMIT} (move detail into docs/)"


def schema_keys(node: dict, path: str = ""):
    """(dotted path, schema) for every key the schema of routes.json describes."""
    for key, s in node.get("properties", {}).items():
        p = f"{path}.{key}" if path else key
        yield p, s
        yield from schema_keys(s, p)
        if isinstance(s.get("additionalProperties"), dict):
            yield p + ".NAME", s["additionalProperties"]
            yield from schema_keys(s["additionalProperties"], p + ".NAME")
        if isinstance(s.get("items"), dict):
            yield from schema_keys(s["items"], p + "[]")


def test_schema_describes_every_key_and_accepts_the_shipped_configs():
    schema = json.loads((ROOT / "docs/routes.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    undescribed = [p for p, s in schema_keys(schema) if not s.get("description")]
    assert not undescribed, "keys of docs/routes.schema.json without a description: " + ", ".join(undescribed)
    for config in ("routes.json", "routes.offline.json"):
        jsonschema.validate(json.loads((ROOT / config).read_text()), schema)
    # The configuration examples in the docs are complete routes.json files too.
    for page in markdown_files():
        for block in re.findall(r"^```json\n(.*?)^```", page.read_text(), re.S | re.M):
            try:
                value = json.loads(block)
            except ValueError:
                continue  # an excerpt, not a whole file
            if isinstance(value, dict) and "listen" in value:
                jsonschema.validate(value, schema)
