#!/usr/bin/env python3
"""Writes Sources/Gateway/Admin/AdminOpenAPI.swift: the OpenAPI 3.1 document of /admin/*.

Edit the tables below when an admin route changes, then run `python3 scripts/gen_admin_openapi.py`.
"""
import json

OBJ = {"type": "object"}
ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def q(name, schema, desc="", required=False):
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": desc}


def p(name, desc):
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}, "description": desc}


def op(summary, params=(), body=None, ok="200", ok_schema=OBJ, errors=("400", "404"), content="application/json"):
    o = {"summary": summary, "parameters": list(params),
         "responses": {ok: {"description": "success", "content": {content: {"schema": ok_schema}}} if ok != "204" else {"description": "done"},
                       "401": ERR, **{e: ERR for e in errors}}}
    if body is not None:
        o["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return o


INT = {"type": "integer"}
NN = {"type": ["integer", "null"], "minimum": 0}
LIMITS = {"models": {"type": ["array", "null"], "items": {"type": "string"}}, "requestsPerMinute": NN, "tokensPerMinute": NN,
          "maxParallel": NN, "tokensPerDay": NN, "tokensPerMonth": NN}
MODEL = p("id", "model id or alias (ids containing '/' are written as is)")
SAMPLING = {"type": "object", "additionalProperties": False, "properties": {
    **{k: {"type": "number"} for k in ["temperature", "top_p", "top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n",
                                       "presence_penalty", "frequency_penalty", "seed", "max_tokens", "mirostat", "mirostat_tau",
                                       "mirostat_eta", "dry_multiplier"]},
    "stop": {"type": "array", "items": {"type": "string"}}}}
INTS = {"type": "array", "items": {"type": "integer", "minimum": 1}}

paths = {
    "/admin/openapi.json": {"get": op("This document", errors=())},
    "/admin/instances": {"get": op("Every touched model: state, pid, args, memory, in-flight, queue", ok_schema={"type": "array", "items": OBJ}, errors=())},
    "/admin/hardware": {"get": op("CPU, RAM, accelerators, NVIDIA details, llama.cpp build and backend", [q("refresh", {"type": "boolean"}, "read again instead of the cached answer")], errors=())},
    "/admin/models": {"get": op("The model library with filters and sorting", [
        q("q", {"type": "string"}, "text in id, name, aliases, architecture, quantization"), q("architecture", {"type": "string"}),
        q("quantization", {"type": "string"}), q("capability", {"type": "string", "enum": ["completion", "embedding", "tools", "thinking", "insert", "vision"]}),
        q("minParams", {"type": "string"}, "e.g. 1B"), q("maxParams", {"type": "string"}), q("minSize", {"type": "string"}, "bytes, or 4GiB"),
        q("maxSize", {"type": "string"}), q("fits", {"type": "string", "enum": ["true", "false"]}),
        q("sort", {"type": "string", "enum": ["name", "size", "params", "lastUsed", "context"]}), q("order", {"type": "string", "enum": ["asc", "desc"]})], errors=("400",))},
    "/admin/models/scan": {"post": op("Rescan sources and routes.json (unchanged files are not reread)", errors=("400",))},
    "/admin/models/compare": {"get": op("Models side by side", [q("ids", {"type": "string"}, "comma-separated ids, at least two", required=True)])},
    "/admin/models/{id}": {"get": op("One model: GGUF facts, state, usage, fit, benchmarks", [MODEL])},
    "/admin/models/{id}/compatibility": {"get": op("Estimator per device, verdict, largest context, suggestions, table; exact=true adds llama-fit-params", [
        MODEL, q("ctx", {"type": "integer", "minimum": 0, "maximum": 4194304}), q("kv", {"type": "string", "enum": ["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]}),
        q("parallel", {"type": "integer", "minimum": 1, "maximum": 256}), q("ubatch", {"type": "integer", "minimum": 1, "maximum": 65536}),
        q("ngl", {"type": "integer", "minimum": 0}), q("fa", {"type": "string", "enum": ["on", "off"]}), q("exact", {"type": "boolean"})])},
    "/admin/models/{id}/log": {"get": op("The last log lines of a loaded model", [MODEL, q("lines", {"type": "integer", "minimum": 1})])},
    **{f"/admin/models/{{id}}/{a}": {"post": op(f"{a.capitalize()} a model", [MODEL], errors=("400", "404", "503", "507"))} for a in ["load", "unload", "pin", "unpin"]},
    "/admin/recommendations": {"get": op("Models that fit, ranked for a task, with a reason each", [
        q("task", {"type": "string", "enum": ["chat", "code", "embedding", "vision"]}), q("min_ctx", {"type": "integer", "minimum": 1})], errors=("400",))},
    "/admin/profiles": {"get": op("Sampling profiles (builtin, config, admin)", errors=())},
    "/admin/profiles/{name}": {
        "get": op("One sampling profile", [p("name", "profile name")]),
        "put": op("Create or replace a profile", [p("name", "letters, digits, - and _")], body=SAMPLING),
        "delete": op("Delete an admin-defined profile", [p("name", "profile name")], ok="204", errors=("404", "409")),
    },
    "/admin/benchmarks": {
        "post": op("Start a benchmark through the serving path", body={"type": "object", "required": ["model"], "properties": {
            "model": {"type": "string"}, "requests": {"type": "integer", "minimum": 1, "maximum": 10000}, "concurrency": {"type": "integer", "minimum": 1, "maximum": 256},
            "promptWords": {"type": "integer", "minimum": 1}, "maxTokens": {"type": "integer", "minimum": 1, "maximum": 32768}}}, ok="202"),
        "get": op("Benchmark runs, newest first", [q("model", {"type": "string"})], errors=()),
    },
    "/admin/benchmarks/{id}": {"get": op("One run: progress and result", [p("id", "run id")])},
    "/admin/benchmarks/{id}/events": {"get": op("Progress as server-sent events until the run ends", [p("id", "run id")], ok_schema={"type": "string"}, content="text/event-stream")},
    "/admin/tuning": {
        "post": op("Start a tuning session", body={"type": "object", "required": ["model"], "properties": {
            "model": {"type": "string"}, "objective": {"type": "string", "enum": ["max_generation_tps", "min_ttft", "max_throughput_at_concurrency", "min_memory", "balanced"]},
            "strategy": {"type": "string", "enum": ["grid", "random", "halving"]},
            "space": {"type": "object", "properties": {"contextSize": INTS, "ubatch": INTS, "threads": INTS, "parallel": INTS,
                                                       "gpuLayers": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                                                       "flashAttention": {"type": "array", "items": {"type": "boolean"}},
                                                       "cacheType": {"type": "array", "items": {"type": "string", "enum": ["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]}}}},
            "minContext": {"type": "integer", "minimum": 1}, "requests": {"type": "integer", "minimum": 1}, "concurrency": {"type": "integer", "minimum": 1},
            "maxTokens": {"type": "integer", "minimum": 1}, "promptWords": {"type": "integer", "minimum": 1}, "maxCandidates": {"type": "integer", "minimum": 1},
            "seed": {"type": "integer", "minimum": 0}}}, ok="202"),
        "get": op("Tuning sessions, newest first", [q("model", {"type": "string"})], errors=()),
    },
    "/admin/tuning/{id}": {"get": op("One session with its trials", [p("id", "session id")])},
    "/admin/tuning/{id}/apply": {"post": op("Use the winner as the model's runtime profile from its next spawn", [p("id", "session id")], errors=("404", "409"))},
    "/admin/teams": {
        "get": op("Teams with today's and this month's tokens", errors=()),
        "post": op("Create a team", body={"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, **LIMITS}}, ok="201", errors=("400", "409")),
    },
    "/admin/teams/{team}": {
        "get": op("A team and its keys", [p("team", "team id or name")]),
        "patch": op("Rename, change limits, disable or enable", [p("team", "team id or name")],
                    body={"type": "object", "properties": {"name": {"type": "string"}, "disabled": {"type": "boolean"}, **LIMITS}}, errors=("400", "404", "409")),
        "delete": op("Delete a team and its keys", [p("team", "team id or name")], ok="204", errors=("404",)),
    },
    "/admin/teams/{team}/keys": {"post": op("Create a key (the key is in this answer only)", [p("team", "team id or name")],
                                            body={"type": "object", "properties": {"name": {"type": "string"}, "expiresIn": {"type": "string"},
                                                                                   "expiresAt": {"type": ["string", "null"], "format": "date-time"}, **LIMITS}}, ok="201")},
    "/admin/keys": {"get": op("Keys (never the key itself)", [q("team", {"type": "string"})], errors=())},
    "/admin/keys/{prefix}": {
        "patch": op("Change a key's limits or expiry", [p("prefix", "visible key prefix")],
                    body={"type": "object", "properties": {"expiresIn": {"type": "string"}, "expiresAt": {"type": ["string", "null"], "format": "date-time"}, **LIMITS}}),
        "delete": op("Revoke a key", [p("prefix", "visible key prefix")]),
    },
    "/admin/keys/{prefix}/rotate": {"post": op("Revoke a key and issue a new one with the same settings", [p("prefix", "visible key prefix")], ok="201", errors=("404", "409"))},
    "/admin/keys/{prefix}/revoke": {"post": op("Revoke a key", [p("prefix", "visible key prefix")])},
    "/admin/usage": {"get": op("Ledger sums by team, key or model and day or hour", [
        q("group", {"type": "string", "enum": ["team", "key", "model"]}), q("bucket", {"type": "string", "enum": ["day", "hour"]}),
        q("from", {"type": "string", "format": "date-time"}), q("to", {"type": "string", "format": "date-time"})], errors=("400",))},
    "/admin/usage/requests": {"get": op("Ledger rows, newest first", [
        q("from", {"type": "string", "format": "date-time"}), q("to", {"type": "string", "format": "date-time"}), q("team", {"type": "string"}),
        q("model", {"type": "string"}), q("limit", {"type": "integer", "minimum": 1, "maximum": 10000})], errors=("400",))},
    "/admin/events": {"get": op("Live overview as server-sent events (the dashboard's): every 2 s a `snapshot` event with the instances, the last "
                                "minute's request rate, latency and time-to-first-token p50/p95, tokens/s and errors, and the last hour's "
                                "10-second history points not sent yet on this connection (all of them first)",
                                [q("once", {"type": "boolean"}, "send one snapshot and end the stream")], ok_schema={"type": "string"},
                                content="text/event-stream", errors=())},
    "/admin/stats": {"get": op("Per-model latency, time to first token and tokens/s percentiles over a window", [q("window", {"type": "string"}, "e.g. 1h, 30m")], errors=())},
}

document = {
    "openapi": "3.1.0",
    "info": {"title": "Corral admin API", "version": "1", "description": "Operator routes. Every route needs the admin token (Authorization: Bearer TOKEN)."},
    "servers": [{"url": "/"}],
    "security": [{"adminToken": []}],
    "components": {
        "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "properties": {
            "message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": ["string", "null"]}, "param": {"type": ["string", "null"]}}}}}},
    },
    "paths": paths,
}
text = json.dumps(document, separators=(",", ":"), sort_keys=True)
assert '"""#' not in text
with open("Sources/Gateway/Admin/AdminOpenAPI.swift", "w") as f:
    f.write("// Generated by scripts/gen_admin_openapi.py; edit the script, not this file.\n\n")
    f.write("/// The OpenAPI 3.1 description of `/admin/*`, served at `/admin/openapi.json`.\n")
    f.write("enum AdminOpenAPI {\n    static let document = #\"\"\"\n" + text + "\n\"\"\"#\n}\n")
print(f"{len(paths)} paths")
