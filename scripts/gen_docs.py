#!/usr/bin/env python3
"""Writes the generated documentation pages:

- docs/configuration.md from docs/routes.schema.json (every key, its type, default, allowed values
  and meaning; the schema's descriptions are the source),
- docs/api/admin.md from the admin API description a running Corral serves at /admin/openapi.json
  (started with the shared test harness; the binary comes from CORRAL_BIN, default
  .build/debug/corral),
- the module map in README.md, between <!-- module-map:begin --> and <!-- module-map:end -->,
  from Package.swift (each target's comment, its Corral dependencies) and Sources/ line counts.

`python scripts/gen_docs.py` writes them; `--check` writes nothing and exits 1 naming each page
that differs from what it would write (the docs test runs this; `make docs` fixes it). The output
is deterministic: sorted, no dates, no ports.
"""
import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "docs/routes.schema.json"
CONFIGURATION = "docs/configuration.md"
ADMIN = "docs/api/admin.md"
README = "README.md"
MAP_BEGIN, MAP_END = "<!-- module-map:begin -->", "<!-- module-map:end -->"


def cell(text: str) -> str:
    """Text for one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def code(value) -> str:
    return "`" + (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)) + "`"


def type_of(s: dict, defs: dict) -> str:
    """A JSON schema's type in a few words: `integer`, `array of string`, `duration`, …"""
    if "$ref" in s:
        name = s["$ref"].rsplit("/", 1)[-1]
        return name if name in defs else "object"
    if "oneOf" in s or "anyOf" in s:
        return " or ".join(type_of(x, defs) for x in s.get("oneOf", s.get("anyOf")))
    if "enum" in s and "type" not in s:
        return "string" if all(isinstance(v, str) for v in s["enum"]) else "enum"
    t = s.get("type", "any")
    if isinstance(t, list):
        return " or ".join(type_of({**s, "type": x}, defs) for x in t)
    if t == "array":
        return "array of " + type_of(s.get("items", {}), defs) if s.get("items") else "array"
    if t == "object" and isinstance(s.get("additionalProperties"), dict):
        return "object of NAME → " + type_of(s["additionalProperties"], defs)
    return t


def allowed(s: dict) -> str:
    """The values a schema allows beyond its type: enum, range, pattern, length."""
    if s.get("type") == "array" and isinstance(s.get("items"), dict):
        inner = allowed(s["items"])
        return f"each: {inner}" if inner else ""
    parts = []
    if "enum" in s:
        parts.append(", ".join(code(v) for v in s["enum"]))
    lo, hi = s.get("minimum"), s.get("maximum")
    if lo is not None and hi is not None:
        parts.append(f"{lo}–{hi}")
    elif lo is not None:
        parts.append(f"≥ {lo}")
    elif hi is not None:
        parts.append(f"≤ {hi}")
    if "minLength" in s:
        parts.append("not empty" if s["minLength"] == 1 else f"at least {s['minLength']} characters")
    if "pattern" in s:
        parts.append("matches " + code(s["pattern"]))
    return "; ".join(parts)


# --- docs/configuration.md -------------------------------------------------------------------

CONFIGURATION_INTRO = """\
`routes.json` configures Corral; the file at the repository root is the working default
(`routes.offline.json` is the same with a generated model, for `make serve` without network).
[`routes.schema.json`](routes.schema.json) is its JSON Schema, and this page is generated from it.

- Unknown keys and bad values stop start-up with a message naming the key
  (`routes.json: scheduler.defaultTTL: must be seconds or a duration like "30s"…`).
- Relative paths are resolved against the file's folder; `~` is expanded in source folders.
  `DATA_DIR` below is `dataDirectory`.
- Durations are seconds (a number) or text with a unit: `250ms`, `30s`, `5m`, `2h`; negative
  means forever.
- Model names match case-insensitively, through aliases, and `x:latest` is `x`. A name from a
  request is only ever looked up in the catalog: it never becomes a path and never reaches a shell.
- The file is re-read on SIGHUP and when it changes: the model catalog is swapped without touching
  in-flight requests and an invalid file is logged and ignored; the listen address, TLS and the
  scheduler's limits apply at the next start ([operations](operations.md)).

A key written `a.b` is `b` inside the object `a`; `a[].b` is `b` in each element of the array `a`;
`a.NAME` is any name you choose. A dash means no default (the meaning says what happens without
the key).
"""


def schema_rows(node: dict, path: str, defs: dict, required=()):
    """(dotted path, schema, required) for every key below `node`, in the schema's order."""
    for key, s in node.get("properties", {}).items():
        p = f"{path}.{key}" if path else key
        yield p, s, key in required
        yield from nested_rows(s, p, defs)


def nested_rows(s: dict, p: str, defs: dict):
    if "properties" in s:
        yield from schema_rows(s, p, defs, s.get("required", ()))
    extra = s.get("additionalProperties")
    if isinstance(extra, dict) and "properties" in extra:
        yield p + ".NAME", extra, False
        yield from schema_rows(extra, p + ".NAME", defs, extra.get("required", ()))
    items = s.get("items")
    if isinstance(items, dict) and "properties" in items:
        yield p + "[]", items, False
        yield from schema_rows(items, p + "[]", defs, items.get("required", ()))


def has_keys(s: dict) -> bool:
    """Whether a schema is an object or array of objects whose keys get rows of their own."""
    extra, items = s.get("additionalProperties"), s.get("items")
    return "properties" in s or (isinstance(extra, dict) and "properties" in extra) or (isinstance(items, dict) and "properties" in items)


def key_table(members, defs) -> list[str]:
    out = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for p, s, req in members:
        default = "required" if req else (code(s["default"]) if "default" in s else "—")
        out.append(f"| `{p}` | {cell(type_of(s, defs))} | {cell(default)} | {cell(allowed(s))} | {cell(s.get('description', ''))} |")
    return out + [""]


def configuration_page() -> str:
    schema = json.loads((ROOT / SCHEMA).read_text())
    defs = schema.get("$defs", {})
    out = ["<!-- Generated by scripts/gen_docs.py from docs/routes.schema.json: edit the schema's",
           "descriptions, then run `make docs`. -->", "", "# Configuration: `routes.json`", "", CONFIGURATION_INTRO]
    properties = schema.get("properties", {})
    scalars = [(k, v, k in schema.get("required", ())) for k, v in properties.items() if k != "$schema" and not has_keys(v)]
    out += ["## Top-level keys", ""] + key_table(scalars, defs)
    for key, s in properties.items():
        if has_keys(s):
            out += [f"## `{key}`", "", s.get("description", ""), ""]
            out += key_table(list(nested_rows(s, key, defs)), defs)
    if defs:
        out += ["## Value types", ""]
        for name, s in defs.items():
            out += [f"- **{name}**: {s.get('description', '')}"]
        out.append("")
    return "\n".join(out)


# --- docs/api/admin.md -----------------------------------------------------------------------

# Route groups (the segment after /admin/) in the order the page shows them; a group not listed
# here gets a section of its own at the end, titled by its segment.
GROUPS = [
    ("Teams and keys", ["teams", "keys"]),
    ("Usage and statistics", ["usage", "stats"]),
    ("Models and the fleet", ["models", "instances", "memory", "default-model", "profiles", "recommendations", "hardware"]),
    ("Getting models: pulls, the hub, quantizing", ["downloads", "library", "quantize"]),
    ("Jobs", ["jobs"]),
    ("Benchmarks, perplexity and the quant ladder", ["benchmarks", "quant-ladder"]),
    ("Tuning", ["tuning"]),
    ("Evaluations", ["evaluations"]),
    ("Fine-tuning", ["fine-tuning"]),
    ("Cluster", ["cluster", "drain"]),
    ("Dashboard", ["events"]),
    ("This description", ["openapi.json"]),
]
METHODS = ["get", "head", "post", "put", "patch", "delete"]


def fetch_openapi() -> dict:
    """/admin/openapi.json from a Corral started with the shared harness."""
    os.environ.setdefault("CORRAL_BIN", ".build/debug/corral")
    binary = ROOT / os.environ["CORRAL_BIN"]
    if not binary.exists():
        sys.exit(f"gen_docs: no Corral binary at {binary} (set CORRAL_BIN or run `make build`)")
    from corral_harness.corral import start_corral, stop_corral
    try:
        c = start_corral()
    except BaseException as e:  # the harness skips or fails the way pytest does
        sys.exit(f"gen_docs: could not start Corral for /admin/openapi.json: {type(e).__name__}: {e}")
    try:
        return c.get("/admin/openapi.json")
    finally:
        stop_corral(c)


def body_fields(s: dict, prefix: str = "", required=()):
    """(dotted field, schema, required) for a request body's properties, nested objects flattened."""
    for name in sorted(s.get("properties", {})):
        f = s["properties"][name]
        p = prefix + name
        yield p, f, name in required
        if "properties" in f:
            yield from body_fields(f, p + ".", f.get("required", ()))
        items = f.get("items")
        if isinstance(items, dict) and "properties" in items:
            yield from body_fields(items, p + "[].", items.get("required", ()))


def operation_section(path: str, method: str, op: dict, defs: dict) -> list[str]:
    out = [f"### `{method.upper()} {path}`", ""]
    for key in ("summary", "description"):
        if op.get(key):
            out += [op[key], ""]
    params = op.get("parameters", [])
    if params:
        out += ["| parameter | in | type | allowed | meaning |", "|---|---|---|---|---|"]
        for p in params:
            s = p.get("schema", {})
            name = f"`{p['name']}`" + ("" if p.get("required") else " (optional)")
            out.append(f"| {name} | {p['in']} | {cell(type_of(s, defs))} | {cell(allowed(s))} | {cell(p.get('description', ''))} |")
        out.append("")
    body = op.get("requestBody")
    if body:
        for media in sorted(body.get("content", {})):
            s = body["content"][media].get("schema", {})
            fields = list(body_fields(s, "", s.get("required", ())))
            if not fields:
                out += [f"Body: {media}, {cell(type_of(s, defs))}.", ""]
                continue
            out += [f"Body ({media}):", "", "| field | type | allowed |", "|---|---|---|"]
            for name, f, req in fields:
                out.append(f"| `{name}`{' (required)' if req else ''} | {cell(type_of(f, defs))} | {cell(allowed(f))} |")
            out.append("")
    answers, errors = [], []
    for status in sorted(op.get("responses", {})):
        r = op["responses"][status]
        media = ", ".join(sorted(r.get("content", {}))) or "no body"
        (errors if status.startswith(("4", "5")) else answers).append((status, r.get("description", ""), media))
    if answers:
        out.append("Answers: " + "; ".join(f"{s} {d} ({m})" for s, d, m in answers) + ".")
    if errors:
        out.append("Errors: " + ", ".join(s for s, _, _ in errors) + ".")
    out.append("")
    return out


def admin_page(spec: dict) -> str:
    info = spec.get("info", {})
    defs = spec.get("components", {}).get("schemas", {})
    out = ["<!-- Generated by scripts/gen_docs.py from /admin/openapi.json (the route table in",
           "Sources/Gateway/Admin/AdminAPI.swift): change the routes' descriptions there, then run `make docs`. -->",
           "", "# Admin API", "",
           (info.get("description") or "").strip(), "",
           "The live description is `GET /admin/openapi.json` (OpenAPI " + spec.get("openapi", "3") + "), built at start-up",
           "from the same table the routes are registered from; a test fails when a route and the document",
           "disagree. The CLI (`corral teams`, `keys`, `library`, `jobs`, …) calls these routes.", "",
           "Errors have OpenAI's shape. The statuses: 400 a bad parameter or body, 401 no admin token or a",
           "wrong one, 404 nothing by that id or name, 409 a conflict with the present state (a name taken,",
           "a job state that does not allow the action), 502 a remote registry or hub failed, 503 the fleet",
           "cannot do it now (the message says why), 507 not enough memory.", ""]
    if "Error" in defs:
        out += ["```json", '{"error": {"message": "…", "type": "…", "param": null, "code": "…"}}', "```", ""]
    ops: dict[str, list] = {}
    for path in sorted(spec.get("paths", {})):
        for method in sorted(spec["paths"][path], key=lambda m: METHODS.index(m) if m in METHODS else 99):
            segment = path.removeprefix("/admin/").split("/", 1)[0]
            ops.setdefault(segment, []).append((path, method, spec["paths"][path][method]))
    sections = [(title, [g for g in groups if g in ops]) for title, groups in GROUPS]
    known = {g for _, groups in GROUPS for g in groups}
    sections += [(f"`/admin/{g}`", [g]) for g in sorted(ops) if g not in known]
    sections = [(title, groups) for title, groups in sections if groups]
    out += ["## Contents", ""]
    out += [f"- [{title}](#{anchor(title)})" for title, _ in sections]
    out.append("")
    for title, groups in sections:
        out += [f"## {title}", ""]
        for g in groups:
            for path, method, op in ops[g]:
                out += operation_section(path, method, op, defs)
    return "\n".join(out).rstrip() + "\n"


def anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


# --- README.md's module map --------------------------------------------------------------------

def package_targets() -> list[dict]:
    """The library and executable targets of Package.swift: name, comment, Corral dependencies."""
    text = (ROOT / "Package.swift").read_text()
    lines = text.splitlines()
    starts = [i for i, l in enumerate(lines) if re.match(r"\s*\.(target|executableTarget)\(", l)]
    names = []
    for i in starts:
        m = re.search(r'name:\s*"([^"]+)"', " ".join(lines[i:i + 3]))
        names.append(m.group(1))
    targets = []
    for n, i in enumerate(starts):
        comment, j = [], i - 1
        while j >= 0 and lines[j].strip().startswith("//"):
            comment.insert(0, lines[j].strip()[2:].strip())
            j -= 1
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        block = "\n".join(lines[i:end])
        quoted = re.findall(r'"([^"]+)"', bracketed(block, "dependencies:"))
        targets.append({"name": names[n], "comment": " ".join(comment),
                        "deps": [d for d in quoted if d in names]})
    return targets


def bracketed(text: str, label: str) -> str:
    """The text inside the [...] that follows `label` (nested brackets kept), or ""."""
    start = text.find(label)
    start = text.find("[", start) if start >= 0 else -1
    if start < 0:
        return ""
    depth = 0
    for i in range(start, len(text)):
        depth += {"[": 1, "]": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1:i]
    return ""


def source_lines(module: str) -> tuple[int, str]:
    """Lines of Sources/<module>/**/*.swift; for a module without Swift, its C lines."""
    folder = ROOT / "Sources" / module
    swift = sum(len(p.read_text(errors="replace").splitlines()) for p in folder.rglob("*.swift"))
    if swift:
        return swift, ""
    c = sum(len(p.read_text(errors="replace").splitlines()) for p in folder.rglob("*") if p.suffix in (".c", ".h"))
    return c, " (C)"


def module_map() -> str:
    targets = package_targets()
    rows = ["| module | owns (its comment in `Package.swift`) | Corral modules it may import | lines |", "|---|---|---|---:|"]
    total = 0
    for t in targets:
        lines, unit = source_lines(t["name"])
        total += lines if not unit else 0
        rows.append(f"| `{t['name']}` | {cell(t['comment']) or '—'} | {', '.join(t['deps']) or '—'} | {lines:,}{unit} |")
    rows.append(f"| | | Swift lines in all | {total:,} |")
    return "\n".join([MAP_BEGIN,
                      "<!-- Generated by scripts/gen_docs.py from Package.swift and Sources/: run `make docs`. -->",
                      *rows, MAP_END])


def readme_with_map(readme: str) -> str:
    begin, end = readme.find(MAP_BEGIN), readme.find(MAP_END)
    if begin < 0 or end < begin:
        sys.exit(f"gen_docs: README.md lacks the markers {MAP_BEGIN} … {MAP_END}")
    return readme[:begin] + module_map() + readme[end + len(MAP_END):]


# --- main --------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each stale page")
    args = parser.parse_args()
    os.chdir(ROOT)
    pages = {
        CONFIGURATION: configuration_page(),
        README: readme_with_map((ROOT / README).read_text()),
        ADMIN: admin_page(fetch_openapi()),
    }
    stale = [name for name, text in pages.items() if not (ROOT / name).exists() or (ROOT / name).read_text() != text]
    if args.check:
        for name in stale:
            print(f"stale: {name} (run `make docs`)")
        return 1 if stale else 0
    for name in stale:
        (ROOT / name).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / name).write_text(pages[name])
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
