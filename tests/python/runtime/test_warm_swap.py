"""Warm swaps (issue 34): before an instance stops, the KV cache of each slot that holds a prompt
is saved under DATA_DIR/kv, and restored when a launch of the same shape starts, so the next turn
of a conversation is a cache hit (`timings.cache_n` > 0) instead of a recomputed prompt. A cache
of another shape is never restored, a model can opt out, and a save that fails does not hold up
the stop."""
import json
import os
import shutil
import signal
import tempfile

import httpx

from corral_harness.corral import make_model, start_corral, stop_corral, wait_until

PROMPT = "Once upon a time a small fox lived at the edge of a very old forest. " * 10


def ask(c, model="chat"):
    r = httpx.post(c.base + "/v1/chat/completions", timeout=120,
                   json={"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.text[:300]
    return r.json()["timings"]


def unload(c, model="chat"):
    r = httpx.post(c.base + f"/admin/models/{model}/unload", headers=c.h, timeout=60)
    assert r.status_code < 300, r.text


def counter(c, name) -> float:
    for line in httpx.get(c.base + "/metrics", headers=c.h).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def instance(c, model):
    return next(i for i in httpx.get(c.base + "/admin/instances", headers=c.h).json() if i["model"] == model)


def kv_files(c):
    root = f"{c.directory}/data/kv"
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


def corral(**extra_config):
    c = start_corral(extra_config=extra_config or None)
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    return c


def test_a_swapped_out_model_answers_the_next_turn_from_its_restored_cache():
    c = corral()
    try:
        assert ask(c)["cache_n"] == 0
        assert "--slot-save-path" in instance(c, "chat")["arguments"]
        unload(c)
        assert counter(c, "corral_warm_swap_slots_saved_total") >= 1
        assert kv_files(c), "nothing was saved under DATA_DIR/kv"
        timings = ask(c)
        # All of the prompt but its last token came back with the restored slot.
        assert timings["cache_n"] > 100, timings
        assert counter(c, "corral_warm_swap_slots_restored_total") >= 1
        # Without warm swaps the same turn after a reload starts cold: the embedding instance
        # keeps no prompts and is never given a save path.
        httpx.post(c.base + "/admin/models/embed/load", headers=c.h, timeout=60)
        assert "--slot-save-path" not in instance(c, "embed")["arguments"]
    finally:
        stop_corral(c)


def test_a_cache_of_another_shape_is_never_restored():
    c = corral()
    try:
        ask(c)
        unload(c)
        assert kv_files(c)
        # The same model with another context: the saved cache does not fit this launch.
        with open(f"{c.directory}/routes.json") as f:
            config = json.load(f)
        next(m for m in config["models"] if m["name"] == "chat")["contextSize"] = 4096
        with open(f"{c.directory}/routes.json", "w") as f:
            json.dump(config, f)
        reloads = c.log().count("configuration reloaded")
        c.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: c.log().count("configuration reloaded") > reloads, 20, "the configuration to reload")
        timings = ask(c)
        assert timings["cache_n"] == 0, timings
        assert counter(c, "corral_warm_swap_slots_restored_total") == 0
    finally:
        stop_corral(c)


def test_a_model_that_opts_out_starts_cold():
    d = tempfile.mkdtemp(prefix="corral-py-cold-")
    c = start_corral(extra_models=[{"name": "cold", "path": make_model(d, "cold"), "contextSize": 2048, "parallel": 2, "warmSwap": False}])
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    try:
        ask(c, "cold")
        assert "--slot-save-path" not in instance(c, "cold")["arguments"]
        unload(c, "cold")
        assert ask(c, "cold")["cache_n"] == 0
        assert counter(c, "corral_warm_swap_slots_saved_total") == 0
    finally:
        stop_corral(c)
        shutil.rmtree(d, ignore_errors=True)


def test_a_save_that_fails_does_not_hold_up_the_stop():
    # A timeout of zero: every save is out of time before it starts.
    c = corral(cache={"saveTimeout": 0})
    try:
        ask(c)
        unload(c)
        assert instance(c, "chat")["state"] == "unloaded"
        assert counter(c, "corral_warm_swap_save_failures_total") == 1
        assert "the KV caches were not saved" in c.log()
        assert ask(c)["cache_n"] == 0
    finally:
        stop_corral(c)
