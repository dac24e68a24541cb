"""Replays the exact request bodies that ollama-python, Open WebUI and Continue send to the Ollama API
(recorded from their public sources in fixtures/ollama_client_requests.json) against a running Corral,
and checks every response field those clients read.

Fixture entry keys:
  id, client, source, note      provenance (what was read, where)
  method, path, headers, body   the request as the client sends it; "$CHAT"/"$EMBED" stand for the model names
  stream                        true when the client reads NDJSON lines
  reads                         field paths the client reads from the (final) response object
  reads_each_line               field paths the client reads from every NDJSON line (streams only)
  value_patterns                {path: regex or [regex, ...]}: values the client parses, checked with re.search

Path syntax: "a.b", "a[0].b", "models[].name" ([] means every element; an empty list fails).
"""
import datetime
import json
import os
import re

import httpx
import pytest

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "ollama_client_requests.json")
MODELS = {"$CHAT": "chat", "$EMBED": "embed"}

# created_at: RFC 3339 with exactly nine fractional digits, Corral's fixed format. (Ollama's Go encoder, RFC3339Nano,
# writes up to nine and trims trailing zeros; pydantic, datetime.fromisoformat and JS Date all accept nine.)
CREATED_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}(Z|[+-]\d{2}:\d{2})")
# Other timestamps the clients parse (pydantic datetime, datetime.fromisoformat): any RFC 3339 date-time.
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
TIMESTAMP_KEYS = ("modified_at", "expires_at")
# Clients do arithmetic on these (Open WebUI: int(x), x > 0, a + b; ollama-python: Optional[int]).
INTEGER_FIELDS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                  "eval_count", "eval_duration")


def load_entries() -> list[dict]:
    with open(FIXTURE) as f:
        entries = json.load(f)

    # /api/ps needs a model loaded by an earlier entry; unloads (keep_alive 0) must come after everything else.
    def phase(e: dict) -> int:
        body = e.get("body") or {}
        if body.get("keep_alive") == 0:
            return 2
        return 1 if e["path"] == "/api/ps" else 0

    return sorted(entries, key=phase)


ENTRIES = load_entries()


def entry_id(e: dict) -> str:
    return e.get("id") or f"{e['client']}-{e['path'].removeprefix('/api/').replace('/', '-')}"


def substitute(value):
    if isinstance(value, str):
        for placeholder, name in MODELS.items():
            value = value.replace(placeholder, name)
        return value
    if isinstance(value, list):
        return [substitute(v) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- path resolver

_SEGMENT = re.compile(r"([^.\[\]]*)((?:\[\d*\])*)")


def parse_path(path: str) -> list:
    """ "models[].details.name" -> ["models", [], "details", "name"];  "embeddings[0]" -> ["embeddings", 0]."""
    steps = []
    for part in path.split("."):
        m = _SEGMENT.fullmatch(part)
        if not m:
            raise ValueError(f"bad path {path!r}")
        if m.group(1):
            steps.append(m.group(1))
        for index in re.findall(r"\[(\d*)\]", m.group(2)):
            steps.append([] if index == "" else int(index))
    return steps


def resolve(obj, path: str) -> list:
    """Every value at `path` (fanned out over [] steps). Fails on a missing key, a null, or an empty [] list."""
    current = [(obj, "")]
    for step in parse_path(path):
        nxt = []
        for value, where in current:
            if isinstance(step, str):
                if not isinstance(value, dict) or step not in value:
                    pytest.fail(f"{path}: no key {step!r} at {where or '<root>'} in {short(value)}")
                nxt.append((value[step], f"{where}.{step}" if where else step))
            elif step == []:
                if not isinstance(value, list):
                    pytest.fail(f"{path}: {where} is not a list: {short(value)}")
                if not value:
                    pytest.fail(f"{path}: {where} is an empty list, nothing to check")
                nxt.extend((v, f"{where}[{i}]") for i, v in enumerate(value))
            else:
                if not isinstance(value, list) or len(value) <= step:
                    pytest.fail(f"{path}: {where} has no element {step}: {short(value)}")
                nxt.append((value[step], f"{where}[{step}]"))
        current = nxt
    for value, where in current:
        if value is None:
            pytest.fail(f"{path}: {where} is null")
    return [v for v, _ in current]


def short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 300 else text[:300] + "…"


# ---------------------------------------------------------------- checks shared by stream lines and bodies

def check_timestamps(obj, where: str):
    if not isinstance(obj, dict):
        return
    if "created_at" in obj:
        value = obj["created_at"]
        assert isinstance(value, str) and CREATED_AT.fullmatch(value), \
            f"{where}: created_at {value!r} is not RFC 3339 with exactly 9 fractional digits"
    for key in TIMESTAMP_KEYS:
        if key in obj and obj[key] is not None:
            value = obj[key]
            assert isinstance(value, str) and RFC3339.fullmatch(value), f"{where}: {key} {value!r} is not RFC 3339"
            datetime.datetime.fromisoformat(value)  # what Open WebUI does with expires_at
    for key, value in obj.items():
        if isinstance(value, dict):
            check_timestamps(value, f"{where}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                check_timestamps(item, f"{where}.{key}[{i}]")


def check_types(obj: dict, where: str):
    for key in INTEGER_FIELDS:
        if key in obj:
            value = obj[key]
            assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {key} must be an integer, got {value!r}"
    if "done" in obj:
        assert isinstance(obj["done"], bool), f"{where}: done must be a boolean, got {obj['done']!r}"
    if "embeddings" in obj:
        vectors = obj["embeddings"]
        assert isinstance(vectors, list) and vectors, f"{where}: embeddings must be a non-empty list"
        for v in vectors:
            assert isinstance(v, list) and v and all(is_number(x) for x in v), f"{where}: embeddings must be lists of numbers"
    if "embedding" in obj:
        v = obj["embedding"]
        assert isinstance(v, list) and v and all(is_number(x) for x in v), f"{where}: embedding must be a list of numbers"
    if isinstance(obj.get("models"), list):
        for i, m in enumerate(obj["models"]):
            for key in ("size", "size_vram"):
                if key in m:
                    assert isinstance(m[key], int) and not isinstance(m[key], bool), \
                        f"{where}: models[{i}].{key} must be an integer, got {m[key]!r}"


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_reads(obj, paths: list[str]):
    for path in paths:
        resolve(obj, path)


def check_patterns(obj, patterns: dict):
    for path, regexes in patterns.items():
        for regex in [regexes] if isinstance(regexes, str) else regexes:
            for value in resolve(obj, path):
                assert isinstance(value, str) and re.search(regex, value), \
                    f"{path}: {value!r} does not match {regex!r} (the client parses this value)"


# ---------------------------------------------------------------- the test

@pytest.fixture(scope="module")
def http(corral):
    with httpx.Client(base_url=corral.base, timeout=httpx.Timeout(120.0),
                      verify=getattr(corral, "ssl_context", None) or True) as client:
        yield client


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry_id(e) for e in ENTRIES])
def test_recorded_request(http, entry):
    body = substitute(entry.get("body"))
    content = None if body is None else json.dumps(body).encode()
    # httpx refuses a header value with trailing whitespace ("Bearer " from Open WebUI with no key);
    # "Bearer" with nothing after it is the same empty credential.
    headers = {k: v.rstrip() for k, v in (entry.get("headers") or {}).items()}

    with http.stream(entry["method"], entry["path"], content=content, headers=headers) as response:
        if response.status_code != 200:
            response.read()
            pytest.fail(f"{entry['method']} {entry['path']} -> {response.status_code}: {response.text[:500]}")
        content_type = response.headers.get("content-type", "")
        if entry["stream"]:
            assert content_type.split(";")[0].strip() == "application/x-ndjson", f"content-type {content_type!r}"
            lines = list(response.iter_lines())
        else:
            # aiohttp's response.json() (Open WebUI) refuses any other media type.
            assert content_type.split(";")[0].strip() == "application/json", f"content-type {content_type!r}"
            response.read()

    if entry["stream"]:
        check_stream(entry, lines)
    else:
        try:
            obj = json.loads(response.text)
        except ValueError:
            pytest.fail(f"body is not one JSON document: {response.text[:500]!r}")
        assert isinstance(obj, dict), f"body is not a JSON object: {short(obj)}"
        assert "error" not in obj, f"error: {obj['error']}"
        check_timestamps(obj, "body")
        check_types(obj, "body")
        check_reads(obj, entry["reads"])
        check_patterns(obj, entry.get("value_patterns") or {})


def check_stream(entry: dict, lines: list[str]):
    assert lines, "empty stream"
    objects = []
    for n, line in enumerate(lines):
        # ollama-python and Open WebUI json.loads every line they get: a blank line is an error for them.
        assert line.strip(), f"line {n} is blank"
        try:
            obj = json.loads(line)
        except ValueError:
            pytest.fail(f"line {n} is not JSON: {line[:300]!r}")
        assert isinstance(obj, dict), f"line {n} is not a JSON object: {line[:300]!r}"
        assert "error" not in obj, f"line {n}: error: {obj['error']}"
        for key in ("model", "created_at", "done"):
            assert key in obj, f"line {n} has no {key!r}: {line[:300]}"
        check_timestamps(obj, f"line {n}")
        check_types(obj, f"line {n}")
        check_reads(obj, entry.get("reads_each_line") or [])
        objects.append(obj)

    final = objects[-1]
    assert final["done"] is True, f"last line is not done: {short(final)}"
    assert all(o["done"] is False for o in objects[:-1]), "a line before the last one has done: true"
    check_reads(final, entry["reads"])
    check_patterns(final, entry.get("value_patterns") or {})


# ---------------------------------------------------------------- fixture sanity (runs without a Corral)

def test_fixture_entries_are_complete():
    required = {"client", "source", "method", "path", "body", "stream", "reads"}
    ids = [entry_id(e) for e in ENTRIES]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for e in ENTRIES:
        assert required <= e.keys(), f"{entry_id(e)} lacks {required - e.keys()}"
        assert e["method"] in ("GET", "POST")
        assert (e["body"] is None) == (e["method"] == "GET")
        for path in e["reads"] + e.get("reads_each_line", []) + list((e.get("value_patterns") or {}).keys()):
            parse_path(path)
        if e["body"] is not None and "model" in e["body"]:
            assert any(p in e["body"]["model"] for p in MODELS), f"{entry_id(e)}: model name not a placeholder"
