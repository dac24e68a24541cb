"""Pulling models through Corral from a fake Ollama registry and a fake Hugging Face hub (real
HTTP servers on loopback, tests/harness/corral_harness/registry.py) with faults: a connection dropped
mid-blob, a range ignored, 503 with Retry-After, a flipped byte, a missing tag, a redirect to
another host (the Authorization header must not follow), a slow trickle cancelled, Corral killed
mid-download and restarted. Real clients: ollama-python's pull(stream=True) and then a chat with
the pulled model; huggingface_hub finds the file Corral pulled; the openai SDK chats with it. A
fit verdict for a 7 GiB model comes from its header alone."""
import hashlib
import json
import os
import signal
import subprocess
import time

import httpx
import ollama
import pytest
from openai import OpenAI

from corral_harness.corral import CORRAL, admin_cli, serve, start_corral, stop_corral, team_keys
from corral_harness.registry import FakeServer

TOKEN = "hf_secret_token"


def tiny_gguf(directory, name, shape=""):
    args = [CORRAL, "models", "make-test", "--out", directory, "--name", name] + (["--shape", shape] if shape else [])
    subprocess.run(args, check=True, capture_output=True)
    with open(os.path.join(directory, name + ".gguf"), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def registry():
    r = FakeServer()
    yield r
    r.close()


@pytest.fixture(scope="module")
def cdn():
    r = FakeServer()
    yield r
    r.close()


@pytest.fixture(scope="module")
def hub(cdn):
    r = FakeServer()
    r.redirect_to = cdn
    cdn.repos = r.repos  # the other host serves the same files
    yield r
    r.close()


@pytest.fixture(scope="module")
def corral(hub):
    # Corral (and its restart in the crash test) reads the hub's address and token from its environment.
    saved = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_TOKEN")}
    os.environ["HF_ENDPOINT"] = f"http://{hub.host}"
    os.environ["HF_TOKEN"] = TOKEN
    c = start_corral()
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    c.downloads = os.path.join(c.directory, "data", "models")
    yield c
    stop_corral(c)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def gguf(corral, request):
    """A model file of the test's own (its name is in the header), so no blob is shared."""
    return tiny_gguf(corral.directory, request.node.name[5:40])


def download(c, model, **extra):
    r = httpx.post(c.base + "/admin/downloads", headers=c.h, json={"model": model, **extra})
    assert r.status_code == 202, r.text
    return r.json()


def wait_download(c, download_id, until=("completed", "failed", "cancelled"), seconds=60):
    deadline = time.time() + seconds
    while True:
        d = httpx.get(c.base + f"/admin/downloads/{download_id}", headers=c.h).json()
        if d["state"] in until:
            return d
        assert time.time() < deadline, d
        time.sleep(0.1)


def served_models(c):
    """The names the OpenAI and the Ollama API list."""
    return [m["id"] for m in httpx.get(c.base + "/v1/models").json()["data"]] + [m["name"] for m in httpx.get(c.base + "/api/tags").json()["models"]]


def test_ollama_python_pulls_with_progress_resumes_a_dropped_blob_and_then_chats(corral, registry, gguf):
    digest = registry.add_model("library", "tiny", "latest", gguf, params={"temperature": 0, "num_predict": 3},
                                system="Be brief, answer in one short sentence.")
    registry.faults[digest] = ["drop:100000"]
    name = f"{registry.host}/library/tiny:latest"
    client = ollama.Client(host=corral.base)
    lines = list(client.pull(name, insecure=True, stream=True))
    statuses = [line.status for line in lines]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert statuses.index("verifying sha256 digest") < statuses.index("writing manifest") < statuses.index("success")
    model_lines = [line for line in lines if line.digest == digest]
    assert model_lines and model_lines[-1].completed == model_lines[-1].total == len(gguf)
    assert model_lines[0].status == "pulling " + digest[7:19]
    # The dropped connection was resumed where it broke, not started over.
    ranges = [r["range"] for r in registry.requests_for(digest)]
    assert ranges[0] is None and len(ranges) == 2 and 0 < int(ranges[1][6:-1]) <= 100_000, ranges

    blob = os.path.join(corral.downloads, "blobs", "sha256-" + digest[7:])
    with open(blob, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == digest[7:]
    assert os.path.exists(os.path.join(corral.downloads, "manifests", registry.host, "library", "tiny", "latest"))
    assert not [f for f in os.listdir(os.path.join(corral.downloads, "blobs")) if f.endswith(".partial")]
    assert name in [m.model for m in client.list().models]
    reply = client.chat(model=name, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4, "temperature": 0})
    assert reply.message.content
    # The model's params layer is its default sampling (num_predict 3 unless a request says
    # otherwise), its system layer the system message of a chat that has none.
    openai = OpenAI(base_url=corral.base + "/v1", api_key="x", max_retries=0)
    plain = openai.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    assert plain.usage.completion_tokens <= 3
    own_system = openai.chat.completions.create(model=name, messages=[{"role": "system", "content": ""}, {"role": "user", "content": "hi"}])
    assert plain.usage.prompt_tokens > own_system.usage.prompt_tokens + 5
    # Pulling it again is an up-to-date model: success at once, no download.
    before = len(registry.log)
    assert [line.status for line in client.pull(name, insecure=True, stream=True)] == ["success"]
    assert len(registry.log) == before


def test_retry_after_an_ignored_range_and_a_redirect_still_give_a_verified_model(corral, registry, cdn, gguf):
    digest = registry.add_model("team", "retry", "v1", gguf, params={"top_k": 5})
    params_digest = [d for d, b in registry.blobs.items() if b.media_type.endswith("params") and b'"top_k"' in b.data][0]
    cdn.blobs = registry.blobs
    registry.redirect_to = cdn
    registry.faults[digest] = ["429", "503", "drop:60000", "ignore-range"]
    registry.faults[params_digest] = ["redirect"]
    started = time.time()
    d = download(corral, f"{registry.host}/team/retry:v1", insecure=True)
    done = wait_download(corral, d["id"])
    assert done["state"] == "completed", done
    assert done["name"] == f"{registry.host}/team/retry:v1" and done["completedBytes"] == done["totalBytes"] > len(gguf)
    assert time.time() - started >= 2  # Retry-After: 1 was honoured, twice
    requests = registry.requests_for(digest)
    # 429 and 503 → retried; dropped at 60000 → asked from there; the range ignored (200) → started over and completed.
    ranges = [r["range"] for r in requests]
    assert ranges[:3] == [None, None, None] and 0 < int(ranges[3][6:-1]) <= 60_000 and len(ranges) == 4, ranges
    assert requests[3]["if_range"] == f'"{digest}"'
    assert cdn.requests_for(params_digest), "the redirected blob was fetched from the other host"
    assert f"{registry.host}/team/retry:v1" in served_models(corral)
    events = httpx.get(corral.base + f"/admin/downloads/{d['id']}/events", headers=corral.h, timeout=10).text
    assert "event: pull" in events and '"status":"success"' in events


def test_a_short_body_resumes_and_a_416_starts_over(corral, registry, gguf):
    digest = registry.add_model("library", "short", "latest", gguf)
    registry.faults[digest] = ["short:30000", "416"]
    d = download(corral, f"{registry.host}/library/short", insecure=True)
    done = wait_download(corral, d["id"])
    assert done["state"] == "completed", done
    ranges = [r["range"] for r in registry.requests_for(digest)]
    # Cut short → asked for the rest; the range refused (416, not at the end) → the whole file again.
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[2] is None and len(ranges) == 3, ranges
    with open(os.path.join(corral.downloads, "blobs", "sha256-" + digest[7:]), "rb") as f:
        assert f.read() == gguf


def test_a_flipped_byte_deletes_the_file_and_registers_nothing(corral, registry, gguf):
    digest = registry.add_model("library", "flipped", "latest", gguf)
    registry.faults[digest] = ["flip"]
    name = f"{registry.host}/library/flipped:latest"
    r = httpx.post(corral.base + "/api/pull", json={"model": name, "insecure": True}, timeout=60)
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.text.splitlines()]
    error = lines[-1]["error"]
    assert "expected sha256 " + digest[7:] in error and "got " in error and "nothing was registered" in error
    assert not os.path.exists(os.path.join(corral.downloads, "blobs", "sha256-" + digest[7:]))
    assert not os.path.exists(os.path.join(corral.downloads, "blobs", "sha256-" + digest[7:] + ".partial"))
    assert not os.path.exists(os.path.join(corral.downloads, "manifests", registry.host, "library", "flipped"))
    assert name not in served_models(corral)
    failed = httpx.get(corral.base + "/admin/downloads", headers=corral.h).json()["downloads"][0]
    assert failed["state"] == "failed" and failed["error"]["code"] == "digest_mismatch"


def test_free_disk_space_is_checked_before_the_first_byte(corral, registry, gguf):
    digest = registry.add_model("library", "huge", "latest", gguf)
    manifest = json.loads(registry.manifests[("library", "huge", "latest")])
    manifest["layers"][0]["size"] = 1 << 55  # 32 PiB: more than any disk here
    registry.manifests[("library", "huge", "latest")] = json.dumps(manifest).encode()
    r = httpx.post(corral.base + "/api/pull", json={"model": f"{registry.host}/library/huge", "insecure": True, "stream": False}, timeout=60)
    assert r.status_code == 507 and "not enough disk space" in r.json()["error"] and "MiB are free" in r.json()["error"]
    assert not registry.requests_for(digest), "no byte was asked for"


def test_a_disk_that_fills_up_mid_download_fails_the_pull_clearly(registry, gguf, tmp_path):
    """Needs a small file system: a 1 MiB tmpfs (root with CAP_SYS_ADMIN; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root with CAP_SYS_ADMIN")
    c = start_corral(extra_config={"downloads": {"directory": str(mount)}})
    try:
        digest = registry.add_model("library", "full", "latest", gguf)
        registry.faults[digest] = ["slow:100000"]
        d = httpx.post(c.base + "/admin/downloads", headers={"authorization": f"Bearer {c.admin_token}"},
                       json={"model": f"{registry.host}/library/full", "insecure": True}).json()
        partial = mount / "blobs" / ("sha256-" + digest[7:] + ".partial")
        deadline = time.time() + 30
        while not (partial.exists() and partial.stat().st_size > 0):
            assert time.time() < deadline
            time.sleep(0.02)
        # Something else takes the rest of the disk while the pull is under way.
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        admin = {"authorization": f"Bearer {c.admin_token}"}
        deadline = time.time() + 30
        while (done := httpx.get(c.base + f"/admin/downloads/{d['id']}", headers=admin).json())["state"] not in ("failed", "completed"):
            assert time.time() < deadline, done
            time.sleep(0.1)
        assert done["state"] == "failed" and "the disk is full" in done["error"]["message"], done
        assert httpx.get(c.base + "/health").status_code == 200
        assert f"{registry.host}/library/full:latest" not in served_models(c)
        registry.faults[digest] = []
    finally:
        stop_corral(c)
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_missing_tag_and_bad_names_are_clear_errors(corral, registry):
    r = httpx.post(corral.base + "/api/pull", json={"model": f"{registry.host}/library/tiny:nope", "insecure": True, "stream": False}, timeout=60)
    assert r.status_code == 404 and "not found" in r.json()["error"]
    streamed = httpx.post(corral.base + "/api/pull", json={"model": f"{registry.host}/library/absent", "insecure": True}, timeout=60)
    assert "not found" in json.loads(streamed.text.splitlines()[-1])["error"]
    for bad in ("../../etc/passwd", "hf.co/only-org", "a/b/c/d", "x:y:z/../w"):
        r = httpx.post(corral.base + "/admin/downloads", headers=corral.h, json={"model": bad})
        assert r.status_code == 400 and r.json()["error"]["message"], (bad, r.text)


def test_two_pulls_share_one_download_and_cancel_deletes_the_partial_file(corral, registry, gguf):
    digest = registry.add_model("library", "trickle", "latest", gguf)
    registry.faults[digest] = ["slow:40000"]
    name = f"{registry.host}/library/trickle:latest"
    first = download(corral, name, insecure=True)
    second = download(corral, name, insecure=True)
    assert second["id"] == first["id"]
    partial = os.path.join(corral.downloads, "blobs", "sha256-" + digest[7:] + ".partial")
    deadline = time.time() + 30
    while not (os.path.exists(partial) and os.path.getsize(partial) > 0):
        assert time.time() < deadline
        time.sleep(0.05)
    running = httpx.get(corral.base + f"/admin/downloads/{first['id']}", headers=corral.h).json()
    assert running["state"] == "running" and running["totalBytes"] > len(gguf)
    cancelled = httpx.delete(corral.base + f"/admin/downloads/{first['id']}", headers=corral.h).json()
    assert cancelled["state"] == "cancelled"
    assert not os.path.exists(partial)
    assert name not in served_models(corral)
    registry.faults[digest] = []


def test_two_ollama_clients_pulling_the_same_model_share_one_download_and_both_see_it(corral, registry, gguf):
    from concurrent.futures import ThreadPoolExecutor

    digest = registry.add_model("library", "shared", "latest", gguf)
    registry.faults[digest] = ["slow:200000"]
    name = f"{registry.host}/library/shared:latest"

    def pull():
        return list(ollama.Client(host=corral.base).pull(name, insecure=True, stream=True))

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.submit(pull), pool.submit(pull)
        first, second = first.result(timeout=60), second.result(timeout=60)
    for lines in (first, second):
        progress = [line for line in lines if line.digest == digest and line.completed]
        assert lines[-1].status == "success" and progress and progress[-1].completed == len(gguf)
    assert len([r for r in registry.requests_for(digest) if r["range"] is None]) == 1, "one download, not two"
    registry.faults[digest] = []


def test_a_download_interrupted_by_a_crash_resumes_from_its_offset_after_restart(corral, registry, gguf):
    digest = registry.add_model("library", "crash", "latest", gguf)
    registry.faults[digest] = ["slow:60000"]
    name = f"{registry.host}/library/crash:latest"
    d = download(corral, name, insecure=True)
    partial = os.path.join(corral.downloads, "blobs", "sha256-" + digest[7:] + ".partial")
    deadline = time.time() + 30
    while not (os.path.exists(partial) and os.path.getsize(partial) > 100_000):
        assert time.time() < deadline
        time.sleep(0.05)
    corral.proc.send_signal(signal.SIGKILL)
    corral.proc.wait(timeout=10)
    offset = os.path.getsize(partial)
    registry.faults[digest] = []
    before = len(registry.requests_for(digest))
    corral.proc = serve(corral.directory, corral.base, None, (), corral.log_path, "a")
    done = wait_download(corral, d["id"])
    assert done["state"] == "completed", done
    resumed = registry.requests_for(digest)[before:]
    start = int(resumed[0]["range"][6:-1])
    assert 0 < start <= offset + 1 and resumed[0]["if_range"] == f'"{digest}"', resumed
    assert name in served_models(corral)


def test_hugging_face_pull_is_found_by_huggingface_hub_and_served(corral, hub, cdn):
    from huggingface_hub import hf_hub_download

    q8 = tiny_gguf(corral.directory, "tiny-Q8_0", "type=q8_0")
    f32 = tiny_gguf(corral.directory, "tiny-F32")
    hub.add_repo("org/tiny-GGUF", {"tiny-Q8_0.gguf": q8, "tiny-F32.gguf": f32, "README.md": b"# tiny"})
    hub.faults["tiny-Q8_0.gguf"] = ["redirect"]
    d = download(corral, "hf.co/org/tiny-GGUF:q8_0")
    done = wait_download(corral, d["id"])
    assert done["state"] == "completed", done
    # The token went to the hub, never to the host it redirected to.
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in hub.log), hub.log
    assert cdn.requests_for("tiny-Q8_0.gguf") and all(r["authorization"] is None for r in cdn.log)
    path = hf_hub_download("org/tiny-GGUF", "tiny-Q8_0.gguf", cache_dir=os.path.join(corral.downloads, "huggingface"), local_files_only=True)
    with open(path, "rb") as f:
        assert f.read() == q8
    assert not os.path.exists(os.path.join(corral.downloads, "huggingface", "models--org--tiny-GGUF", "snapshots",
                                           "0123456789abcdef0123456789abcdef01234567", "tiny-F32.gguf"))
    served = [m for m in served_models(corral) if "tiny-gguf" in m.lower()]
    assert served, served_models(corral)
    client = OpenAI(base_url=corral.base + "/v1", api_key="x", max_retries=0)
    answer = client.chat.completions.create(model=served[0], messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert answer.choices[0].message.content is not None
    # A quant the repository does not have is named with what it has.
    r = httpx.post(corral.base + "/api/pull", json={"model": "hf.co/org/tiny-GGUF:Q2_K", "stream": False}, timeout=60)
    assert r.status_code == 404 and "tiny-F32.gguf" in r.json()["error"]


def test_a_pulled_model_answers_to_the_name_it_was_pulled_as_on_every_api(corral, hub):
    import anthropic

    q8 = tiny_gguf(corral.directory, "names-Q8_0", "type=q8_0")
    f32 = tiny_gguf(corral.directory, "names-F32")
    hub.add_repo("org/names-GGUF", {"names-Q8_0.gguf": q8, "names-F32.gguf": f32})
    client = ollama.Client(host=corral.base)
    openai = OpenAI(base_url=corral.base + "/v1", api_key="x", max_retries=0)
    claude = anthropic.Anthropic(base_url=corral.base, api_key="x", max_retries=0)

    def answers_everywhere(name):
        assert client.chat(model=name, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2}).message is not None
        assert openai.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices
        assert claude.messages.create(model=name, max_tokens=2, messages=[{"role": "user", "content": "hi"}]).content is not None
        assert client.show(name).modelfile is not None

    assert client.pull("hf.co/org/names-GGUF:Q8_0").status == "success"
    answers_everywhere("hf.co/org/names-GGUF:Q8_0")
    # A second quant of the same repository renames the files' served names (one model per
    # file): the name the first was pulled as still answers, and is the file it was pulled as.
    assert client.pull("hf.co/org/names-GGUF:F32").status == "success"
    answers_everywhere("hf.co/org/names-GGUF:Q8_0")
    answers_everywhere("hf.co/org/names-GGUF:F32")
    tags = {m.model: m.size for m in client.list().models}
    assert "hf.co/org/names-gguf:q8_0" in tags and "hf.co/org/names-gguf:f32" in tags, sorted(tags)
    assert tags["hf.co/org/names-gguf:q8_0"] == len(q8) and tags["hf.co/org/names-gguf:f32"] == len(f32)
    assert client.show("hf.co/org/names-GGUF:Q8_0").details.quantization_level == "Q8_0"
    # A pull of a name that already answers is done at once, without a download.
    before = len(hub.log)
    assert client.pull("hf.co/org/names-GGUF:Q8_0").status == "success" and len(hub.log) == before
    answers_everywhere("huggingface.co/org/names-GGUF:Q8_0")


def test_a_fit_verdict_for_a_7_gib_model_reads_only_its_header(corral, hub):
    subprocess.run([CORRAL, "models", "make-test", "--out", corral.directory, "--name", "big", "--sparse", "--shape",
                    "embd=4096,layers=32,heads=32,kv=8,ff=14336,vocab=32000,ctx=8192,type=q8_0"], check=True, capture_output=True)
    path = os.path.join(corral.directory, "big.gguf")
    hub.add_repo("org/big-GGUF", {"big-Q8_0.gguf": path})
    hub.sent = 0
    r = httpx.get(corral.base + "/admin/library/remote/compatibility", headers=corral.h,
                  params={"model": "hf.co/org/big-GGUF:Q8_0", "ctx": 4096}, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["verdict"] in ("fits_gpu", "partial_offload", "cpu_only", "does_not_fit")
    assert answer["settings"]["ctx"] == 4096 and answer["largestContext"] >= 0 and answer["suggestions"] is not None
    assert answer["facts"]["parameters"] > 6_000_000_000 and answer["facts"]["sizeBytes"] == os.path.getsize(path)
    header = answer["header"]
    assert header["fileBytes"] == os.path.getsize(path) and header["bytesFetched"] == hub.sent
    assert header["fraction"] < 0.001, header
    assert httpx.get(corral.base + "/admin/library/remote/compatibility", headers=corral.h,
                     params={"model": "hf.co/org/missing-GGUF"}, timeout=60).status_code == 404

    # Search: the repository with its files, quants and sizes, categories and a verdict.
    hub.repos["org/big-GGUF"]["tags"] = ["gguf", "text-generation", "code"]
    found = httpx.get(corral.base + "/admin/library/remote", headers=corral.h, params={"q": "big", "fit": "true"}, timeout=60).json()["models"]
    assert [m["name"] for m in found] == ["hf.co/org/big-GGUF"]
    big = found[0]
    assert big["files"] == [{"name": "big-Q8_0.gguf", "quant": "Q8_0", "sizeBytes": os.path.getsize(path)}]
    assert big["categories"] == ["chat", "code"] and big["defaultQuant"] == "Q8_0"
    assert big["fit"]["verdict"] == answer["verdict"] and big["fit"]["model"] == "hf.co/org/big-GGUF:Q8_0"
    assert httpx.get(corral.base + "/admin/library/remote", headers=corral.h, params={"q": "x", "source": "ollama"}).status_code == 400


def test_the_cli_pulls_and_waits(corral, registry, gguf):
    registry.add_model("library", "cli", "latest", gguf)
    done = admin_cli(corral, "pull", f"{registry.host}/library/cli", "--insecure")
    assert done["state"] == "completed" and done["name"] == f"{registry.host}/library/cli:latest"
    assert done["completedBytes"] == done["totalBytes"] and done["files"][0]["completed"] == done["files"][0]["total"]


def test_ollama_python_uploads_a_blob_and_creates_and_derives_models(corral, gguf):
    client = ollama.Client(host=corral.base)
    path = os.path.join(corral.directory, "upload.gguf")
    with open(path, "wb") as f:
        f.write(gguf)
    digest = client.create_blob(path)
    assert digest == "sha256:" + hashlib.sha256(gguf).hexdigest()
    assert httpx.head(corral.base + f"/api/blobs/{digest}").status_code == 200
    assert httpx.head(corral.base + "/api/blobs/sha256:" + "0" * 64).status_code == 404
    wrong = httpx.post(corral.base + "/api/blobs/sha256:" + "1" * 64, content=b"not those bytes")
    assert wrong.status_code == 400 and "does not match" in wrong.json()["error"]

    made = client.create(model="made:v1", files={"made.gguf": digest}, system="You are terse.", parameters={"num_predict": 2}, stream=False)
    assert made.status == "success"
    assert "made:v1" in [m.model for m in client.list().models]
    reply = client.chat(model="made:v1", messages=[{"role": "user", "content": "hello there"}])
    assert reply.eval_count <= 2
    statuses = [r.status for r in client.create(model="derived", from_="made:v1", system="Another voice.", stream=True)]
    assert statuses[-2:] == ["writing manifest", "success"]
    copy = client.create(model="chat-copy", from_="chat", parameters={"num_predict": 1}, stream=False)
    assert copy.status == "success"
    names = [m.model for m in client.list().models]
    assert "derived:latest" in names and "chat-copy:latest" in names
    assert client.chat(model="chat-copy", messages=[{"role": "user", "content": "hi"}]).eval_count <= 1
    # A LoRA adapter rides along: llama-server gets it with --lora.
    subprocess.run([CORRAL, "models", "make-test", "--out", corral.directory, "--name", "adapter", "--lora"], check=True, capture_output=True)
    adapter = client.create_blob(os.path.join(corral.directory, "adapter.gguf"))
    assert client.create(model="tuned", from_="made:v1", adapters={"adapter.gguf": adapter}, stream=False).status == "success"
    assert client.chat(model="tuned", messages=[{"role": "user", "content": "hi"}]).eval_count <= 2  # made:v1's params kept
    instances = httpx.get(corral.base + "/admin/instances", headers=corral.h).json()
    instance = next((i for i in instances if i["model"] == "tuned"), None)
    assert instance, [(i["model"], i["state"]) for i in instances]
    lora = instance["arguments"].index("--lora")
    assert instance["arguments"][lora + 1].endswith("sha256-" + adapter[7:])
    not_adapter = httpx.post(corral.base + "/api/create", json={"model": "bad-adapter", "from": "made:v1", "adapters": {"x.gguf": digest}})
    assert not_adapter.status_code == 400 and "not a GGUF adapter" in not_adapter.json()["error"]
    missing = httpx.post(corral.base + "/api/create", json={"model": "nope", "files": {"x.gguf": "sha256:" + "2" * 64}})
    assert missing.status_code == 400 and "upload it first" in missing.json()["error"]
    assert httpx.post(corral.base + "/api/create", json={"model": "nope", "from": "no-such-model"}).status_code == 404


def test_the_get_models_page_searches_with_verdicts_and_controls_downloads(corral, registry, hub, gguf, browser):
    from selenium.webdriver.common.by import By
    from corral_harness.browser import click, go, screenshot, sign_in, text_of, wait

    sign_in(browser, corral)
    go(browser, "#/downloads", "Get models")
    browser.find_element(By.ID, "r-q").send_keys("tiny")
    browser.find_element(By.XPATH, "//button[text()='Search']").click()
    wait(browser, lambda d: "hf.co/org/tiny-GGUF" in text_of(d, "#remote-results"), "the hub's results")
    row = text_of(browser, "#remote-results tbody tr")
    assert "Q8_0" in row and ("CPU only" in row or "fits GPU" in row), row
    click(browser, "button[aria-label='Download hf.co/org/tiny-GGUF:Q8_0']", "the download button")
    wait(browser, lambda d: "completed" in text_of(d, "#downloads tbody tr:first-child"), "the hub model pulled")

    digest = registry.add_model("library", "paced", "latest", gguf)
    registry.faults[digest] = ["slow:30000"]
    name = f"{registry.host}/library/paced"
    browser.find_element(By.ID, "p-model").send_keys(name)
    browser.find_element(By.ID, "p-insecure").click()
    browser.find_element(By.XPATH, "//button[text()='Pull']").click()
    first = "#downloads tbody tr:first-child"
    wait(browser, lambda d: "running" in text_of(d, first) and d.find_elements(By.CSS_SELECTOR, f"{first} progress"), "a running download with its bar")
    screenshot(browser, "downloads")
    click(browser, f"button[aria-label='Pause {name}:latest']", "Pause")
    wait(browser, lambda d: "paused" in text_of(d, first), "the download paused")
    click(browser, f"button[aria-label='Resume {name}:latest']", "Resume")
    wait(browser, lambda d: "running" in text_of(d, first), "the download running again")
    click(browser, f"button[aria-label='Cancel {name}:latest']", "Cancel")
    wait(browser, lambda d: "cancelled" in text_of(d, first), "the download cancelled")
    assert not os.path.exists(os.path.join(corral.downloads, "blobs", "sha256-" + digest[7:] + ".partial"))
    registry.faults[digest] = []


def test_a_team_key_cannot_pull(corral, registry):
    (_, key), = team_keys(corral, "pullers").values()
    r = httpx.post(corral.base + "/api/pull", headers={"authorization": f"Bearer {key}"},
                   json={"model": f"{registry.host}/library/tiny:latest", "insecure": True})
    assert r.status_code == 403 and "team keys" in r.json()["error"]
