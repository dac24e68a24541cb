"""The operator dashboard (/ui) end to end in headless Chromium against a real Corral.

Signs in with the keyboard (a wrong token first), moves through the navigation with Tab and Enter,
watches a model load after a chat request, creates a team and a key (rotates and revokes it), runs
a benchmark from the model page, pauses, resumes and cancels a job on the Jobs page and follows its event log, and screenshots every page at 1280x800 and 390x844 into
artifacts/dashboard/. After every test the browser log must hold no SEVERE entry.

Needs Debian's `chromium` and `chromium-driver`; without them the test skips, under CI=true it fails.
"""
import json
import time
import urllib.error
import urllib.request

import pytest

from corral_harness.browser import WAIT_S, active, click, fetched, go, press, record_fetches, screenshot, sign_in, text_of, wait

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
except ImportError:  # the browser fixture skips (fails under CI=true)
    By = Keys = None


def test_static_files_and_events_stream(corral):
    with urllib.request.urlopen(corral.base + "/ui") as r:
        assert r.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["content-security-policy"]
        etag = r.headers["etag"]
    with urllib.request.urlopen(corral.base + "/ui/pages/overview.js") as r:
        assert r.headers["content-type"].startswith("text/javascript") and r.headers["cache-control"] == "no-cache"
    with pytest.raises(urllib.error.HTTPError) as cached:
        urllib.request.urlopen(urllib.request.Request(corral.base + "/ui/", headers={"if-none-match": etag}))
    assert cached.value.code == 304
    for path in ("/ui/missing.js", "/ui/../routes.json", "/ui/%2e%2e/routes.json"):
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(corral.base + path)
        assert missing.value.code == 404, path

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(corral.base + "/admin/events?once=true")
    assert refused.value.code == 401
    req = urllib.request.Request(corral.base + "/admin/events?once=true", headers=corral.headers("/admin/events"))
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["content-type"] == "text/event-stream"
        body = r.read().decode()
    event, data = body.strip().split("\n", 1)
    assert event == "event: snapshot"
    snapshot = json.loads(data.removeprefix("data: "))
    assert {"time", "instances", "live", "points"} <= snapshot.keys()
    assert {"requestsPerSecond", "latencyP50Ms", "latencyP95Ms", "ttftP50Ms", "tokensPerSecond", "errors"} <= snapshot["live"].keys()


def test_sign_in_and_navigate_with_the_keyboard(corral, browser):
    browser.get(corral.base + "/ui")
    wait(browser, lambda d: active(d).get_attribute("id") == "token", "focus in the token field")
    screenshot(browser, "login")
    active(browser).send_keys("not-the-token", Keys.ENTER)
    error = wait(browser, lambda d: d.find_element(By.ID, "login-error").is_displayed() and d.find_element(By.ID, "login-error"), "the refusal")
    assert "refused" in error.text
    # The refused call is the only console error so far (Chromium logs the 401 response itself).
    assert all("401" in e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE")

    field = active(browser)
    assert field.get_attribute("id") == "token"
    field.clear()
    field.send_keys(corral.admin_token, Keys.ENTER)
    wait(browser, lambda d: d.find_element(By.ID, "nav").is_displayed(), "the navigation")
    wait(browser, lambda d: "Overview" in text_of(d, "#page h1"), "the overview")
    assert corral.admin_token not in browser.current_url
    assert browser.execute_script("return localStorage.length") == 0
    assert browser.execute_script("return sessionStorage.getItem('corral.adminToken')") == corral.admin_token

    # The tab keeps its session across a reload (sessionStorage), and from the top of the page
    # the tab order is the skip link, then the navigation in order; Enter follows a link.
    browser.refresh()
    wait(browser, lambda d: "Overview" in text_of(d, "#page h1"), "the overview after a reload")
    press(browser, Keys.TAB)
    assert active(browser).text == "Skip to content"
    press(browser, Keys.TAB)
    assert active(browser).text == "Overview"
    press(browser, Keys.TAB)
    link = active(browser)
    assert link.text == "Models"
    assert link.value_of_css_property("outline-style") == "solid", "keyboard focus must be visible"
    press(browser, Keys.ENTER)
    wait(browser, lambda d: "Models" in text_of(d, "#page h1"), "the models page")
    assert browser.find_element(By.CSS_SELECTOR, "#nav a[aria-current=page]").text == "Models"
    wait(browser, lambda d: "embed" in text_of(d, "#page table"), "the library table")


def test_overview_shows_a_model_load_after_a_chat_request(corral, browser):
    go(browser, "#/overview", "Overview")
    corral.post("/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    wait(browser, lambda d: "chat" in text_of(d, "#page table") and "loaded" in text_of(d, "#page table"), "chat loaded in the instances table")
    # The live numbers come from the stream: the request shows up in the last minute's rate.
    wait(browser, lambda d: text_of(d, "#live-stats li:first-child .value") not in ("—", "0"), "a request rate")
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure.chart svg")) == 5


def test_models_page_filters_and_benchmark(corral, browser):
    go(browser, "#/models", "Models")
    search = browser.find_element(By.ID, "q")
    search.send_keys("emb")
    wait(browser, lambda d: "embed" in text_of(d, "#page table") and "chat" not in text_of(d, "#page tbody"), "the filtered library")
    search.send_keys(Keys.BACKSPACE * 3)  # typing fires `input`; clear() does not
    wait(browser, lambda d: "chat" in text_of(d, "#page tbody"), "the whole library again")
    screenshot(browser, "models")

    browser.find_element(By.LINK_TEXT, "chat").click()
    wait(browser, lambda d: "GGUF facts" in text_of(d, "#page h2") and "Fit on this machine" in text_of(d, "#page h2"), "the model page")
    assert browser.find_elements(By.CSS_SELECTOR, "#page figure.chart svg polyline, #page figure.chart svg circle"), "compatibility plot"
    assert "limit" in text_of(browser, "#page figure.chart")
    for id_, value in (("b-requests", "4"), ("b-concurrency", "2"), ("b-max", "4"), ("b-words", "8")):
        box = browser.find_element(By.ID, id_)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.XPATH, "//button[text()='Run benchmark']").click()
    wait(browser, lambda d: " done" in text_of(d, "#page section p.notice"), "the benchmark to finish")
    wait(browser, lambda d: "4 × 2" in text_of(d, "#page table"), "the run in the benchmark history")
    screenshot(browser, "model-detail")


def test_teams_keys_and_usage(corral, browser):
    go(browser, "#/teams", "Teams")
    browser.find_element(By.ID, "team-name").send_keys("ops")
    browser.find_element(By.ID, "team-requestsPerMinute").send_keys("600")
    browser.find_element(By.XPATH, "//button[text()='Create team']").click()
    wait(browser, lambda d: "Keys of ops" in text_of(d, "#page h2"), "the new team's keys")
    assert "Requests/min 600" in text_of(browser, "#page table")

    browser.find_element(By.ID, "key-name").send_keys("laptop")
    browser.find_element(By.XPATH, "//button[text()='Create key']").click()
    key = wait(browser, lambda d: (d.find_element(By.ID, "new-key").get_attribute("value") or None) if d.find_elements(By.ID, "new-key") else None, "the new key")
    assert key.startswith("ck-")
    req = urllib.request.Request(corral.base + "/v1/models", headers={"authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 200
    prefix = key[: len("ck-XXXXXXXX")]
    wait(browser, lambda d: prefix in text_of(d, "#page table"), "the key in the list")
    screenshot(browser, "teams")

    browser.find_element(By.CSS_SELECTOR, f"button[aria-label='Rotate {prefix}']").click()
    wait(browser, lambda d: d.find_element(By.ID, "new-key").get_attribute("value") != key, "the rotated key")
    rotated = browser.find_element(By.ID, "new-key").get_attribute("value")
    new_prefix = rotated[: len("ck-XXXXXXXX")]
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"button[aria-label='Revoke {new_prefix}']"), "the rotated key's row")
    browser.find_element(By.CSS_SELECTOR, f"button[aria-label='Revoke {new_prefix}']").click()
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, f"button[aria-label='Revoke {new_prefix}']"), "the key revoked")
    assert text_of(browser, "#page tbody").count("revoked") == 2
    assert "Tokens per day by model" in text_of(browser, "figure.chart figcaption")


def test_requests_and_logs_pages(corral, browser):
    go(browser, "#/requests", "Requests")
    wait(browser, lambda d: "/v1/chat/completions" in text_of(d, "#page table"), "the ledger rows")
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#page tbody tr")]
    assert "/admin/benchmarks" in rows[0], "newest first: the benchmark's requests came after the chat request"
    browser.find_element(By.ID, "r-model").send_keys("nothing-here", Keys.ENTER)
    wait(browser, lambda d: "No request in this range." in text_of(d, "#page table"), "the filtered ledger")
    browser.find_element(By.ID, "r-model").clear()
    browser.find_element(By.XPATH, "//button[text()='Apply']").click()
    wait(browser, lambda d: "/v1/chat/completions" in text_of(d, "#page table"), "the ledger rows again")
    screenshot(browser, "requests")

    go(browser, "#/logs", "Logs")
    wait(browser, lambda d: len(d.find_element(By.CSS_SELECTOR, "pre.log").text) > 0, "the log tail")
    assert "pid" in text_of(browser, "#page p.notice")
    screenshot(browser, "logs")


def test_model_page_tuning_follows_its_event_stream(corral, browser):
    if not browser.current_url.startswith(corral.base + "/ui"):  # run alone (-k): sign the tab in
        sign_in(browser, corral)
    go(browser, "#/models/chat", "chat")
    browser.find_element(By.ID, "t-strategy").send_keys("grid")
    box = browser.find_element(By.ID, "t-requests")
    box.clear()
    box.send_keys("1")
    browser.find_element(By.XPATH, "//button[text()='Start tuning']").click()
    wait(browser, lambda d: "done, 2 of 2 trials finished" in text_of(d, "#page section p.notice"), "the tuning session to finish")
    assert "★ best" in text_of(browser, "#page table")
    browser.find_element(By.XPATH, "//button[text()='Apply the winner']").click()
    wait(browser, lambda d: "runtime profile" in text_of(d, "#page section p.notice"), "the winner applied")


def test_jobs_page_pauses_resumes_and_cancels_a_running_benchmark(corral, browser):
    job = corral.post("/admin/benchmarks", {"model": "chat", "requests": 10000, "maxTokens": 8})["id"]
    go(browser, "#/jobs", "Jobs")
    row = f"#page tr:has(a[href='#/jobs/{job}'])"
    wait(browser, lambda d: "running" in text_of(d, row), "the benchmark running in the jobs table")
    assert "benchmark" in text_of(browser, row) and "chat" in text_of(browser, row)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"{row} progress"), "its progress bar")
    screenshot(browser, "jobs")
    click(browser, f"button[aria-label='Pause {job}']", "the Pause button")
    wait(browser, lambda d: "paused" in text_of(d, row), "the job paused")
    click(browser, f"button[aria-label='Resume {job}']", "the Resume button")
    wait(browser, lambda d: "running" in text_of(d, row), "the job running again")

    browser.find_element(By.ID, "j-state").send_keys("succeeded")  # selects the option by typing
    browser.find_element(By.XPATH, "//button[text()='Apply']").click()
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, row), "the running job filtered out")
    browser.find_element(By.ID, "j-state").send_keys("any")
    browser.find_element(By.XPATH, "//button[text()='Apply']").click()

    click(browser, f"{row} a", "the job's link")
    wait(browser, lambda d: f"Job {job}" in text_of(d, "#page h1"), "the job page")
    wait(browser, lambda d: "progress" in text_of(d, "#job-events"), "progress events in the log")
    click(browser, f"button[aria-label='Cancel {job}']", "the Cancel button")
    wait(browser, lambda d: "cancelled" in text_of(d, "#page dl.facts") and "cancelled" in text_of(d, "#page p.notice"), "the job cancelled")
    ids = [int(e.get_attribute("data-id")) for e in browser.find_elements(By.CSS_SELECTOR, "#job-events tbody tr")]
    assert ids == sorted(set(ids)) and len(ids) >= 6, ids  # queued, running, progress…, paused, running, cancelling, cancelled
    assert corral.get(f"/admin/jobs/{job}")["lastEventID"] == ids[-1]
    screenshot(browser, "job-detail")


def test_evaluations_page_watches_a_run_live_and_compares_runs(corral, browser):
    admin = {"authorization": f"Bearer {corral.admin_token}"}  # the Evals API with the admin token (teams exist by now)

    def call(method, path, body=None):
        req = urllib.request.Request(corral.base + path, method=method, headers={"content-type": "application/json", **admin},
                                     data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    evaluation = call("POST", "/v1/evals", {
        "name": "dashboard", "data_source_config": {"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True},
        "testing_criteria": [{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}]})
    runs_path = f"/v1/evals/{evaluation['id']}/runs"

    def finished(run_id):
        for _ in range(600):
            run = call("GET", f"{runs_path}/{run_id}")
            if run["status"] in ("completed", "failed", "canceled"):
                return run
            time.sleep(0.1)
        raise AssertionError(run)

    answers = [f"a{i}" for i in range(8)]
    graded = []
    for outputs in (answers[:2] + ["x"] * 6, answers):
        content = [{"item": {"answer": a}, "sample": {"output_text": o}} for a, o in zip(answers, outputs)]
        graded.append(call("POST", runs_path, {"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": content}}})["id"])
        assert finished(graded[-1])["status"] == "completed"

    # A run of the chat model held between items while its page opens: after the resume, every
    # request shows up in the console with its prompt and streamed answer.
    items = [{"item": {"question": f"Say something about {i}.", "answer": ""}} for i in range(5)]
    live = call("POST", runs_path, {"concurrency": 1, "data_source": {
        "type": "completions", "model": "chat", "sampling_params": {"temperature": 0, "max_completion_tokens": 12, "seed": 3},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
        "source": {"type": "file_content", "content": items}}})["id"]
    call("POST", f"/admin/jobs/{live}/pause")
    record_fetches(browser)
    go(browser, f"#/evaluations/{live}", "Evaluation run")
    wait(browser, lambda d: "in_progress" in text_of(d, "#page dl.facts"), "the paused run's facts")
    wait(browser, lambda d: any(f"/evaluations/runs/{live}/events" in url for url in fetched(d)), "the console's stream to open")
    call("POST", f"/admin/jobs/{live}/resume")
    wait(browser, lambda d: "completed" in text_of(d, "#page p.notice"), "the run to finish on its page")
    rows = browser.find_elements(By.CSS_SELECTOR, "#eval-results tbody tr")
    assert len(rows) == 5
    stored = {i["datasource_item_id"]: i["sample"]["output"][0]["content"] for i in call("GET", f"{runs_path}/{live}/output_items")["data"]}
    lines = browser.find_elements(By.CSS_SELECTOR, "#eval-console li")
    assert lines and int(lines[-1].get_attribute("data-item")) == 4
    last = lines[-1]
    assert last.find_element(By.CSS_SELECTOR, ".prompt").text == "Say something about 4."
    assert last.find_element(By.CSS_SELECTOR, ".answer").text.strip() == stored[4].strip() and stored[4].strip()
    assert "to first token" in last.find_element(By.CSS_SELECTOR, ".grades").text
    screenshot(browser, "evaluation-run")

    go(browser, "#/evaluations", "Evaluations")
    for run_id in graded:
        click(browser, f"input[aria-label='Compare {run_id}']", f"the compare box of {run_id}")
    browser.find_element(By.XPATH, "//button[text()='Compare selected runs']").click()
    wait(browser, lambda d: "Comparison" in text_of(d, "#compare h2"), "the comparison")
    assert "25.0 %" in text_of(browser, "#compare") and "100.0 %" in text_of(browser, "#compare")
    assert "+75 pt" in text_of(browser, "#compare"), text_of(browser, "#compare")
    assert live in text_of(browser, "#page table")
    screenshot(browser, "evaluations")


def test_overview_history_after_the_traffic(corral, browser):
    """The server samples a history point every 10 s; by now the charts have drawn some."""
    go(browser, "#/overview", "Overview")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "figure.chart svg circle"), "history points in the charts")
    screenshot(browser, "overview")


@pytest.mark.slow
def test_fine_tuning_page_shows_a_job_training_live_and_its_result(corral, browser):
    from openai import OpenAI

    client = OpenAI(base_url=corral.base + "/v1", api_key=corral.admin_token, max_retries=0, timeout=120)
    text = ("The quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 25
    training = client.files.create(file=("t.txt", text.encode()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="chat", training_file=training.id, hyperparameters={"n_epochs": 2},
                                         extra_body={"preset": "efficient"})
    if not browser.current_url.startswith(corral.base + "/ui"):  # run alone (-k): sign the tab in
        sign_in(browser, corral)
    go(browser, f"#/fine-tuning/{job.id}", "Fine-tuning job")

    def long_wait(condition, what, seconds=600):  # two epochs take minutes on a small CPU
        return wait(browser, condition, what, seconds, interval=0.2)

    def train_vertices(d):
        """The vertices of the training-loss line in the chart's SVG."""
        return d.execute_script("return [...document.querySelectorAll('#ft-chart svg polyline.s0')]"
                                ".reduce((n, line) => n + line.getAttribute('points').trim().split(/\\s+/).length, 0)")

    # The chart grows while the job trains: a line first, then more steps on it, before the end.
    first = long_wait(lambda d: train_vertices(d) >= 2 and train_vertices(d), "the training-loss line")
    long_wait(lambda d: train_vertices(d) > first, "more training steps on the line")
    assert client.fine_tuning.jobs.retrieve(job.id).status not in ("succeeded", "failed", "cancelled"), "grew only after the end"
    assert "running" in text_of(browser, "#ft-facts")
    assert browser.find_elements(By.CSS_SELECTOR, f"button[aria-label='Pause {job.id}']")
    assert browser.find_elements(By.CSS_SELECTOR, f"button[aria-label='Cancel {job.id}']")

    long_wait(lambda d: "succeeded" in text_of(d, "#ft-facts") and "succeeded" in text_of(d, "#page p.notice"), "the job to succeed on its page")
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded" and done.fine_tuned_model
    wait(browser, lambda d: text_of(d, "#ft-model") == done.fine_tuned_model, "the fine-tuned model's name")
    assert not browser.find_elements(By.CSS_SELECTOR, f"button[aria-label='Cancel {job.id}']")

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    rows = wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ft-checkpoints tbody tr")) == 2
                and d.find_elements(By.CSS_SELECTOR, "#ft-checkpoints tbody tr"), "two checkpoint rows")
    assert [r.find_element(By.CSS_SELECTOR, "code").text for r in rows] == [c.fine_tuned_model_checkpoint for c in checkpoints]

    quality = done.model_extra["quality"]
    before = f"{quality['perplexity_before']['perplexity']:.2f}"
    after = f"{quality['perplexity_after']['perplexity']:.2f}"
    shown = browser.execute_script("return [...document.querySelectorAll('#ft-quality .perplexity')].map((e) => e.textContent)")
    assert shown == [before, after], (shown, quality)

    # Every training step of the curve is on the line once the job is done, and one validation
    # dot per epoch end.
    curve = corral.get(f"/admin/fine-tuning/{job.id}/curve")["points"]
    assert train_vertices(browser) == len([p for p in curve if p.get("valid_loss") is None]) > first
    assert len(browser.find_elements(By.CSS_SELECTOR, "#ft-chart svg circle.s1")) == 2
    log = text_of(browser, "#ft-messages tbody")
    assert f"New fine-tuned model created: {done.fine_tuned_model}" in log and "The job has successfully completed" in log
    screenshot(browser, "fine-tuning-job")

    go(browser, "#/fine-tuning", "Fine-tuning")
    assert browser.find_element(By.CSS_SELECTOR, "#nav a[aria-current=page]").text == "Fine-tuning"
    row = f"#page tr:has(a[href='#/fine-tuning/{job.id}'])"
    wait(browser, lambda d: "succeeded" in text_of(d, row), "the job's row")
    cells = text_of(browser, row)
    for expected in ("chat", done.fine_tuned_model, "2 / 2", f"{before} → {after}"):
        assert expected in cells, (expected, cells)
    screenshot(browser, "fine-tuning")


def test_tuning_shows_trials_live_and_the_pareto_front(corral, browser):
    """A grid session started from the model page's form and held between trials (paused, then let
    on one trial at a time): the trial table and the scatter plot gain each trial as it finishes
    while the session still runs, and the first trial is highlighted as the new best when it
    arrives. At the end the plot has one point per measured trial, the points and rows marked
    Pareto are the session's `pareto` and the row marked best is its `best`."""
    from selenium.webdriver.support.ui import Select

    if not browser.current_url.startswith(corral.base + "/ui"):  # run alone (-k): sign the tab in
        sign_in(browser, corral)
    before = {s["id"] for s in corral.get("/admin/tuning?model=chat")["sessions"]}
    go(browser, "#/models", "Models")  # the model page is drawn afresh even if it was the page before
    go(browser, "#/models/chat", "chat")
    wait(browser, lambda d: "Tuning" in text_of(d, "#page h2"), "the tuning section")

    Select(browser.find_element(By.ID, "t-strategy")).select_by_value("grid")
    for id_, value in (("t-ctx", ""), ("t-threads", ""), ("t-ubatch", "64,128,256"), ("t-requests", "2"), ("t-max", "4")):
        box = browser.find_element(By.ID, id_)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.XPATH, "//button[text()='Start tuning']").click()
    # Held at once (a warm trial takes about 0.1 s): paused, it stops before its next trial.
    deadline, sid = time.time() + WAIT_S, None
    while sid is None and time.time() < deadline:
        sid = next((s["id"] for s in corral.get("/admin/tuning?model=chat")["sessions"] if s["id"] not in before), None)
    assert sid, "no session started from the form"
    paused = corral.post(f"/admin/jobs/{sid}/pause", {})
    assert paused["state"] == "paused", paused
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#tuning-view").get_attribute("data-session") == sid, "the new session on the page")

    def session():
        return corral.get(f"/admin/tuning/{sid}")

    def measure(trial, interval, result):
        """The server's measure of a trial: the mean over repetitions, else the load's p50."""
        return ((trial.get("measures") or {}).get(interval) or {}).get("mean", ((trial.get("result") or {}).get(result) or {}).get("p50"))

    def measured(s):
        return sorted(t["index"] for t in s["trials"] if measure(t, "generationTPS", "generationTokensPerSecond") is not None
                      and measure(t, "ttftMs", "timeToFirstTokenMs") is not None)

    def settled(at_least):
        """The session paused between trials (the same twice, 0.3 s apart) with `at_least` trials measured."""
        deadline, last = time.time() + WAIT_S, None
        while time.time() < deadline:
            s = session()
            now = [t["status"] for t in s["trials"]]
            if s["status"] == "paused" and "running" not in now and len(measured(s)) >= at_least and now == last:
                return s
            last = now if s["status"] == "paused" else None
            time.sleep(0.3)
        raise AssertionError(f"the session did not pause between trials: {s}")

    def shown(d):
        """The page's trial rows (index, status) and its plot's points."""
        rows = [(int(r.get_attribute("data-index")), r.get_attribute("data-status"))
                for r in d.find_elements(By.CSS_SELECTOR, "#tuning-trials tbody tr[data-index]")]
        points = sorted(int(p.get_attribute("data-index")) for p in d.find_elements(By.CSS_SELECTOR, "#tuning-chart svg circle.point"))
        return rows, points

    s = settled(0)
    total = len(s["trials"])
    assert total == 3 and len(measured(s)) < total, s
    seen_rows, new_best_seen = [], False
    while True:
        done_now = measured(s)
        expected = [(i, "done") for i in done_now]
        wait(browser, lambda d: shown(d) == (expected, done_now) and "paused" in text_of(d, "#page section p.notice"),
             f"{len(done_now)} finished trials on the page while the session is paused")
        seen_rows.append(len(done_now))
        if done_now and not new_best_seen:
            # The first measured trial is the first best: highlighted as it arrived, the best so far.
            row = browser.find_element(By.CSS_SELECTOR, f"#tuning-trials tr[data-index='{done_now[0]}']")
            assert "new-best" in row.get_attribute("class") and "new best" in row.text and "★ best so far" in row.text, row.text
            assert "new best: trial" in text_of(browser, "#page section p.notice")
            new_best_seen = True
            browser.execute_script("document.getElementById('tuning-view').scrollIntoView()")
            screenshot(browser, "model-tuning-live")
        if len(done_now) == total - 1:
            break
        corral.post(f"/admin/jobs/{sid}/resume", {})
        corral.post(f"/admin/jobs/{sid}/pause", {})  # after the trial the resume let start
        s = settled(len(done_now) + 1)
    assert new_best_seen and seen_rows == list(range(seen_rows[0], total)), seen_rows
    corral.post(f"/admin/jobs/{sid}/resume", {})
    wait(browser, lambda d: f"done, {total} of {total} trials finished" in text_of(d, "#page section p.notice"), "the session to finish")

    s = session()
    assert s["status"] == "done" and s["best"] is not None and s["pareto"], s
    rows, points = shown(browser)
    assert rows == [(t["index"], t["status"]) for t in s["trials"]]
    assert points == measured(s), (points, s)
    pareto_points = sorted(int(p.get_attribute("data-index")) for p in browser.find_elements(By.CSS_SELECTOR, "#tuning-chart circle.point.pareto"))
    pareto_rows = sorted(int(r.get_attribute("data-index")) for r in browser.find_elements(By.CSS_SELECTOR, "#tuning-trials tr.pareto"))
    assert pareto_points == pareto_rows == sorted(s["pareto"]), (pareto_points, pareto_rows, s["pareto"])
    best_rows = browser.find_elements(By.CSS_SELECTOR, "#tuning-trials tr.best")
    assert [int(r.get_attribute("data-index")) for r in best_rows] == [s["best"]]
    assert "★ best" in best_rows[0].text and "so far" not in best_rows[0].text
    assert [int(p.get_attribute("data-index")) for p in browser.find_elements(By.CSS_SELECTOR, "#tuning-chart circle.point.best")] == [s["best"]]
    assert not browser.find_elements(By.CSS_SELECTOR, "#tuning-trials tr.new-best"), "the highlight ends with the session"
    if len(s["pareto"]) > 1:
        assert browser.find_elements(By.CSS_SELECTOR, "#tuning-chart polyline.front-line"), "the front's step line"
    labels = text_of(browser, "#tuning-chart")
    assert "time to first token p50 (ms)" in labels and "generation (tokens/s)" in labels and "Pareto front" in labels
    assert browser.find_elements(By.XPATH, "//button[text()='Apply the winner']")
    browser.execute_script("document.getElementById('tuning-view').scrollIntoView()")
    screenshot(browser, "model-tuning")

    Select(browser.find_element(By.ID, "t-xaxis")).select_by_value("memory")
    wait(browser, lambda d: "memory (MiB)" in text_of(d, "#tuning-chart"), "the plot against memory")
    assert shown(browser)[1] == measured(s)
