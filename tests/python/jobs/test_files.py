"""The OpenAI Files API (shared by evaluations and fine-tuning) with the openai SDK: upload,
retrieve, list with paging, content, delete; JSONL checked on upload for `evals` and `fine-tune`
with the first bad line named (fine-tuning text and CSV accepted); the size limit; files kept across a restart; a team sees only its
own files and the admin token sees all."""
import hashlib
import json
import time

import httpx
import openai
import pytest
from openai import OpenAI

from corral_harness.corral import restart_corral, start_corral, stop_corral, team_keys

ITEMS = b"".join(json.dumps({"item": {"question": f"q{i}", "answer": f"a{i}"}}).encode() + b"\n" for i in range(3))


@pytest.fixture(scope="module")
def corral():
    c = start_corral(extra_config={"files": {"maxBytes": 4096}})
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    yield c
    stop_corral(c)


def sdk(c, key="x"):
    return OpenAI(base_url=c.base + "/v1", api_key=key, max_retries=0)


def test_upload_retrieve_list_content_delete(corral):
    client = sdk(corral)
    uploaded = client.files.create(file=("items.jsonl", ITEMS), purpose="evals")
    assert uploaded.object == "file" and uploaded.id.startswith("file-") and uploaded.purpose == "evals"
    assert uploaded.bytes == len(ITEMS) and uploaded.filename == "items.jsonl" and uploaded.status == "processed"
    assert uploaded.model_extra["sha256"] == hashlib.sha256(ITEMS).hexdigest()
    assert client.files.retrieve(uploaded.id).bytes == len(ITEMS)
    assert client.files.content(uploaded.id).read() == ITEMS

    others = [client.files.create(file=(f"n{i}.txt", b"notes %d" % i), purpose="user_data").id for i in range(3)]
    newest_first = [f.id for f in client.files.list(limit=2)]  # the SDK follows has_more / after
    assert newest_first[:4] == others[::-1] + [uploaded.id]
    assert [f.id for f in client.files.list(purpose="evals")] == [uploaded.id]
    page = httpx.get(corral.base + "/v1/files?limit=2&order=asc").json()
    assert page["has_more"] is True and [f["id"] for f in page["data"]] == [uploaded.id, others[0]]
    assert page["first_id"] == uploaded.id and page["last_id"] == others[0]

    deleted = client.files.delete(others[0])
    assert deleted.deleted is True and deleted.id == others[0]
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(others[0])
    with pytest.raises(openai.NotFoundError):
        client.files.delete(others[0])


def test_jsonl_is_checked_on_upload_and_limits_hold(corral):
    client = sdk(corral)
    bad = ITEMS + b'{"item": {"q": 1}}\n' + b"not json\n"
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("bad.jsonl", bad), purpose="evals")
    assert "line 5" in refused.value.message and refused.value.body["param"] == "file"
    with pytest.raises(openai.BadRequestError) as no_item:
        client.files.create(file=("x.jsonl", b'{"question": "q"}\n'), purpose="evals")
    assert "line 1" in no_item.value.message and "item" in no_item.value.message
    tuning = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n{"prompt": "a", "completion": "b"}\n'
    assert client.files.create(file=("train.jsonl", tuning), purpose="fine-tune").bytes == len(tuning)
    # Fine-tuning data may be JSONL, CSV or plain text; a JSONL upload must be JSON objects (the
    # shapes of its examples are checked when a job validates it, see test_finetune.py).
    assert client.files.create(file=("notes.txt", b"plain text to train on\n"), purpose="fine-tune").purpose == "fine-tune"
    with pytest.raises(openai.BadRequestError) as not_json:
        client.files.create(file=("train.jsonl", b'{"text": "x"}\nnot json\n'), purpose="fine-tune")
    assert "line 2" in not_json.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        client.files.create(file=("e.jsonl", b"\n\n"), purpose="evals")
    assert "no JSON lines" in empty.value.message
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("a.txt", b"x"), purpose="vision")
    assert purpose.value.body["param"] == "purpose"
    with pytest.raises(openai.APIStatusError) as large:
        client.files.create(file=("big.txt", b"x" * 5000), purpose="user_data")  # files.maxBytes is 4096 here
    assert large.value.status_code == 413 and "4096" in large.value.message
    assert httpx.post(corral.base + "/v1/files", json={"purpose": "evals"}).status_code == 400
    assert httpx.get(corral.base + "/v1/files?order=sideways").status_code == 400
    assert httpx.get(corral.base + "/v1/files/file-nope/content").json()["error"]["code"] == "not_found"


def test_files_survive_a_restart():
    c = start_corral()
    try:
        uploaded = sdk(c).files.create(file=("items.jsonl", ITEMS), purpose="evals")
        restart_corral(c)
        deadline = time.time() + 30
        while True:
            try:
                assert sdk(c).files.content(uploaded.id).read() == ITEMS
                break
            except openai.APIConnectionError:
                assert time.time() < deadline
                time.sleep(0.2)
    finally:
        stop_corral(c)


def test_a_team_sees_only_its_files_and_the_admin_sees_all():
    c = start_corral()
    admin = {"authorization": f"Bearer {c.admin_token}"}
    try:
        keys = {name: key for name, (_, key) in team_keys(c, "red", "blue").items()}
        red = sdk(c, keys["red"]).files.create(file=("r.jsonl", ITEMS), purpose="evals")
        blue = sdk(c, keys["blue"]).files.create(file=("b.txt", b"blue"), purpose="user_data")
        assert [f.id for f in sdk(c, keys["red"]).files.list()] == [red.id]
        for call in (lambda: sdk(c, keys["blue"]).files.retrieve(red.id), lambda: sdk(c, keys["blue"]).files.content(red.id),
                     lambda: sdk(c, keys["blue"]).files.delete(red.id)):
            with pytest.raises(openai.NotFoundError):
                call()
        everything = {f.id for f in sdk(c, c.admin_token).files.list()}
        assert everything == {red.id, blue.id}
        assert sdk(c, c.admin_token).files.content(blue.id).read() == b"blue"
        with pytest.raises(openai.AuthenticationError):
            sdk(c, "ck-nobody").files.list()
    finally:
        stop_corral(c)
