"""Each instance reports how much of its prompts llama-server took from its prompt cache
(`timings.cache_n` against every prompt token) in /admin/instances, /metrics and the dashboard's
snapshot (issue 34)."""
import json

import httpx

PROMPT = "The quick brown fox jumps over the lazy dog. " * 12


def ask(c, stream=False):
    body = {"model": "chat", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2, "temperature": 0, "stream": stream}
    r = httpx.post(c.base + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text[:300]
    return r


def instance(c, model):
    return next(i for i in httpx.get(c.base + "/admin/instances", headers=c.h).json() if i["model"] == model)


def test_a_repeated_prompt_is_counted_as_cache_hits_everywhere_the_instance_is_shown(admin_corral):
    c = admin_corral
    ask(c)
    first = instance(c, "chat")["promptCache"]
    assert first["promptTokens"] > 100
    # The same prompt again, streamed this time: all but the last token or so comes from the cache.
    ask(c, stream=True)
    use = instance(c, "chat")["promptCache"]
    gained = use["cachedTokens"] - first["cachedTokens"]
    assert gained > 100, (first, use)
    assert use["promptTokens"] > first["promptTokens"]
    assert abs(use["hitRate"] - use["cachedTokens"] / use["promptTokens"]) < 1e-9

    metrics = httpx.get(c.base + "/metrics", headers=c.h).text
    ratio = [line for line in metrics.splitlines() if line.startswith('corral_instance_prompt_cache_hit_ratio{model="chat",replica="0"}')]
    assert ratio and abs(float(ratio[0].split()[-1]) - use["hitRate"]) < 1e-6, ratio
    cached = sum(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith('corral_prompt_cached_tokens_total{model="chat"'))
    assert cached == use["cachedTokens"]

    with httpx.stream("GET", c.base + "/admin/events?once=true", headers=c.h, timeout=30) as r:
        snapshot = next(line for line in r.iter_lines() if line.startswith("data: "))
    shown = next(i for i in json.loads(snapshot[6:])["instances"] if i["model"] == "chat")
    assert shown["promptCache"] == use


def test_a_model_nobody_asked_reports_no_cache_use(admin_corral):
    c = admin_corral
    httpx.post(c.base + "/admin/models/embed/load", headers=c.h, timeout=120)
    assert "promptCache" not in instance(c, "embed") or instance(c, "embed")["promptCache"] is None


def test_a_conversation_keeps_its_own_tokens_cached_while_another_with_the_same_system_prompt_is_served(admin_corral):
    # With llama-server's default slot similarity (0.1) the idle slot holding the other conversation
    # would win on the shared system prompt alone, and this conversation's own tokens would be
    # recomputed; cache.slotSimilarity (0.9) makes llama-server restore the conversation instead.
    c = admin_corral
    system = "You answer questions about the inventory of a small harbour town. " * 8

    def turn(messages):
        r = httpx.post(c.base + "/v1/chat/completions", timeout=120,
                       json={"model": "chat", "messages": messages, "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text[:300]
        return r.json()

    a = [{"role": "system", "content": system}, {"role": "user", "content": "The first list: " + "anchor rope net buoy " * 15}]
    b = [{"role": "system", "content": system}, {"role": "user", "content": "The second list: " + "crate barrel sack chest " * 15}]
    first = turn(a)
    turn(b)
    a += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]}, {"role": "user", "content": "And the last item?"}]
    again = turn(a)["timings"]
    assert "--slot-prompt-similarity" in instance(c, "chat")["arguments"]
    assert again["cache_n"] >= 0.9 * first["timings"]["prompt_n"], (first["timings"], again)
