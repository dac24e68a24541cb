"""The fast lane: OpenAI chat, completion and embedding requests (streamed or not) on a plain HTTP/1
connection are answered by a channel handler in front of the router. These tests hold it to the router's behaviour: same
answers and headers, same ledger rows, requests on one connection answered in order whatever
path each takes, refusals in the API's shape, and `CORRAL_FAST_LANE=0` to switch it off."""
import http.client
import json
import os
import signal
import socket
import sqlite3

import pytest

from corral_harness.corral import start_corral, stop_corral, wait_until

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def corral():
    c = start_corral()
    yield c
    stop_corral(c)


def fast_lane_count(c) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=10)
    conn.request("GET", "/metrics", headers=c.headers("/metrics"))
    text = conn.getresponse().read().decode()
    conn.close()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("corral_fast_lane_requests_total")))


def post(conn: http.client.HTTPConnection, path: str, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"content-type": "application/json", **(headers or {})})
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def read_response(f) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response from a buffered socket file (content-length or chunked)."""
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, value = line.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, f.read(int(headers["content-length"]))
    body = b""
    while (size := int(f.readline().strip(), 16)) > 0:
        body += f.read(size)
        f.readline()
    f.readline()
    return status, headers, body


def test_a_kept_alive_request_takes_the_lane_and_answers_like_the_router(corral):
    before = fast_lane_count(corral)
    conn = http.client.HTTPConnection("127.0.0.1", corral.port, timeout=30)
    fast = [post(conn, path, body) for path, body in [
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", {"model": "chat", "prompt": "hello", "max_tokens": 2}),
        ("/v1/embeddings", {"model": "embed", "input": ["a", "b"]}),
    ]]
    assert fast_lane_count(corral) == before + 3
    # The same requests with `Connection: close` go through the router.
    routed = [post(http.client.HTTPConnection("127.0.0.1", corral.port, timeout=30), path, body, {"connection": "close"}) for path, body in [
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", {"model": "chat", "prompt": "hello", "max_tokens": 2}),
        ("/v1/embeddings", {"model": "embed", "input": ["a", "b"]}),
    ]]
    assert fast_lane_count(corral) == before + 3
    for (fs, fh, fb), (rs, rh, rb) in zip(fast, routed):
        assert fs == rs == 200
        assert set(fh) - {"connection", "keep-alive"} == set(rh) - {"connection", "keep-alive"}
        assert fh["server"] == "corral" and fh["content-type"] == rh["content-type"]
        assert fh["x-request-id"] != rh["x-request-id"] and len(fh["x-request-id"]) == 36
        assert int(fh["content-length"]) == len(fb)
        f, r = json.loads(fb), json.loads(rb)
        assert f["object"] == r["object"] and f["usage"]["prompt_tokens"] == r["usage"]["prompt_tokens"]
    assert len(json.loads(fast[2][2])["data"]) == 2


def sse_events(raw: bytes) -> list[str]:
    return [e for e in raw.decode().split("\n\n") if e.startswith("data: ")]


def streamed_text(raw: bytes) -> str:
    return "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                   for e in sse_events(raw) if e != "data: [DONE]" and json.loads(e[6:])["choices"])


def test_a_stream_takes_the_lane_and_streams_like_the_router(corral):
    body = dict(CHAT, stream=True, max_tokens=6, temperature=0, ignore_eos=True)
    before = fast_lane_count(corral)
    lane = post(http.client.HTTPConnection("127.0.0.1", corral.port, timeout=30), "/v1/chat/completions", body)
    assert fast_lane_count(corral) == before + 1
    routed = post(http.client.HTTPConnection("127.0.0.1", corral.port, timeout=30), "/v1/chat/completions", body, {"connection": "close"})
    assert fast_lane_count(corral) == before + 1
    for status, headers, raw in (lane, routed):
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        assert headers["x-accel-buffering"] == "no" and headers["cache-control"] == "no-cache"
        events = sse_events(raw)
        assert events[-1] == "data: [DONE]"
        # Corral asked upstream for usage; the client did not, so that chunk is hidden.
        assert not any('"choices":[]' in e for e in events)
    assert streamed_text(lane[2]) and streamed_text(lane[2]) == streamed_text(routed[2])
    # A client that asks for usage gets it on the lane too.
    asked = post(http.client.HTTPConnection("127.0.0.1", corral.port, timeout=30), "/v1/chat/completions",
                 dict(body, stream_options={"include_usage": True}))
    usage = [json.loads(e[6:])["usage"] for e in sse_events(asked[2]) if '"choices":[]' in e]
    assert len(usage) == 1 and usage[0]["completion_tokens"] == 6
    assert fast_lane_count(corral) == before + 2


def test_requests_pipelined_on_one_connection_are_answered_in_order(corral):
    """Lane and router requests interleaved in one write: each answer comes back in its place."""
    requests = [
        ("POST", "/v1/chat/completions", CHAT),                                       # lane
        ("GET", "/v1/models", None),                                                  # router
        ("POST", "/v1/embeddings", {"model": "embed", "input": "x"}),                 # lane (after a router request)
        ("POST", "/v1/chat/completions", dict(CHAT, stream=True)),                    # a stream (router: one is owed)
        ("POST", "/v1/completions", {"model": "chat", "prompt": "p", "max_tokens": 1}),  # lane
        ("POST", "/v1/chat/completions", dict(CHAT, model="nope")),                   # refused: router
        ("POST", "/v1/chat/completions", CHAT),                                       # lane
    ]
    wire = b""
    for method, path, body in requests:
        data = json.dumps(body).encode() if body is not None else b""
        wire += f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode() + data
    before = fast_lane_count(corral)
    with socket.create_connection(("127.0.0.1", corral.port), timeout=30) as s:
        s.sendall(wire)
        f = s.makefile("rb")
        answers = [read_response(f) for _ in requests]
    kinds = []
    for status, headers, body in answers:
        if headers.get("content-type", "").startswith("text/event-stream"):
            kinds.append("stream")
        else:
            obj = json.loads(body)
            kinds.append(obj.get("object") or obj["error"]["code"])
    assert kinds == ["chat.completion", "list", "list", "stream", "text_completion", "model_not_found", "chat.completion"]
    assert [a[0] for a in answers] == [200, 200, 200, 200, 200, 404, 200]
    assert b"embedding" in answers[2][2] and b"[DONE]" in answers[3][2]
    # Lane requests that arrive while the router owes an answer wait for it (go to the router);
    # at least the first one took the lane.
    assert fast_lane_count(corral) > before


def test_refusals_on_a_kept_alive_connection_keep_the_api_shape_and_the_connection(corral):
    conn = http.client.HTTPConnection("127.0.0.1", corral.port, timeout=30)
    cases = [
        (b"{not json", 400, None),
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model_not_found"),
        ({"model": "chat"}, 400, None),
        ({"model": "chat", "messages": [{"content": "no role"}]}, 400, None),
        ({"model": "chat", "messages": [], "stream": "yes"}, 400, None),
        ({"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}, 400, None),
        ({"model": "embed"}, 400, None),
    ]
    before = fast_lane_count(corral)
    for body, status, code in cases:
        path = "/v1/embeddings" if isinstance(body, dict) and body.get("model") == "embed" else "/v1/chat/completions"
        got, headers, raw = post(conn, path, body)
        assert got == status, raw
        error = json.loads(raw)["error"]
        assert error["message"] and error["type"]
        if code:
            assert error["code"] == code and headers["x-should-retry"] == "false"
    assert fast_lane_count(corral) == before  # every refusal was the router's
    assert post(conn, "/v1/chat/completions", CHAT)[0] == 200  # the connection still serves
    assert fast_lane_count(corral) == before + 1


def test_a_client_that_leaves_mid_request_loses_no_row_and_leaks_nothing(corral):
    def rows() -> int:
        return len(corral.get("/admin/usage/requests?limit=10000")["data"])

    before = rows()
    body = json.dumps(dict(CHAT, max_tokens=40)).encode()
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", corral.port), timeout=10)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
                  + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        s.close()
    # Each abandoned request ends when its answer is done (a leaked slot never would) and leaves its row.
    wait_until(lambda: rows() >= before + 5, 30, "a ledger row for each abandoned request")
    conn = http.client.HTTPConnection("127.0.0.1", corral.port, timeout=30)
    assert post(conn, "/v1/chat/completions", CHAT)[0] == 200
    wait_until(lambda: all(i["inFlight"] == 0 for i in corral.get("/admin/instances")), 15, "no request left in flight")


def test_every_lane_request_gets_its_ledger_row():
    c = start_corral()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=30)
        answers = [post(conn, "/v1/chat/completions", CHAT) for _ in range(6)]
        answers += [post(conn, "/v1/embeddings", {"model": "embed", "input": "e"}) for _ in range(3)]
        assert [a[0] for a in answers] == [200] * 9
        completions = sorted(json.loads(a[2])["usage"]["completion_tokens"] for a in answers[:6])
        assert fast_lane_count(c) == 9
        c.proc.send_signal(signal.SIGTERM)
        c.proc.wait(timeout=30)
        db = sqlite3.connect(f"{c.directory}/data/corral.sqlite")
        rows = db.execute("SELECT route, status, promptTokens, completionTokens FROM usage").fetchall()
        assert sorted(r[0] for r in rows) == ["/v1/chat/completions"] * 6 + ["/v1/embeddings"] * 3
        assert all(r[1] == 200 and r[2] for r in rows)
        assert sorted(r[3] for r in rows if r[0] == "/v1/chat/completions") == completions
    finally:
        stop_corral(c)


def test_the_lane_can_be_switched_off():
    os.environ["CORRAL_FAST_LANE"] = "0"
    try:
        c = start_corral()
    finally:
        del os.environ["CORRAL_FAST_LANE"]
    try:
        conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=30)
        assert post(conn, "/v1/chat/completions", CHAT)[0] == 200
        assert fast_lane_count(c) == 0
    finally:
        stop_corral(c)
