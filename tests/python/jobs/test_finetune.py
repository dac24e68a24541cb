"""Fine-tuning through Corral with the openai SDK on a real llama-finetune (a tiny F32 model Corral
generates): upload, create, poll, events, checkpoints, then chat with the fine-tuned model over
the OpenAI and Ollama APIs; the last epoch's training loss below the first's and the validation
perplexity lower after than before on a repetitive text; every data format; cancel mid-epoch
leaves no trainer and no file; pause stops at an epoch end and resume finishes; kill -9 of Corral
mid-job resumes from the last checkpoint; bad data of each kind fails validation naming the line;
bad requests get OpenAI's 400/404/409."""
import csv
import glob
import io
import json
import os
import signal
import subprocess
import tempfile
import time

import httpx
import openai
import pytest
from openai import OpenAI

from corral_harness.corral import CORRAL, child_pids, make_model, serve, start_corral, stop_corral, team_keys

# The module trains for about 40 s on two idle cores, and llama-finetune takes every core it
# finds: two runs on one machine would fight over them (docs/testing.md).
pytestmark = pytest.mark.slow

SENTENCES = [
    ("What colour is the sky?", "The sky is blue."),
    ("What do cows say?", "Cows say moo."),
    ("Where do fish live?", "Fish live in water."),
    ("What is two plus two?", "Two plus two is four."),
]


def chat_lines(n: int) -> bytes:
    """n chat examples cycling through a few fixed question/answer pairs (a repetitive text)."""
    rows = []
    for i in range(n):
        q, a = SENTENCES[i % len(SENTENCES)]
        rows.append({"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q},
                                  {"role": "assistant", "content": a}]})
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def corral():
    d = tempfile.mkdtemp(prefix="corral-ft-")
    quantized = make_model(d, "quantized", "type=q8_0")
    # An F32 model far larger than this machine's memory, written as a sparse file (header only).
    subprocess.run([CORRAL, "models", "make-test", "--out", d, "--name", "huge", "--sparse",
                    "--shape", "embd=8192,layers=80,heads=64,kv=8,ff=28672,vocab=32000,type=f32"], check=True, capture_output=True)
    c = start_corral(extra_models=[{"name": "quantized", "path": quantized}, {"name": "huge", "path": f"{d}/huge.gguf"}],
                     extra_config={"fineTuning": {"maxConcurrent": 1}}, directory=d)
    yield c
    stop_corral(c)


def sdk(c, key="x"):
    return OpenAI(base_url=c.base + "/v1", api_key=key, max_retries=0, timeout=120)


def wait_job(client, job_id, until=("succeeded", "failed", "cancelled"), seconds=300):
    deadline = time.time() + seconds
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        assert time.time() < deadline, job
        time.sleep(0.2)


def events(client, job_id):
    """Every event, oldest first, read page by page through the SDK's cursor."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=50))))


def trainer_pids(c):
    """The trainers Corral `c` runs (its llama-finetune children)."""
    return child_pids(c, "llama-finetune")


def job_files(c, job_id):
    return sorted(os.path.basename(p) for p in glob.glob(f"{c.directory}/data/fine-tuning/{job_id}/*"))


def test_the_openai_sdk_fine_tunes_a_model_which_is_served_at_once(corral):
    client = sdk(corral)
    training = client.files.create(file=("train.jsonl", chat_lines(120)), purpose="fine-tune")
    validation = client.files.create(file=("valid.jsonl", chat_lines(40)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="chat", training_file=training.id, validation_file=validation.id, suffix="Animals", seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 20}}},
        metadata={"purpose": "test"}, extra_body={"preset": "efficient"})
    assert job.object == "fine_tuning.job" and job.id.startswith("ftjob-") and job.model == "chat"
    assert job.status in ("validating_files", "queued", "running")
    assert job.hyperparameters.n_epochs == 3 and job.hyperparameters.learning_rate_multiplier == 20
    assert job.metadata == {"purpose": "test"} and job.seed == 3

    done = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    name = f"ft:chat:animals:{job.id.removeprefix('ftjob-')}"
    assert done.fine_tuned_model == name and done.trained_tokens > 0 and done.finished_at >= done.created_at
    extra = done.model_extra
    assert extra["settings"]["context_size"] == 256 and extra["settings"]["preset"] == "efficient"

    # Events: OpenAI's order of work, metrics shaped as OpenAI's.
    log = events(client, job.id)
    messages = [e.message for e in log if e.type == "message"]
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert any(m.startswith("Validating training file") for m in messages)
    assert any(m.startswith("Files validated") for m in messages)
    started = messages.index("Fine-tuning job started")
    assert messages[-1] == "The job has successfully completed" and f"New fine-tuned model created: {name}" in messages
    metrics = [e for e in log if e.type == "metrics"]
    assert metrics and all({"step", "train_loss", "train_mean_token_accuracy"} <= set(e.data) for e in metrics)
    steps = [e.data["step"] for e in metrics]
    assert steps == sorted(steps) and steps[-1] == metrics[-1].data["total_steps"]
    assert all(e.data["train_loss"] > 0 for e in metrics)
    epoch_ends = [e.data for e in metrics if "valid_loss" in e.data and e.data["valid_loss"] is not None]
    assert [e["epoch"] for e in epoch_ends] == [1, 2, 3]
    assert started < len(messages)

    # One checkpoint per epoch, newest first, each servable; the training loss went down.
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == sorted((c.step_number for c in checkpoints), reverse=True) and len(checkpoints) == 3
    first, last = checkpoints[-1], checkpoints[0]
    assert last.metrics.train_loss < first.metrics.train_loss, (first.metrics, last.metrics)
    assert first.fine_tuned_model_checkpoint == f"{name}:ckpt-step-{first.step_number}"
    assert [e["valid_loss"] for e in epoch_ends] == [c.metrics.valid_loss for c in reversed(checkpoints)]
    assert [e["train_loss"] for e in epoch_ends] == [c.metrics.train_loss for c in reversed(checkpoints)]

    # Quality on the validation file: perplexity lower after than before.
    quality = extra["quality"]
    assert quality["perplexity_after"]["perplexity"] < quality["perplexity_before"]["perplexity"], quality
    assert quality["validation_source"] == f"validation_file {validation.id}"

    # The metrics file: a CSV of every step.
    assert len(done.result_files) == 1
    result = client.files.retrieve(done.result_files[0])
    assert result.purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1)) and int(rows[-1]["step"]) == last.step_number
    assert float(rows[-1]["train_loss"]) == pytest.approx(last.metrics.train_loss, rel=1e-4)

    # Served at once, through every API, as the model and as its checkpoints.
    assert name in [m.id for m in client.models.list()]
    answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "What colour is the sky?"}], max_tokens=5)
    assert answer.model == name and answer.usage.completion_tokens > 0
    ollama = httpx.post(corral.base + "/api/chat", json={"model": name, "messages": [{"role": "user", "content": "hi"}],
                                                        "stream": False, "options": {"num_predict": 3}}, timeout=60)
    assert ollama.status_code == 200 and ollama.json()["done"] is True
    ckpt = client.completions.create(model=first.fine_tuned_model_checkpoint, prompt="Cows", max_tokens=3)
    assert ckpt.usage.completion_tokens > 0

    # Listed, and filtered by metadata.
    listed = client.fine_tuning.jobs.list(limit=10, metadata={"purpose": "test"})
    assert job.id in [j.id for j in listed.data]
    assert client.fine_tuning.jobs.list(metadata={"purpose": "other"}).data == []


def test_every_data_format_trains(corral):
    client = sdk(corral)
    qa = [SENTENCES[i % 4] for i in range(60)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["prompt", "completion"])
    for q, a in qa:
        writer.writerow([q + "\n", a + ", truly, \"quoted\"\n"])
    formats = {
        "pairs.jsonl": "".join(json.dumps({"prompt": q + " ", "completion": a}) + "\n" for q, a in qa),
        "pairs.csv": out.getvalue(),
        "text.csv": "text\n" + "".join(f"\"{q} {a}\"\n" for q, a in qa),
        "notes.txt": "\n\n".join(f"{q}\n{a}" for q, a in qa),
        "sharegpt.jsonl": "".join(json.dumps({"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}) + "\n" for q, a in qa),
        "texts.jsonl": "".join(json.dumps({"text": f"{q} {a}"}) + "\n" for q, a in qa),
    }
    jobs = {}
    for filename, text in formats.items():
        f = client.files.create(file=(filename, text.encode()), purpose="fine-tune")
        jobs[filename] = client.fine_tuning.jobs.create(model="chat", training_file=f.id, extra_body={"preset": "efficient"}).id
    for filename, job_id in jobs.items():
        done = wait_job(client, job_id)
        assert done.status == "succeeded", (filename, done.error)
        assert done.trained_tokens > 0 and done.model_extra["quality"]["validation_source"].startswith("the last 10%")
    # The chat-shaped ShareGPT data was rendered with the base model's template: its training
    # text holds the template's markers, the plain pairs' does not.
    with open(f"{corral.directory}/data/fine-tuning/{jobs['sharegpt.jsonl']}/train.txt") as f:
        rendered = f.read()
    rendered_plain = open(f"{corral.directory}/data/fine-tuning/{jobs['pairs.jsonl']}/train.txt").read()
    probe = httpx.post(corral.base + "/apply-template", json={"model": "chat", "messages": [{"role": "user", "content": "Q"}]}).json()["prompt"]
    marker = probe.split("Q")[0]
    assert marker and marker in rendered and marker not in rendered_plain


def test_bad_data_of_each_kind_fails_validation_naming_the_line(corral):
    client = sdk(corral)
    good = chat_lines(3).decode()
    bad = {
        "no-assistant.jsonl": good + json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n",
        "bad-role.jsonl": json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}) + "\n",
        "no-completion.jsonl": json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps({"prompt": "a"}) + "\n",
        "unknown-shape.jsonl": good + good + json.dumps({"question": "?"}) + "\n",
        "sharegpt.jsonl": json.dumps({"conversations": [{"from": "alien", "value": "x"}]}) + "\n",
        "columns.csv": "question,answer\nq,a\n",
        "fields.csv": "prompt,completion\nq,a\nq,a,extra\n",
        "open-quote.csv": "text\n\"never closed\n",
    }
    expected_line = {"no-assistant.jsonl": 4, "bad-role.jsonl": 1, "no-completion.jsonl": 2, "unknown-shape.jsonl": 7, "sharegpt.jsonl": 1,
                     "columns.csv": 1, "fields.csv": 3, "open-quote.csv": 2}
    jobs = {}
    for filename, text in bad.items():
        f = client.files.create(file=(filename, text.encode()), purpose="fine-tune")
        jobs[filename] = (f.id, client.fine_tuning.jobs.create(model="chat", training_file=f.id, extra_body={"preset": "efficient"}).id)
    short = client.files.create(file=("short.jsonl", chat_lines(4)), purpose="fine-tune")
    short_job = client.fine_tuning.jobs.create(model="chat", training_file=short.id, extra_body={"preset": "efficient"}).id
    for filename, (file_id, job_id) in jobs.items():
        done = wait_job(client, job_id)
        assert done.status == "failed" and done.error.code == "invalid_file" and done.error.param == "training_file", (filename, done)
        assert f"{file_id} ({filename}) line {expected_line[filename]}:" in done.error.message, (filename, done.error.message)
        log = events(client, job_id)
        assert log[-1].level == "error" and f"line {expected_line[filename]}" in log[-1].message
        assert not any(e.message == "Fine-tuning job started" for e in log)
    done = wait_job(client, short_job)
    assert done.status == "failed" and "tokens" in done.error.message and "needed" in done.error.message, done.error
    # A validation file is checked the same way and named as such.
    broken = client.files.create(file=("v.jsonl", bad["bad-role.jsonl"].encode()), purpose="fine-tune")
    train = client.files.create(file=("t.jsonl", chat_lines(60)), purpose="fine-tune")
    failed = wait_job(client, client.fine_tuning.jobs.create(model="chat", training_file=train.id, validation_file=broken.id).id)
    assert failed.status == "failed" and failed.error.param == "validation_file" and "line 1" in failed.error.message


def test_bad_requests_get_openai_errors(corral):
    client = sdk(corral)
    train = client.files.create(file=("t.jsonl", chat_lines(60)), purpose="fine-tune")
    other = client.files.create(file=("e.jsonl", b'{"item": {"q": 1}}\n'), purpose="evals")
    cases = [
        (dict(model="quantized", training_file=train.id), 400, "model", "F32"),
        (dict(model="huge", training_file=train.id), 400, "model", "does not fit in memory for training"),
        (dict(model="nope", training_file=train.id), 404, None, "nope"),
        (dict(model="chat", training_file="file-missing"), 400, "training_file", "file-missing"),
        (dict(model="chat", training_file=other.id), 400, "training_file", "purpose"),
        (dict(model="chat", training_file=train.id, method={"type": "dpo"}), 400, "method.type", "supervised"),
        (dict(model="chat", training_file=train.id, hyperparameters={"n_epochs": 0}), 400, "hyperparameters.n_epochs", "1 to 50"),
        (dict(model="chat", training_file=train.id, extra_body={"hyperparameters": {"context_size": 300}}), 400, "hyperparameters.context_size", "256"),
        (dict(model="chat", training_file=train.id, suffix="bad suffix!"), 400, "suffix", "suffix"),
        (dict(model="chat", training_file=train.id, extra_body={"preset": "turbo"}), 400, "preset", "balanced"),
    ]
    for kwargs, status, param, text in cases:
        with pytest.raises(openai.APIStatusError) as e:
            client.fine_tuning.jobs.create(**kwargs)
        assert e.value.status_code == status and text in e.value.message, (kwargs, e.value.message)
        if param:
            assert e.value.body["param"] == param
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-00000000")
    # A finished job cannot be cancelled or paused.
    done = wait_job(client, client.fine_tuning.jobs.create(model="chat", training_file=train.id, extra_body={"preset": "efficient"}).id)
    assert done.status == "succeeded", done.error
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(done.id)
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.pause(done.id)



def long_job(client, epochs=4, repeat=1):
    """A job long enough to act on while it trains (a few seconds per epoch on two cores)."""
    text = ("The quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 25 * repeat
    f = client.files.create(file=("long.txt", text.encode()), purpose="fine-tune")
    return client.fine_tuning.jobs.create(model="chat", training_file=f.id, hyperparameters={"n_epochs": epochs}, extra_body={"preset": "efficient"})


def wait_training(client, c, job_id, epochs_done=0, seconds=120):
    """Waits until the trainer runs past `epochs_done` epochs and has reported a step."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status == "running" and job.model_extra["epochs_done"] >= epochs_done and job.model_extra.get("progress") and trainer_pids(c):
            return job
        assert job.status not in ("succeeded", "failed", "cancelled"), job
        time.sleep(0.05)
    raise AssertionError("the job did not start training")


def test_cancel_mid_epoch_kills_the_trainer_and_leaves_no_model_file(corral):
    client = sdk(corral)
    job = long_job(client, epochs=3)
    wait_training(client, corral, job.id)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status in ("running", "cancelled")
    done = wait_job(client, job.id, seconds=30)
    assert done.status == "cancelled" and done.fine_tuned_model is None
    deadline = time.time() + 5
    while trainer_pids(corral) and time.time() < deadline:
        time.sleep(0.05)
    assert not trainer_pids(corral)
    # The epoch under way left nothing; the epochs finished before it stay as its checkpoints.
    kept = done.model_extra["epochs_done"]
    assert kept < 3
    models = [f for f in job_files(corral, job.id) if f.endswith(".gguf") or f.endswith(".partial")]
    assert models == [f"epoch-{n}.gguf" for n in range(1, kept + 1)], job_files(corral, job.id)
    assert len(list(client.fine_tuning.jobs.checkpoints.list(job.id))) == kept
    assert events(client, job.id)[-1].message.startswith("Job cancelled")


def test_pause_stops_at_the_epoch_end_and_resume_finishes(corral):
    client = sdk(corral)
    job = long_job(client, epochs=3)
    wait_training(client, corral, job.id)
    pausing = client.fine_tuning.jobs.pause(job.id)
    assert pausing.status == "paused"
    # The epoch under way finishes and is kept; then nothing trains.
    expected = pausing.model_extra["epochs_done"] + 1
    deadline = time.time() + 120
    while time.time() < deadline:
        paused = client.fine_tuning.jobs.retrieve(job.id)
        if paused.model_extra["epochs_done"] == expected and not trainer_pids(corral):
            break
        time.sleep(0.1)
    assert paused.status == "paused" and paused.model_extra["epochs_done"] == expected, paused
    time.sleep(1)  # the subject: for a while, nothing trains
    still = client.fine_tuning.jobs.retrieve(job.id)
    assert still.status == "paused" and still.model_extra["epochs_done"] == expected and not trainer_pids(corral)
    assert len(list(client.fine_tuning.jobs.checkpoints.list(job.id))) == expected
    assert client.fine_tuning.jobs.resume(job.id).status == "running"
    done = wait_job(client, job.id)
    assert done.status == "succeeded" and done.model_extra["epochs_done"] == 3
    messages = [e.message for e in events(client, job.id)]
    assert any(m.startswith("Pause requested") for m in messages) and "Job resumed" in messages


def test_kill_9_mid_job_resumes_from_the_last_checkpoint(corral):
    client = sdk(corral)
    job = long_job(client, epochs=3)
    wait_training(client, corral, job.id, epochs_done=1)
    checkpoint = list(client.fine_tuning.jobs.checkpoints.list(job.id))[0]
    corral.proc.send_signal(signal.SIGKILL)
    corral.proc.wait(timeout=10)
    # The trainer dies with Corral (parent-death signal): nothing trains on unsupervised.
    deadline = time.time() + 5
    while trainer_pids(corral) and time.time() < deadline:
        time.sleep(0.05)
    assert not trainer_pids(corral)
    corral.proc = serve(corral.directory, corral.base, None, (), corral.log_path, "a")
    done = wait_job(client, job.id)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in events(client, job.id)]
    assert "Corral restarted during the job: resuming after epoch 1 of 3" in messages
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert len(checkpoints) == 3 and checkpoints[-1].id == checkpoint.id
    # Epochs 2 and 3 trained from epoch 1's model, not again from the base.
    assert checkpoints[0].metrics.train_loss < checkpoints[-1].metrics.train_loss
    assert not [f for f in job_files(corral, job.id) if f.endswith(".partial")]


def test_a_team_sees_only_its_own_jobs(corral):
    keys = team_keys(corral, "ft-a", "ft-b")
    a, b = sdk(corral, keys["ft-a"][1]), sdk(corral, keys["ft-b"][1])
    f = a.files.create(file=("t.jsonl", chat_lines(60)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError):
        b.fine_tuning.jobs.create(model="chat", training_file=f.id)  # B cannot use A's file
    job = a.fine_tuning.jobs.create(model="chat", training_file=f.id, extra_body={"preset": "efficient"})
    with pytest.raises(openai.NotFoundError):
        b.fine_tuning.jobs.retrieve(job.id)
    assert job.id not in [j.id for j in b.fine_tuning.jobs.list()]
    assert job.id in [j.id for j in a.fine_tuning.jobs.list()]
    assert wait_job(a, job.id).status == "succeeded"
    # With teams in place, the admin token still sees (and controls) every team's jobs; a team
    # key that is no key at all is refused.
    admin = sdk(corral, corral.admin_token)
    assert job.id in [j.id for j in admin.fine_tuning.jobs.list(limit=100)]
    assert admin.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    with pytest.raises(openai.AuthenticationError):
        sdk(corral, "not-a-key").fine_tuning.jobs.list()


def test_the_cli_uploads_trains_follows_and_shows_a_job(corral, tmp_path):
    data = tmp_path / "notes.txt"
    data.write_bytes(("The quick brown fox jumps over the lazy dog. " * 40 + "\n\n").encode() * 6)
    cli = [CORRAL, "finetune"]
    common = ["--url", corral.base, "--token", corral.admin_token]
    out = subprocess.run(cli + ["create", "--model", "chat", "--training-file", str(data), "--preset", "efficient", "--epochs", "2",
                                "--suffix", "cli"] + common, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["status"] == "succeeded" and job["fine_tuned_model"].startswith("ft:chat:cli:") and job["epochs_done"] == 2
    shown = json.loads(subprocess.run(cli + ["show", job["id"]] + common, capture_output=True, text=True, timeout=60).stdout)
    assert [c["epoch"] for c in shown["checkpoints"]] == [2, 1]
    assert job["id"] in subprocess.run(cli + ["list"] + common, capture_output=True, text=True, timeout=60).stdout
    lines = subprocess.run(cli + ["events", job["id"]] + common, capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert lines[0].endswith(f"info Created fine-tuning job: {job['id']}") and lines[-1].endswith("The job has successfully completed")
    # A file the gateway refuses is reported, with a failing exit status.
    bad = subprocess.run(cli + ["create", "--model", "quantized", "--training-file", str(data)] + common, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "F32" in bad.stderr
