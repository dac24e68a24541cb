"""The operator API's own description: GET /admin/openapi.json.

1. The document is valid OpenAPI 3.1 (openapi-spec-validator), describes only /admin routes, and every
   parameter-free GET it lists answers with the admin token and refuses (401) without it.
2. schemathesis fuzzes the described operations against the live server, a bounded number of examples per
   operation within an overall time budget, and no generated request may produce a 5xx.

Knobs (environment): CORRAL_OPENAPI_EXAMPLES (examples per operation and generation mode, default 15),
CORRAL_OPENAPI_BUDGET_S (seconds for the whole fuzzing run, default 90).
"""
import os
import time
import urllib.error
import urllib.request

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.core.failures import FailureGroup

SPEC_PATH = "/admin/openapi.json"
MAX_EXAMPLES = int(os.environ.get("CORRAL_OPENAPI_EXAMPLES", "15"))
BUDGET_S = float(os.environ.get("CORRAL_OPENAPI_BUDGET_S", "90"))
REQUEST_TIMEOUT_S = 10

# Not fuzzed. The module's Corral is shared by both tests here and the fuzzer sends up to MAX_EXAMPLES requests
# per operation, so operations that tear down or reshape the fleet, or that each take seconds, stay out:
#   - anything under /tuning: starts parameter sweeps that spawn llama-server processes and run for minutes;
#   - POST .../benchmarks: runs a benchmark against a loaded model (slow, saturates the 2 test models);
#   - .../load, .../unload: spawn or kill llama-server instances (slow, and unloading breaks the fixture);
#   - .../scan: walks the model directories on disk and may re-register models;
#   - DELETE anything: removes teams, keys, models... that later examples (and other operations) depend on;
#   - GET /admin/events: the dashboard's live stream, endless unless ?once=true (tests/python/dashboard/test_dashboard.py reads it);
#   - /downloads and /library/remote: they reach Ollama registries and the Hugging Face hub over the network (none
#     here; a resolver that cannot answer takes seconds per name); tests/python/library/test_pull.py covers them against
#     fake servers on loopback.
# Everything else, reads and harmless writes (create a team, pin a model, patch a key), is fuzzed.
EXCLUDED_SUBSTRINGS = ("/tuning", "/unload", "/load", "/scan", "/downloads", "/library/remote")


def excluded(method: str, path: str) -> bool:
    method = method.lower()
    if method == "delete" or path == "/admin/events":
        return True
    if any(s in path for s in EXCLUDED_SUBSTRINGS):
        return True
    return method == "post" and "/benchmarks" in path


def fetch_spec(corral) -> dict:
    return corral.get(SPEC_PATH)


def status_of(corral, path: str, token: str | None) -> int:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    req = urllib.request.Request(corral.base + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S, context=getattr(corral, "ssl_context", None)) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def resolve(spec: dict, node):
    """Follows a local $ref (#/components/...) if there is one."""
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
        for part in node["$ref"][2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def has_required_parameters(spec: dict, path: str, path_item: dict, operation: dict) -> bool:
    if "{" in path:  # path templates are always required parameters
        return True
    params = [resolve(spec, p) for p in path_item.get("parameters", []) + operation.get("parameters", [])]
    if any(p.get("required") for p in params):
        return True
    body = resolve(spec, operation.get("requestBody", {}))
    return bool(body.get("required"))


def test_openapi_document_is_valid_and_guarded(corral):
    spec = fetch_spec(corral)
    assert str(spec.get("openapi", "")).startswith("3.1"), f"openapi is {spec.get('openapi')!r}, want 3.1.x"
    validate(spec, cls=OpenAPIV31SpecValidator)  # raises OpenAPIValidationError with the offending location

    paths = spec.get("paths") or {}
    assert paths, "the document describes no paths"
    outside = [p for p in paths if not p.startswith("/admin")]
    assert not outside, f"paths outside /admin in the operator document: {outside}"

    token = corral.admin_token
    problems, checked = [], 0
    for path, item in paths.items():
        item = resolve(spec, item)
        for method, operation in item.items():
            if method != "get" or has_required_parameters(spec, path, item, resolve(spec, operation)):
                continue
            checked += 1
            with_token = status_of(corral, path, token)
            if with_token == 401:
                problems.append(f"GET {path}: 401 with the admin token")
            without = status_of(corral, path, None)
            if without != 401:
                problems.append(f"GET {path}: {without} without a token, want 401")
            wrong = status_of(corral, path, "not-the-admin-token")
            if wrong != 401:
                problems.append(f"GET {path}: {wrong} with a wrong token, want 401")
    assert checked, "no GET operation without required parameters to check the admin token on"
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(corral):
    spec = fetch_spec(corral)
    schema = schemathesis.openapi.from_dict(spec)
    auth = {"Authorization": f"Bearer {corral.admin_token}"}
    verify = getattr(corral, "ssl_context", None) is None  # the TLS fixture's certificate is self-signed
    session = requests.Session()
    deadline = time.monotonic() + BUDGET_S
    started = time.monotonic()
    failures: dict[tuple, dict] = {}  # (method, path, status) -> first failing example and count
    errors, skipped, out_of_time, tested = [], [], [], []

    settings = hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,  # the same examples every run
        database=None,  # nothing replayed from, or written to, .hypothesis/
        deadline=None,
        phases=(Phase.explicit, Phase.generate),  # failures are collected, not raised: nothing to shrink
        suppress_health_check=list(HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )

    def record(case, status, detail):
        key = (case.method.upper(), case.path, status)
        entry = failures.setdefault(key, {"count": 0, "example": None})
        entry["count"] += 1
        if entry["example"] is None:
            body = "" if isinstance(case.body, NotSet) else f" body={str(case.body)[:200]}"
            entry["example"] = f"{case.formatted_path} query={case.query}{body}: {detail}"

    for result in schema.get_all_operations():
        try:
            operation = result.ok()
        except Exception as e:  # an operation schemathesis cannot understand is a document bug
            errors.append(f"unusable operation: {e}")
            continue
        method, path = operation.method.upper(), operation.path
        if excluded(method, path):
            skipped.append(f"{method} {path}")
            continue
        if time.monotonic() >= deadline:
            out_of_time.append(f"{method} {path}")
            continue
        tested.append(f"{method} {path}")

        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings
            @given(case=operation.as_strategy(generation_mode=mode))
            def exercise(case):
                if time.monotonic() >= deadline:
                    return
                try:
                    response = case.call(base_url=corral.base, session=session, headers=auth,
                                         timeout=REQUEST_TIMEOUT_S, verify=verify)
                except requests.RequestException as e:  # a dropped connection or a hang is a server failure too
                    record(case, type(e).__name__, str(e)[:200])
                    return
                try:
                    case.validate_response(response, checks=[not_a_server_error], headers=auth)
                except FailureGroup:
                    record(case, response.status_code, response.text[:200])

            try:
                exercise()
            except Unsatisfiable:
                pass  # negative mode: nothing in the operation can be made invalid (say, a free-form path string)
            except Exception as e:
                errors.append(f"{method} {path} ({mode.value}): {type(e).__name__}: {str(e)[:300]}")

    elapsed = time.monotonic() - started
    print(f"schemathesis: {len(tested)} operations fuzzed in {elapsed:.1f}s "
          f"({MAX_EXAMPLES} examples per operation and mode); excluded: {skipped}")
    if out_of_time:
        print(f"schemathesis: time budget of {BUDGET_S:.0f}s spent, not reached: {out_of_time}")
    report = [f"{m} {p} -> {s} (x{e['count']}): {e['example']}" for (m, p, s), e in failures.items()]
    for line in report + errors:
        print(line)
    assert tested, "schemathesis found no operation to fuzz"
    assert not report, "server errors:\n" + "\n".join(report)
    assert not errors, "operations schemathesis could not exercise:\n" + "\n".join(errors)
