"""Ollama's load-time options choose the instance: exact ones (num_thread, num_batch, num_gpu,
use_mmap) restart an idle instance that differs, num_ctx is only a minimum, and requests without
them reuse whatever runs."""
import httpx
import pytest

from corral_harness.corral import start_corral, stop_corral


@pytest.fixture(scope="module")
def corral():
    c = start_corral()
    yield c
    stop_corral(c)


def chat(c, **options):
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": False, "options": {"num_predict": 2, **options}}
    r = httpx.post(c.base + "/api/chat", json=body, timeout=60)
    assert r.status_code == 200, r.text
    inst = next(i for i in c.get("/admin/instances") if i["model"] == "chat")
    return inst["pid"], inst["arguments"]


def flag(args, name):
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == name][-1:]


def test_exact_options_restart_an_idle_instance_and_minimums_do_not(corral):
    pid1, args1 = chat(corral, num_thread=1, num_batch=64)
    assert flag(args1, "-t") == ["1"] and flag(args1, "-ub") == ["64"]
    pid2, _ = chat(corral)  # no load options: whatever runs serves it
    assert pid2 == pid1
    pid3, _ = chat(corral, num_thread=1, num_ctx=512)  # satisfied: same threads, and 2048 >= 512
    assert pid3 == pid1
    pid4, args4 = chat(corral, num_thread=2, use_mmap=False)
    assert pid4 != pid1 and flag(args4, "-t") == ["2"] and flag(args4, "-lm") == ["none"]
    pid5, args5 = chat(corral, num_ctx=100000000)  # capped at the trained context (2048): nothing to do
    assert pid5 == pid4 and flag(args5, "-c") == ["2048"]
    assert httpx.post(corral.base + "/api/chat", json={"model": "chat", "messages": [], "options": {"num_thread": "two"}}).status_code == 400
