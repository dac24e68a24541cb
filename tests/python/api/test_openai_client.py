"""The real openai-python client against Corral with a real llama-server behind it."""
import base64
import struct

import openai
import pytest


@pytest.fixture(scope="module")
def client(corral):
    # openai-python always sends a key; Corral in open mode on loopback accepts any.
    return openai.OpenAI(base_url=corral.base + "/v1", api_key="sk-anything", max_retries=0)


def test_models_list(client):
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["chat", "embed"]
    assert client.models.retrieve("CHAT:latest").id == "chat"


def test_chat_non_streaming(client):
    r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello"}], max_tokens=6)
    assert r.model == "chat"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 6
    assert len(r.choices[0].message.content) > 0


def test_chat_streaming_through_alias(client):
    chunks = list(client.chat.completions.create(
        model="chat-alias", messages=[{"role": "user", "content": "hello"}], max_tokens=5, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # The usage chunk Corral asks llama-server for is not shown to a client that did not ask.
    assert all(c.usage is None for c in chunks)


def test_chat_streaming_with_usage(client):
    chunks = list(client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_completions(client):
    r = client.completions.create(model="chat", prompt="the model", max_tokens=4)
    assert r.usage.completion_tokens == 4
    assert isinstance(r.choices[0].text, str)


def test_embeddings_default_base64(client):
    # openai-python asks for base64 by default and decodes it into floats.
    r = client.embeddings.create(model="embed", input=["hello world", "another"])
    assert len(r.data) == 2
    assert len(r.data[0].embedding) == 64
    raw = client.embeddings.with_raw_response.create(model="embed", input="x", encoding_format="base64").http_response.json()
    vector = raw["data"][0]["embedding"]
    assert isinstance(vector, str) and len(base64.b64decode(vector)) == 64 * 4
    assert all(v == v for v in struct.unpack("64f", base64.b64decode(vector)))


def test_unknown_model_is_a_404_not_found_error(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404
    assert e.value.code == "model_not_found"


def test_bad_request_is_a_400(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}], max_tokens=-3)
