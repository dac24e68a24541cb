"""Replicas of a model (issue 34): `models[].replicas` starts another instance while requests wait
longer than `scaleUpAfter`, stops it when idle for `scaleDownAfter`, never evicts a busy model for
one, and routes by prompt prefix: a conversation sticks to the instance that holds its prefix,
while a request whose instance is full is balanced away to another."""
import contextlib
import os
import signal
import threading
import time

import httpx

from corral_harness.corral import start_corral, stop_corral, wait_until

SYSTEM = "You answer questions about the inventory of a small harbour town. " * 12


def corral(models, scheduler=None):
    import tempfile
    d = tempfile.mkdtemp(prefix="corral-replicas-")
    c = start_corral(directory=d, extra_models=[{**m, "path": f"{d}/chat.gguf"} for m in models], scheduler=scheduler)
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    return c


def instances(c, model):
    return sorted((i for i in httpx.get(c.base + "/admin/instances", headers=c.h).json() if i["model"] == model), key=lambda i: i["replica"])


def loaded(c, model):
    return [i for i in instances(c, model) if i["state"] == "loaded"]


def chat(c, model, messages, max_tokens=2, **extra):
    r = httpx.post(c.base + "/v1/chat/completions", timeout=300,
                   json={"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra})
    assert r.status_code == 200, r.text[:300]
    return r.json()


@contextlib.contextmanager
def paused(*instances_):
    """Stops the instances' llama-servers (SIGSTOP) so the requests they hold stay in flight however
    fast the machine is; continues them on leaving."""
    for i in instances_:
        os.kill(i["pid"], signal.SIGSTOP)
    try:
        yield
    finally:
        for i in instances_:
            os.kill(i["pid"], signal.SIGCONT)


class Background(threading.Thread):
    """A request sent from another thread; `result` once it is answered."""

    def __init__(self, send):
        super().__init__(daemon=True)
        self.send, self.result = send, None
        self.start()

    def run(self):
        self.result = self.send()


def in_flight(c, model, replica):
    return next(i for i in instances(c, model) if i["replica"] == replica)["inFlight"]


def test_a_queue_starts_another_instance_which_stops_when_idle():
    c = corral([{"name": "rep", "contextSize": 4096, "parallel": 1, "ttl": "10m",
                 "replicas": {"max": 2, "scaleUpAfter": "200ms", "scaleDownAfter": "1s"}}])
    try:
        chat(c, "rep", [{"role": "user", "content": "hello"}])
        assert [i["replica"] for i in loaded(c, "rep")] == [0]
        with paused(loaded(c, "rep")[0]):
            # Its only slot held by a request it cannot answer now: the next request queues, and past
            # scaleUpAfter a second instance starts for it.
            hold = Background(lambda: chat(c, "rep", [{"role": "user", "content": "tell a story"}]))
            wait_until(lambda: in_flight(c, "rep", 0) == 1, 30, "the first request to hold the slot")
            t0 = time.monotonic()
            chat(c, "rep", [{"role": "user", "content": "a quick one"}])
            assert hold.is_alive()
            running = loaded(c, "rep")
        assert [i["replica"] for i in running] == [0, 1], running
        # On a CPU the cores are divided among the replicas (max 2).
        args = running[1]["arguments"]
        assert args[args.index("-t") + 1] == str(max(1, (os.cpu_count() or 2) // 2))
        metrics = httpx.get(c.base + "/metrics", headers=c.h).text
        assert "corral_loaded_models 1" in metrics and "corral_loaded_instances 2" in metrics
        assert 'corral_instance_in_flight{model="rep",replica="1"}' in metrics
        print(f"queued request served by the new instance after {time.monotonic() - t0:.2f} s")
        hold.join(300)
        assert hold.result["choices"]
        # Idle past scaleDownAfter: the extra instance stops, the first stays (its TTL is 10 minutes).
        wait_until(lambda: [i["replica"] for i in loaded(c, "rep")] == [0], 30, "the second instance to stop when idle")
        assert instances(c, "rep")[1]["state"] == "unloaded"
    finally:
        stop_corral(c)


def test_another_instance_never_evicts_a_busy_model():
    # Measure one instance's projection, then allow room for one of each model but not a second replica.
    models = [{"name": "rep", "contextSize": 2048, "parallel": 1, "cacheRamMiB": 0, "replicas": {"max": 2, "scaleUpAfter": "100ms"}},
              {"name": "other", "contextSize": 2048, "parallel": 1, "cacheRamMiB": 0}]
    c = corral(models)
    try:
        chat(c, "rep", [{"role": "user", "content": "hello"}])
        each = loaded(c, "rep")[0]["projectedMiB"]
    finally:
        stop_corral(c)
    budget = int(each * 2.5)
    c = corral(models, scheduler={"memoryBudgetMiB": budget})
    try:
        chat(c, "rep", [{"role": "user", "content": "hello"}])
        chat(c, "other", [{"role": "user", "content": "hello"}])
        with paused(loaded(c, "rep")[0], loaded(c, "other")[0]):
            # Both models busy (their only slots held), and no room for a second instance of rep.
            holds = [Background(lambda m=m: chat(c, m, [{"role": "user", "content": "tell a story"}])) for m in ("rep", "other")]
            wait_until(lambda: in_flight(c, "rep", 0) == 1 and in_flight(c, "other", 0) == 1, 30, "both slots to be held")
            queued = Background(lambda: chat(c, "rep", [{"role": "user", "content": "a quick one"}]))
            wait_until(lambda: instances(c, "rep")[0]["queued"] == 1, 30, "the request to queue")
            time.sleep(1)  # ten scale-up intervals: what a replica would have done, it has done
            assert [i["replica"] for i in loaded(c, "rep")] == [0], instances(c, "rep")
            assert loaded(c, "other"), "the busy model was evicted for a replica"
        for request in holds + [queued]:
            request.join(300)
            assert request.result["choices"]
    finally:
        stop_corral(c)
    # Room for one instance only, and min 2: the second never makes room by stopping the first.
    c = corral([{**models[0], "replicas": {"min": 2, "max": 2}}], scheduler={"memoryBudgetMiB": int(each * 1.5)})
    try:
        chat(c, "rep", [{"role": "user", "content": "hello"}])
        time.sleep(1)
        assert [i["replica"] for i in loaded(c, "rep")] == [0], instances(c, "rep")
        chat(c, "rep", [{"role": "user", "content": "still here"}])
        assert [i["replica"] for i in loaded(c, "rep")] == [0]
    finally:
        stop_corral(c)


def test_a_models_replicas_count_once_against_max_loaded_models():
    # Two models of two instances each under maxLoadedModels 2: two models, so all four stay
    # loaded (counting instances, the second model's second instance evicted the first's).
    models = [{"name": name, "contextSize": 1024, "parallel": 1, "replicas": {"min": 2, "max": 2}} for name in ("one", "two")]
    c = corral(models, scheduler={"maxLoadedModels": 2})
    try:
        for name in ("one", "two"):
            chat(c, name, [{"role": "user", "content": "hello"}])
            wait_until(lambda: len(loaded(c, name)) == 2, seconds=120, what=f"both instances of {name}")
        time.sleep(1)
        assert [len(loaded(c, name)) for name in ("one", "two")] == [2, 2], instances(c, "one") + instances(c, "two")
    finally:
        stop_corral(c)


def cache_use(c, model):
    return {i["replica"]: (i.get("promptCache") or {}).get("promptTokens", 0) for i in instances(c, model)}


def test_a_conversation_sticks_to_its_instance_and_a_full_instance_is_balanced_away():
    c = corral([{"name": "rep", "contextSize": 8192, "parallel": 1, "replicas": {"min": 2, "max": 2}}])
    try:
        chat(c, "rep", [{"role": "user", "content": "hello"}])
        wait_until(lambda: len(loaded(c, "rep")) == 2, 60, "replicas.min instances to load")
        before = cache_use(c, "rep")
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is in the first warehouse?"}]
        homes = []
        for turn in range(4):
            answer = chat(c, "rep", messages, max_tokens=8)
            after = cache_use(c, "rep")
            grew = [r for r in after if after[r] > before.get(r, 0)]
            assert len(grew) == 1, (before, after)
            homes.append(grew[0])
            before = after
            messages += [{"role": "assistant", "content": answer["choices"][0]["message"]["content"]},
                         {"role": "user", "content": f"And in warehouse number {turn + 2}?"}]
        assert len(set(homes)) == 1, f"the conversation moved between instances: {homes}"
        home = homes[0]
        # Its instance busy with the conversation's next turn, a request with the same prefix goes to the other one at once.
        with paused(next(i for i in loaded(c, "rep") if i["replica"] == home)):
            # The conversation's next turn goes home and holds its only slot there...
            hold = Background(lambda: chat(c, "rep", messages))
            wait_until(lambda: in_flight(c, "rep", home) == 1, 30, "the next turn to go to its instance")
            # ...so a request with the same prefix is balanced away to the other instance at once.
            t0 = time.monotonic()
            chat(c, "rep", messages + [{"role": "assistant", "content": "..."}, {"role": "user", "content": "Meanwhile?"}])
            waited = time.monotonic() - t0
            after = cache_use(c, "rep")
            assert hold.is_alive()
        assert after[1 - home] > before[1 - home], (before, after)
        print(f"balanced away in {waited:.2f} s")
        hold.join(300)
        assert hold.result["choices"]
    finally:
        stop_corral(c)


def test_with_every_instance_busy_a_turn_waits_for_the_instance_that_holds_its_conversation():
    c = corral([{"name": "rep", "contextSize": 8192, "parallel": 1, "replicas": {"min": 2, "max": 2, "scaleUpAfter": "30s"}}])
    try:
        chat(c, "rep", [{"role": "user", "content": "hello"}])
        wait_until(lambda: len(loaded(c, "rep")) == 2, 60, "replicas.min instances to load")
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is in the first warehouse?"}]
        before = cache_use(c, "rep")
        answer = chat(c, "rep", messages, max_tokens=8)
        after = cache_use(c, "rep")
        home = next(r for r in after if after[r] > before.get(r, 0))
        messages += [{"role": "assistant", "content": answer["choices"][0]["message"]["content"]}, {"role": "user", "content": "And the second?"}]
        home_instance = next(i for i in loaded(c, "rep") if i["replica"] == home)
        other_instance = next(i for i in loaded(c, "rep") if i["replica"] != home)
        with paused(home_instance):
            with paused(other_instance):
                # Both instances hold a request of another conversation.
                holds = [Background(lambda n=n: chat(c, "rep", [{"role": "user", "content": f"another conversation {n}"}])) for n in range(2)]
                wait_until(lambda: in_flight(c, "rep", 0) == 1 and in_flight(c, "rep", 1) == 1, 30, "both instances to be busy")
                turn = Background(lambda: chat(c, "rep", messages, max_tokens=2))
                wait_until(lambda: instances(c, "rep")[0]["queued"] == 1, 30, "the next turn to queue")
            # The other instance frees first, but the turn keeps waiting for its own.
            wait_until(lambda: in_flight(c, "rep", 1 - home) == 0, 30, "the other instance to finish")
            time.sleep(0.5)
            assert instances(c, "rep")[0]["queued"] == 1, "the turn went to the instance without its conversation"
            before = cache_use(c, "rep")
        turn.join(300)
        assert turn.result["choices"]
        after = cache_use(c, "rep")
        assert after[home] > before[home] and after[1 - home] == before[1 - home], (before, after)
        for h in holds:
            h.join(300)
    finally:
        stop_corral(c)


def test_the_openai_sdks_user_field_keeps_a_session_on_its_instance():
    import openai
    c = corral([{"name": "rep", "contextSize": 2048, "parallel": 1, "replicas": {"min": 2, "max": 2}}])
    try:
        client = openai.OpenAI(base_url=c.base + "/v1", api_key="none", max_retries=0)
        client.chat.completions.create(model="rep", messages=[{"role": "user", "content": "hello"}], max_tokens=1)
        wait_until(lambda: len(loaded(c, "rep")) == 2, 60, "replicas.min instances to load")
        # Requests with no preferred instance alternate: the first went to replica 0, the next goes to 1.
        with paused(next(i for i in loaded(c, "rep") if i["replica"] == 1)):
            hold = Background(lambda: chat(c, "rep", [{"role": "user", "content": "hold the second instance"}]))
            wait_until(lambda: in_flight(c, "rep", 1) == 1, 30, "the second instance to be busy")
            # The second instance is busy, so this session starts on the first.
            client.chat.completions.create(model="rep", messages=[{"role": "user", "content": "a question"}], max_tokens=1, user="alice")
        hold.join(300)
        before = cache_use(c, "rep")
        # Both idle now, where a request without a session would go to the second (the next after
        # the first, which alice's request was given last): alice's goes back to the first.
        client.chat.completions.create(model="rep", messages=[{"role": "user", "content": "something else entirely"}], max_tokens=1, user="alice")
        after = cache_use(c, "rep")
        assert after[0] > before[0] and after[1] == before[1], (before, after)
    finally:
        stop_corral(c)
