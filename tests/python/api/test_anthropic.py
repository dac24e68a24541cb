"""The Anthropic Messages API through Corral with the `anthropic` SDK against a real llama-server:
create and stream (system, tools), count_tokens, usage in the ledger, and errors in Anthropic's
shape with the SDK's own exception classes — Corral's refusals, llama-server's answers, keys and
limits, and a failure in the middle of a stream."""
import json
import os
import signal
import time

import anthropic
import httpx
import pytest

from corral_harness.corral import start_corral, stop_corral

MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def corral(admin_corral):
    return admin_corral


def client(c, key="any-key-in-open-mode"):
    return anthropic.Anthropic(base_url=c.base, api_key=key, max_retries=0, timeout=120)


def rows(c, route):
    return [r for r in httpx.get(c.base + "/admin/usage/requests?limit=1000", headers=c.h).json()["data"] if r["route"] == route]


def newest_row(c, route, before):
    """The newest ledger row of `route` once there are more than `before` (rows are written every 200 ms)."""
    deadline = time.time() + 10
    while True:
        found = rows(c, route)
        if len(found) > before:
            return found[0]
        assert time.time() < deadline, f"no new ledger row for {route}"
        time.sleep(0.2)


def test_create_with_system_and_usage_in_the_ledger(corral):
    before = len(rows(corral, "/v1/messages"))
    # anthropic 2.16 has no sampling arguments on create(); they still go on the wire (extra_body).
    answer = client(corral).messages.create(model="chat", max_tokens=8, system="You are brief.", messages=MESSAGES,
                                            metadata={"user_id": "u-1"}, thinking={"type": "disabled"},
                                            extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 20})
    assert answer.type == "message" and answer.role == "assistant"
    assert answer.content and answer.content[0].type == "text"
    assert answer.stop_reason in ("end_turn", "max_tokens", "stop_sequence")
    assert answer.usage.input_tokens > 0 and 0 < answer.usage.output_tokens <= 8
    row = newest_row(corral, "/v1/messages", before)
    assert row["model"] == "chat" and row["status"] == 200
    assert row["promptTokens"] == answer.usage.input_tokens + (answer.usage.cache_read_input_tokens or 0)
    assert row["completionTokens"] == answer.usage.output_tokens


def test_stream_reports_text_and_usage(corral):
    before = len(rows(corral, "/v1/messages"))
    with client(corral).messages.stream(model="chat", max_tokens=12, system=[{"type": "text", "text": "Be brief."}],
                                        messages=MESSAGES, stop_sequences=["\n\n\n"]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].text == text
    assert final.usage.output_tokens > 0
    row = newest_row(corral, "/v1/messages", before)
    # The input count comes from message_start, the output from message_delta: both are in the row.
    assert row["completionTokens"] == final.usage.output_tokens and row["promptTokens"] > 0
    with httpx.stream("POST", corral.base + "/v1/messages", json={"model": "chat", "max_tokens": 4, "messages": MESSAGES, "stream": True},
                      timeout=60) as r:
        events = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "message_stop" and "message_delta" in events


def test_tools_and_multi_turn_tool_results(corral):
    tools = [{"name": "get_weather", "description": "Weather for a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    answer = client(corral).messages.create(model="chat", max_tokens=16, tools=tools, tool_choice={"type": "auto"}, messages=MESSAGES)
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    follow_up = client(corral).messages.create(model="chat", max_tokens=8, tools=tools, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ])
    assert follow_up.type == "message" and follow_up.usage.input_tokens > answer.usage.input_tokens - 200


def test_count_tokens_matches_llama_server(corral):
    before = len(rows(corral, "/v1/messages/count_tokens"))
    counted = client(corral).messages.count_tokens(model="chat", system="You are brief.", messages=MESSAGES)
    assert counted.input_tokens > 0
    port = next(i["port"] for i in httpx.get(corral.base + "/admin/instances", headers=corral.h).json() if i["model"] == "chat")
    straight = httpx.post(f"http://127.0.0.1:{port}/v1/messages/count_tokens",
                          json={"model": "chat", "system": "You are brief.", "messages": MESSAGES}).json()
    assert straight["input_tokens"] == counted.input_tokens
    row = newest_row(corral, "/v1/messages/count_tokens", before)
    assert row["status"] == 200 and not row.get("completionTokens")


def assert_anthropic_error(response, status, error_type):
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type and body["error"]["message"], body
    return body["error"]["message"]


def test_errors_have_anthropic_shape_and_sdk_classes(corral):
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(corral).messages.create(model="nope", max_tokens=4, messages=MESSAGES)
    assert missing.value.body["error"]["type"] == "not_found_error" and "nope" in missing.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client(corral).messages.create(model="chat", max_tokens=0, messages=MESSAGES)
    assert bad.value.body["error"]["type"] == "invalid_request_error" and "max_tokens" in bad.value.body["error"]["message"]

    post = lambda body, **kw: httpx.post(corral.base + "/v1/messages", timeout=60, **kw, **({"json": body} if body is not None else {}))
    assert "max_tokens" in assert_anthropic_error(post({"model": "chat", "messages": MESSAGES}), 400, "invalid_request_error")
    assert "messages" in assert_anthropic_error(post({"model": "chat", "max_tokens": 4}), 400, "invalid_request_error")
    assert "role" in assert_anthropic_error(post({"model": "chat", "max_tokens": 4, "messages": [{"role": "system", "content": "x"}]}),
                                            400, "invalid_request_error")
    assert_anthropic_error(post(None, content=b"{not json", headers={"content-type": "application/json"}), 400, "invalid_request_error")
    assert_anthropic_error(httpx.post(corral.base + "/v1/messages/count_tokens", json={"model": "nope", "messages": MESSAGES}),
                           404, "not_found_error")
    # An error llama-server itself answers keeps its status and message, in Anthropic's shape: an
    # image for a model without a vision projector.
    port = next(i["port"] for i in httpx.get(corral.base + "/admin/instances", headers=corral.h).json() if i["model"] == "chat")
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    odd = {"model": "chat", "max_tokens": 4, "messages": [{"role": "user", "content": [image, {"type": "text", "text": "what is it?"}]}]}
    straight = httpx.post(f"http://127.0.0.1:{port}/v1/messages", json=odd)
    assert straight.status_code >= 400, straight.text
    message = assert_anthropic_error(post(odd), straight.status_code, "api_error" if straight.status_code >= 500 else "invalid_request_error")
    assert message == straight.json()["error"]["message"] and "image" in message
    with pytest.raises(anthropic.InternalServerError):
        client(corral).messages.create(model="chat", max_tokens=4, messages=odd["messages"])


def test_a_failure_mid_stream_is_an_error_event(corral):
    pid = next(i["pid"] for i in httpx.get(corral.base + "/admin/instances", headers=corral.h).json() if i["model"] == "chat")
    body = {"model": "chat", "max_tokens": 4000, "messages": MESSAGES, "stream": True, "temperature": 1.0}
    with httpx.stream("POST", corral.base + "/v1/messages", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("event: content_block_delta"):
                os.kill(pid, signal.SIGKILL)
                break
        rest = list(lines)
    errors = [json.loads(l[6:]) for l in rest if l.startswith("data: ") and '"type":"error"' in l.replace(" ", "")]
    assert "event: error" in rest and errors, rest[-6:]
    assert errors[-1]["error"]["type"] == "api_error" and "stopped" in errors[-1]["error"]["message"]


def test_keys_limits_and_permissions():
    c = start_corral()
    admin = {"authorization": f"Bearer {c.admin_token}"}
    try:
        team = httpx.post(c.base + "/admin/teams", headers=admin, json={"name": "writers", "models": ["chat"], "requestsPerMinute": 2}).json()
        key = httpx.post(c.base + f"/admin/teams/{team['id']}/keys", headers=admin, json={"name": "sdk"}).json()["key"]
        ok = client(c, key).messages.create(model="chat", max_tokens=2, messages=MESSAGES)  # the SDK sends x-api-key
        assert ok.type == "message"
        bearer = httpx.post(c.base + "/v1/messages", headers={"authorization": f"Bearer {key}"},
                            json={"model": "chat", "max_tokens": 2, "messages": MESSAGES})
        assert bearer.status_code == 200, bearer.text
        with pytest.raises(anthropic.AuthenticationError) as refused:
            client(c, "ck-wrong").messages.create(model="chat", max_tokens=2, messages=MESSAGES)
        assert refused.value.body["error"]["type"] == "authentication_error"
        with pytest.raises(anthropic.PermissionDeniedError) as forbidden:
            client(c, key).messages.create(model="embed", max_tokens=2, messages=MESSAGES)
        assert forbidden.value.body["error"]["type"] == "permission_error"
        with pytest.raises(anthropic.RateLimitError) as limited:
            client(c, key).messages.create(model="chat", max_tokens=2, messages=MESSAGES)
        assert limited.value.body["error"]["type"] == "rate_limit_error" and int(limited.value.response.headers["retry-after"]) >= 1
    finally:
        stop_corral(c)
