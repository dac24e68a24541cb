"""The OpenAI Evals API through Corral with the openai SDK against a real llama-server (tiny
model, temperature 0, a seed): create an evaluation, run it on inline items and on an uploaded
file, poll, list output items, cancel, delete; a run interrupted by a restart resumes its
remaining items; bad input gets 400s in OpenAI's shape; a team cannot see another team's runs."""
import json
import os
import tempfile
import time

import httpx
import openai
import pytest
from openai import OpenAI

from corral_harness.corral import restart_corral, start_corral, stop_corral, team_keys, wait_until

QUESTIONS = [{"item": {"question": f"Question {i}?", "answer": f"answer {i}"}} for i in range(3)]
SELF = {"type": "string_check", "name": "self", "input": "{{sample.output_text}}", "reference": "{{sample.output_text}}", "operation": "eq"}
ANSWER = {"type": "string_check", "name": "answer", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}
TEMPLATE = {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]}
SAMPLING = {"temperature": 0, "max_completion_tokens": 4, "seed": 7}


@pytest.fixture(scope="module")
def corral(admin_corral):
    return admin_corral


def sdk(c, key="x"):
    return OpenAI(base_url=c.base + "/v1", api_key=key, max_retries=0, timeout=120)


def new_eval(client, criteria=(SELF, ANSWER)):
    return client.evals.create(
        name="capitals", testing_criteria=list(criteria),
        data_source_config={"type": "custom", "item_schema": {"type": "object", "properties": {"question": {"type": "string"}}},
                            "include_sample_schema": True})


def completions(items, **extra):
    return {"type": "completions", "model": "chat", "input_messages": TEMPLATE, "sampling_params": SAMPLING,
            "source": {"type": "file_content", "content": items}, **extra}


def wait_run(client, eval_id, run_id, until=("completed", "failed", "canceled"), seconds=180):
    deadline = time.time() + seconds
    while True:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in until:
            return run
        assert time.time() < deadline, run
        time.sleep(0.2)


def test_an_evaluation_runs_grades_and_keeps_every_output_item(corral):
    client = sdk(corral)
    evaluation = new_eval(client)
    assert evaluation.id.startswith("eval_") and evaluation.name == "capitals"
    assert evaluation.data_source_config.schema_["required"] == ["item", "sample"]
    assert [c.name for c in client.evals.retrieve(evaluation.id).testing_criteria] == ["self", "answer"]
    assert client.evals.update(evaluation.id, name="capitals v2").name == "capitals v2"
    assert evaluation.id in [e.id for e in client.evals.list()]

    run = client.evals.runs.create(evaluation.id, name="first", data_source=completions(QUESTIONS))
    assert run.object == "eval.run" and run.status in ("queued", "in_progress", "completed")
    done = wait_run(client, evaluation.id, run.id)
    assert done.status == "completed", done
    assert done.result_counts.total == 3 and done.result_counts.failed == 3 and done.result_counts.passed == 0
    by_name = {r.testing_criteria: r for r in done.per_testing_criteria_results}
    assert (by_name["self"].passed, by_name["answer"].failed) == (3, 3)
    usage = done.per_model_usage[0]
    assert usage.run_model_name == "chat" and usage.invocation_count == 3 and usage.completion_tokens == 12
    environment = done.to_dict()["corral"]["environment"]  # where it answered: the instance's arguments, this machine
    instance = next(i for i in httpx.get(corral.base + "/admin/instances", headers=corral.h).json() if i["model"] == "chat")
    assert environment["arguments"] == instance["arguments"] and environment["hardware"]["logicalCores"] == os.cpu_count()

    items = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id))
    assert [i.datasource_item_id for i in items] == [0, 1, 2]
    first = items[0]
    assert first.status == "fail" and first.datasource_item == QUESTIONS[0]["item"]
    assert [(r.name, r.passed) for r in first.results] == [("self", True), ("answer", False)]
    assert first.sample.input[0].content == "Question 0?" and first.sample.usage.completion_tokens == 4
    # The sample is what the model answers any client: the same request sent as a chat completion.
    direct = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Question 0?"}], max_tokens=4, temperature=0, seed=7)
    assert first.sample.output[0].content == direct.choices[0].message.content
    again = client.evals.runs.output_items.retrieve(first.id, eval_id=evaluation.id, run_id=run.id)
    assert again.id == first.id
    assert [i.datasource_item_id for i in client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, status="pass")] == []
    # The requests went through the serving path: ledger rows with the evaluation's route.
    def eval_rows():
        return sum(1 for r in httpx.get(corral.base + "/admin/usage/requests?limit=50", headers=corral.h).json()["data"] if r["route"] == "/v1/evals")
    wait_until(lambda: eval_rows() >= 3, 10, "three ledger rows of the run")


def test_a_jsonl_file_of_samples_is_graded_exactly(corral):
    client = sdk(corral)
    lines = [{"item": {"answer": "Paris"}, "sample": {"output_text": text}} for text in ("Paris", "paris", "The capital is Paris")]
    uploaded = client.files.create(file=("samples.jsonl", "\n".join(json.dumps(l) for l in lines).encode()), purpose="evals")
    evaluation = new_eval(client, criteria=[
        {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"},
        {"type": "string_check", "name": "mentions", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "ilike"},
        {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
         "evaluation_metric": "fuzzy_match", "pass_threshold": 0.8},
    ])
    run = client.evals.runs.create(evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": uploaded.id}})
    done = wait_run(client, evaluation.id, run.id)
    results = {r.testing_criteria: (r.passed, r.failed) for r in done.per_testing_criteria_results}
    assert results == {"exact": (1, 2), "mentions": (3, 0), "close": (2, 1)}  # "paris" is 0.8 like "Paris"
    assert done.result_counts.passed == 1 and done.per_model_usage == []


def test_bad_input_gets_a_400_that_says_why(corral):
    client = sdk(corral)
    with pytest.raises(openai.BadRequestError) as unknown:
        new_eval(client, criteria=[{"type": "python", "name": "p", "source": "def grade(): pass", "input": "x"}])
    assert "not supported" in unknown.value.message and unknown.value.body["param"] == "testing_criteria"
    evaluation = new_eval(client)
    missing = [{"item": {"question": "q", "answer": "a"}}, {"item": {"prompt": "no question here", "answer": "a"}}]
    with pytest.raises(openai.BadRequestError) as template:
        client.evals.runs.create(evaluation.id, data_source=completions(missing))
    assert "item 1 has no 'item.question'" in template.value.message
    notes = client.files.create(file=("n.txt", b"notes"), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as purpose:
        client.evals.runs.create(evaluation.id, data_source={**completions([]), "source": {"type": "file_id", "id": notes.id}})
    assert "not 'evals'" in purpose.value.message
    with pytest.raises(openai.BadRequestError):
        client.evals.runs.create(evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": QUESTIONS}})
    with pytest.raises(openai.BadRequestError) as concurrency:
        client.evals.runs.create(evaluation.id, data_source=completions(QUESTIONS), extra_body={"concurrency": 0})
    assert concurrency.value.body["param"] == "concurrency"
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.create("eval_nope", data_source=completions(QUESTIONS))
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.retrieve("evalrun-nope", eval_id=evaluation.id)


def test_cancel_and_delete(corral):
    client = sdk(corral)
    evaluation = new_eval(client)
    many = [{"item": {"question": f"Q{i}", "answer": "a"}} for i in range(300)]
    run = client.evals.runs.create(evaluation.id, data_source=completions(many, sampling_params={**SAMPLING, "max_completion_tokens": 16}))
    wait_run(client, evaluation.id, run.id, until=("in_progress",))
    canceled = client.evals.runs.cancel(run.id, eval_id=evaluation.id)
    assert canceled.status == "canceled"
    kept = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id))
    assert len(kept) < 300
    assert client.evals.runs.delete(run.id, eval_id=evaluation.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.retrieve(run.id, eval_id=evaluation.id)
    assert client.evals.delete(evaluation.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve(evaluation.id)


def test_a_run_interrupted_by_a_restart_resumes_its_remaining_items():
    c = start_corral()
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    try:
        client = sdk(c)
        evaluation = new_eval(client)
        items = [{"item": {"question": f"Q{i}", "answer": "a"}} for i in range(80)]
        run = client.evals.runs.create(evaluation.id, data_source=completions(items, sampling_params={**SAMPLING, "max_completion_tokens": 16}))
        deadline = time.time() + 120
        while len(list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, limit=100))) < 5:
            assert time.time() < deadline
            time.sleep(0.1)
        restart_corral(c)
        deadline = time.time() + 30
        while True:
            try:
                done = wait_run(sdk(c), evaluation.id, run.id)
                break
            except openai.APIConnectionError:
                assert time.time() < deadline
                time.sleep(0.2)
        assert done.status == "completed" and done.result_counts.total == 80
        ids = [i.datasource_item_id for i in sdk(c).evals.runs.output_items.list(run.id, eval_id=evaluation.id, limit=100)]
        assert sorted(ids) == list(range(80))
        job = httpx.get(c.base + f"/admin/jobs/{run.id}", headers=c.h).json()
        assert job["kind"] == "eval_run" and job["restarts"] == 1
        assert done.per_model_usage[0].invocation_count >= 80  # items answered before the stop may be asked again
    finally:
        stop_corral(c)


def test_a_team_sees_only_its_evaluations():
    c = start_corral()
    admin = {"authorization": f"Bearer {c.admin_token}"}
    try:
        teams = team_keys(c, "red", "blue")
        keys = {name: key for name, (_, key) in teams.items()}
        red = new_eval(sdk(c, keys["red"]))
        run = sdk(c, keys["red"]).evals.runs.create(red.id, data_source=completions(QUESTIONS[:1]))
        with pytest.raises(openai.NotFoundError):
            sdk(c, keys["blue"]).evals.retrieve(red.id)
        with pytest.raises(openai.NotFoundError):
            sdk(c, keys["blue"]).evals.runs.retrieve(run.id, eval_id=red.id)
        assert [e.id for e in sdk(c, keys["blue"]).evals.list()] == []
        assert [e.id for e in sdk(c, c.admin_token).evals.list()] == [red.id]
        done = wait_run(sdk(c, keys["red"]), red.id, run.id)
        assert done.status == "completed"
        wait_until(lambda: any(r["route"] == "/v1/evals" and r["team"] == teams["red"][0]
                               for r in httpx.get(c.base + "/admin/usage/requests?limit=20", headers=admin).json()["data"]),
                   10, "the run's ledger row under the red team")
    finally:
        stop_corral(c)



def test_label_and_score_criteria_are_judged_by_a_second_local_model():
    d = tempfile.mkdtemp(prefix="corral-py-")
    c = start_corral(directory=d, extra_models=[{"name": "judge", "path": f"{d}/chat.gguf", "contextSize": 1024}])
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    try:
        client = sdk(c)
        ask = [{"role": "user", "content": "Is '{{sample.output_text}}' a good answer to '{{item.question}}'?"}]
        evaluation = client.evals.create(
            name="judged", data_source_config={"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True},
            testing_criteria=[
                {"type": "label_model", "name": "verdict", "model": "judge", "input": ask, "labels": ["good", "bad"], "passing_labels": ["good"]},
                {"type": "score_model", "name": "score", "model": "judge", "input": ask, "range": [0, 10], "pass_threshold": 5},
            ])
        run = client.evals.runs.create(evaluation.id, data_source=completions(QUESTIONS))
        done = wait_run(client, evaluation.id, run.id)
        assert done.status == "completed" and done.result_counts.errored == 0, done
        for r in done.per_testing_criteria_results:
            assert r.passed + r.failed == 3
        usage = {u.run_model_name: u.invocation_count for u in done.per_model_usage}
        assert usage == {"chat": 3, "judge": 6}  # two judged criteria per item
        items = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id))
        verdicts = [r for i in items for r in i.results if r.name == "verdict"]
        assert len(verdicts) == 3 and all(v.score in (0, 1) and v.passed == (v.score == 1) for v in verdicts)
        scores = [r.score for i in items for r in i.results if r.name == "score"]
        assert all(0 <= s <= 10 for s in scores)
        def judged():
            return sum(1 for r in httpx.get(c.base + "/admin/usage/requests?limit=50", headers=c.h).json()["data"]
                       if r["model"] == "judge" and r["route"] == "/v1/evals")
        wait_until(lambda: judged() >= 6, 10, "six ledger rows of the judge")
        assert judged() == 6
    finally:
        stop_corral(c)


def test_compare_two_runs_and_follow_the_console(corral):
    client = sdk(corral)
    evaluation = new_eval(client, criteria=[
        {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}])
    answers = [f"a{i}" for i in range(8)]

    def graded(outputs):
        content = [{"item": {"answer": a}, "sample": {"output_text": o}} for a, o in zip(answers, outputs)]
        run = client.evals.runs.create(evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}})
        return wait_run(client, evaluation.id, run.id).id

    first = graded(answers[:2] + ["x"] * 6)  # passes items 0-1
    second = graded(answers)  # passes all 8
    compared = httpx.get(corral.base + f"/admin/evaluations/compare?runs={first},{second}", headers=corral.h).json()
    assert [r["pass_rate"] for r in compared["runs"]] == [0.25, 1.0]
    pair = compared["pairs"][0]
    assert (pair["both_pass"], pair["only_a_passes"], pair["only_b_passes"], pair["neither"]) == (2, 0, 6, 0)
    assert pair["pass_rate_difference"] == 0.75 and abs(pair["mcnemar_p"] - 2 / 64) < 1e-9
    assert [i["runs"][0]["status"] for i in compared["items"]] == ["pass"] * 2 + ["fail"] * 6
    assert httpx.get(corral.base + f"/admin/evaluations/compare?runs={first}", headers=corral.h).status_code == 400
    assert httpx.get(corral.base + f"/admin/evaluations/compare?runs={first},evalrun-nope", headers=corral.h).status_code == 404

    with httpx.stream("GET", corral.base + f"/admin/evaluations/runs/{second}/events", headers=corral.h, timeout=60) as r:
        lines = list(r.iter_lines())
    items = [json.loads(l[6:])["data"] for l, prev in zip(lines[1:], lines) if l.startswith("data: ") and prev == "event: item"]
    assert sorted(i["index"] for i in items) == list(range(8)) and all(i["status"] == "pass" for i in items)
    assert httpx.get(corral.base + "/admin/evaluations/runs/evalrun-nope/events", headers=corral.h).status_code == 404


def test_repetitions_give_each_item_a_pass_rate_and_interval(corral):
    client = sdk(corral)
    evaluation = new_eval(client, criteria=[
        {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}])
    content = [{"item": {"answer": "a"}, "sample": {"output_text": "a"}}, {"item": {"answer": "a"}, "sample": {"output_text": "b"}}]
    run = client.evals.runs.create(evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}},
                                   extra_body={"repetitions": 3})
    done = wait_run(client, evaluation.id, run.id).to_dict()
    assert done["result_counts"]["total"] == 6 and done["result_counts"]["passed"] == 3
    extension = done["corral"]
    assert extension["repetitions"] == 3 and extension["pass_rate"] == 0.5
    low, high = extension["pass_rate_interval"]
    assert 0.18 < low < 0.19 and 0.81 < high < 0.82  # Wilson, 3 of 6
    assert [(i["index"], i["passes"], i["pass_rate"]) for i in extension["items"]] == [(0, 3, 1.0), (1, 0, 0.0)]
    items = httpx.get(corral.base + f"/v1/evals/{evaluation.id}/runs/{run.id}/output_items?limit=100").json()["data"]
    assert sorted((i["datasource_item_id"], i["repetition"]) for i in items) == [(d, r) for d in (0, 1) for r in range(3)]
    with pytest.raises(openai.BadRequestError):
        client.evals.runs.create(evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}},
                                 extra_body={"repetitions": 0})


def test_a_prompt_sequence_sends_each_turn_after_the_answer_before(corral):
    client = sdk(corral)
    evaluation = new_eval(client, criteria=[SELF])
    items = [{"item": {"first": "Hello?", "second": "And then?"}}]
    source = {**completions(items), "input_messages": {"type": "sequence", "turns": ["{{item.first}}", "{{item.second}}"],
                                                       "template": [{"role": "system", "content": "Be brief."}]}}
    run = client.evals.runs.create(evaluation.id, data_source=source)
    done = wait_run(client, evaluation.id, run.id)
    assert done.status == "completed" and done.per_model_usage[0].invocation_count == 2  # one request per turn
    item = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id))[0].to_dict()
    first_answer, last_answer = item["sample"]["turns"]
    conversation = item["sample"]["input"]
    assert [m["role"] for m in conversation] == ["system", "user", "assistant", "user"]
    assert conversation[2]["content"] == first_answer and item["sample"]["output"][0]["content"] == last_answer
    # The same conversation, asked directly, gives the same answers.
    direct_first = client.chat.completions.create(model="chat", messages=conversation[:2], max_tokens=4, temperature=0, seed=7)
    assert direct_first.choices[0].message.content == first_answer
    direct_last = client.chat.completions.create(model="chat", messages=conversation, max_tokens=4, temperature=0, seed=7)
    assert direct_last.choices[0].message.content == last_answer
    with pytest.raises(openai.BadRequestError):
        client.evals.runs.create(evaluation.id, data_source={**source, "input_messages": {"type": "sequence", "turns": []}})


def test_the_console_streams_each_prompt_and_its_answer_tokens_live(corral):
    client = sdk(corral)
    evaluation = new_eval(client, criteria=[SELF])
    items = [{"item": {"question": f"Tell me about the number {i}.", "answer": ""}} for i in range(6)]
    run = client.evals.runs.create(evaluation.id, data_source=completions(items, sampling_params={**SAMPLING, "max_completion_tokens": 16}),
                                   extra_body={"concurrency": 1})
    # Hold the run between items while the console connects; what follows the resume is seen whole.
    httpx.post(corral.base + f"/admin/jobs/{run.id}/pause", headers=corral.h).raise_for_status()
    events = []
    with httpx.stream("GET", corral.base + f"/admin/evaluations/runs/{run.id}/events", headers=corral.h, timeout=120) as stream:
        httpx.post(corral.base + f"/admin/jobs/{run.id}/resume", headers=corral.h).raise_for_status()
        event = {}
        for line in stream.iter_lines():
            if line == "":
                events.append(event)
                event = {}
            else:
                field, _, value = line.partition(": ")
                event[field] = value
    assert wait_run(client, evaluation.id, run.id).status == "completed"
    prompts = [json.loads(e["data"]) for e in events if e.get("event") == "prompt"]
    tokens = [json.loads(e["data"]) for e in events if e.get("event") == "token"]
    graded = {d["index"]: d for d in (json.loads(e["data"])["data"] for e in events if e.get("event") == "item")}
    assert prompts and tokens and all("id" not in e for e in events if e.get("event") in ("prompt", "token"))  # live only: no replay id
    watched = [p["index"] for p in prompts]
    assert watched == sorted(watched) and watched[-1] == 5  # one at a time, in order
    for index in watched:
        prompt = next(p for p in prompts if p["index"] == index)
        assert prompt["input"] == [{"role": "user", "content": f"Tell me about the number {index}."}]
        answer = "".join(t["text"] for t in tokens if t["index"] == index)
        assert answer and answer == graded[index]["output"]
        assert 0 < graded[index]["ttft_ms"] <= graded[index]["total_ms"]
    first = next(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id).__iter__())
    assert 0 < first.sample.to_dict()["timings"]["time_to_first_token_ms"] <= first.sample.to_dict()["timings"]["total_ms"]
