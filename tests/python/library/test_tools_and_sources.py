"""Tool-call round trips through both APIs, and models discovered in the Ollama store, the Hugging
Face cache and LM Studio's folder, served under those tools' names by a real llama-server."""
import hashlib
import json
import os
import tempfile

import httpx
import ollama
import openai
import pytest

from corral_harness.corral import make_model, start_corral, stop_corral

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
            "required": ["city"],
        },
    },
}


def lay_out_stores(root: str) -> dict:
    """An Ollama store (manifest → blob named by its SHA-256), a Hugging Face cache snapshot and an
    LM Studio folder, each holding a generated model. Returns the expected served names."""
    source = make_model(root, "store-src", "seed=7")
    data = open(source, "rb").read()
    digest = hashlib.sha256(data).hexdigest()
    ollama_dir = f"{root}/ollama"
    os.makedirs(f"{ollama_dir}/blobs")
    with open(f"{ollama_dir}/blobs/sha256-{digest}", "wb") as f:
        f.write(data)
    for registry, namespace, model, tag in [("registry.ollama.ai", "library", "tinyllama", "q8"),
                                            ("registry.ollama.ai", "someone", "coder", "latest")]:
        d = f"{ollama_dir}/manifests/{registry}/{namespace}/{model}"
        os.makedirs(d, exist_ok=True)
        manifest = {"schemaVersion": 2, "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)},
            {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64, "size": 1},
        ]}
        with open(f"{d}/{tag}", "w") as f:
            json.dump(manifest, f)
    # A manifest whose digest is not plain hex must be ignored, never turned into a path.
    os.makedirs(f"{ollama_dir}/manifests/registry.ollama.ai/library/evil")
    with open(f"{ollama_dir}/manifests/registry.ollama.ai/library/evil/latest", "w") as f:
        json.dump({"layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:../../../../etc/passwd"}]}, f)

    hf = f"{root}/hf/models--TheOrg--Tiny-GGUF/snapshots/abc123"
    os.makedirs(hf)
    make_model(hf, "tiny-q8_0", "seed=8")
    lms = f"{root}/lmstudio/publisher/SmallRepo"
    os.makedirs(lms)
    make_model(lms, "small", "seed=9")
    return {"ollama": f"{ollama_dir}", "hf": f"{root}/hf", "lmstudio": f"{root}/lmstudio", "digest": digest}


@pytest.fixture(scope="module")
def corral_with_sources():
    root = tempfile.mkdtemp(prefix="corral-py-")
    tools_path = make_model(root, "tools", "tools=true")
    stores = lay_out_stores(root)
    sources = [{"kind": "ollama", "directory": stores["ollama"]}, {"kind": "huggingface", "directory": stores["hf"]},
               {"kind": "lmstudio", "directory": stores["lmstudio"]}]
    c = start_corral(extra_models=[{"name": "tools", "path": tools_path, "contextSize": 2048, "parallel": 1}],
                     extra_config={"sources": sources}, directory=root)
    c.stores = stores
    yield c
    stop_corral(c)


def test_store_models_are_listed_under_their_tools_names(corral_with_sources):
    names = {m["name"]: m for m in corral_with_sources.get("/api/tags")["models"]}
    assert "tinyllama:q8" in names
    assert "someone/coder:latest" in names
    assert "hf.co/theorg/tiny-gguf:latest" in names
    assert "publisher/smallrepo:latest" in names
    assert not any("evil" in n for n in names)
    # The Ollama blob's digest comes from its name, not from hashing.
    assert names["tinyllama:q8"]["digest"] == corral_with_sources.stores["digest"]
    openai_ids = {m["id"] for m in corral_with_sources.get("/v1/models")["data"]}
    assert {"tinyllama:q8", "someone/coder", "hf.co/theorg/tiny-gguf", "publisher/smallrepo"} <= openai_ids


@pytest.mark.parametrize("name", ["tinyllama:q8", "someone/coder", "hf.co/TheOrg/Tiny-GGUF", "publisher/SmallRepo:latest"])
def test_store_models_are_served(corral_with_sources, name):
    client = ollama.Client(host=corral_with_sources.base, timeout=60)
    r = client.generate(model=name, prompt="hello", options={"num_predict": 3}, stream=False)
    assert r.done and r.eval_count == 3
    assert r.model == name


def test_tool_call_round_trip_openai(corral_with_sources):
    client = openai.OpenAI(base_url=corral_with_sources.base + "/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    # A fixed seed and room for the whole call: the random test model may pad the arguments with
    # whitespace tokens, and 60 tokens cut one call short in a clean-clone run.
    first = client.chat.completions.create(model="tools", messages=messages, tools=[WEATHER_TOOL], max_tokens=200, seed=7)
    calls = first.choices[0].message.tool_calls
    assert calls, first
    call = calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Oslo")
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [c.model_dump(exclude_none=True) for c in calls[:1]]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21})},
    ]
    second = client.chat.completions.create(model="tools", messages=messages, tools=[WEATHER_TOOL], max_tokens=40)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the tool result reached the prompt


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_round_trip_ollama(corral_with_sources, stream):
    client = ollama.Client(host=corral_with_sources.base, timeout=60)
    messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
    if stream:
        calls, final = [], None
        for part in client.chat(model="tools", messages=messages, tools=[WEATHER_TOOL], options={"num_predict": 60, "seed": 7}, stream=True):
            calls += part.message.tool_calls or []
            final = part
        assert final.done
    else:
        r = client.chat(model="tools", messages=messages, tools=[WEATHER_TOOL], options={"num_predict": 60, "seed": 7}, stream=False)
        calls = r.message.tool_calls or []
    assert calls
    call = calls[0]
    assert call.function.name == "get_weather"
    # Ollama's arguments are an object, not a JSON string.
    assert isinstance(call.function.arguments, dict) and call.function.arguments["city"] in ("Paris", "Oslo")
    messages += [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_name": "get_weather", "content": json.dumps({"temperature_c": 3})},
    ]
    second = client.chat(model="tools", messages=messages, tools=[WEATHER_TOOL], options={"num_predict": 30}, stream=False)
    assert second.done
    assert second.prompt_eval_count > 0


def test_show_reports_tools_capability(corral_with_sources):
    info = httpx.post(corral_with_sources.base + "/api/show", json={"model": "tools"}).json()
    assert "tools" in info["capabilities"]
    assert "<tool_call>" in info["template"]
