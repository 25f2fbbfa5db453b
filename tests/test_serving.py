"""The Serve app on a real local Ray, the bundled model, real HTTP, the official openai client."""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import pytest

from conftest import free_port

KEY = "test-key-123"


def make_lora_adapter(folder) -> str:
    """A small LoRA adapter for the bundled model (random, non-zero weights), saved with PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from aloe_ray.engines.models import resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m"))
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import ray
    from ray import serve

    from serving.app import build_app

    os.environ["ALOE_TEST_API_KEY"] = KEY  # replicas inherit the environment of the Ray instance
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="aloe-serve-test", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model": "smollm2-135m", "served_model_name": "aloe-base", "api_key_env": "ALOE_TEST_API_KEY",
            "max_tokens_limit": 64, "default_max_tokens": 16, "max_body_bytes": 4096, "max_replicas": 2,
            "target_ongoing_requests": 4,
            "adapters": [{"name": "aloe-lora", "path": make_lora_adapter(tmp_path_factory.mktemp("adapter"))}]}
    serve.run(build_app(args), name="aloe", route_prefix="/")
    # a second app whose requests time out mid-generation (half a CPU: it fits beside the first)
    serve.run(build_app({"model": "smollm2-135m", "served_model_name": "aloe-slow", "request_timeout_s": 0.5,
                         "max_tokens_limit": 512, "num_cpus": 0.5}), name="aloe-slow", route_prefix="/slow")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def client(url, key=KEY):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def test_openai_client_chat_models_and_streaming(server):
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["aloe-base", "aloe-lora"]
    resp = c.chat.completions.create(model="aloe-base", messages=[{"role": "user", "content": "Say hello."}],
                                     max_tokens=8, seed=3, temperature=0.0)
    text = resp.choices[0].message.content
    assert text and resp.usage.completion_tokens <= 8 and resp.choices[0].finish_reason in ("stop", "length")
    stream = c.chat.completions.create(model="aloe-base", messages=[{"role": "user", "content": "Say hello."}],
                                       max_tokens=8, seed=3, temperature=0.0, stream=True)
    chunks = list(stream)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == text  # same seed, same reply
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_model_name_selects_the_adapter(server):
    c = client(server)
    ask = dict(messages=[{"role": "user", "content": "Describe the sea in one sentence."}], max_tokens=12,
               temperature=0.0, seed=1)
    base = c.chat.completions.create(model="aloe-base", **ask)
    lora = c.chat.completions.create(model="aloe-lora", **ask)
    assert base.model == "aloe-base" and lora.model == "aloe-lora"
    assert lora.choices[0].message.content != base.choices[0].message.content  # different weights answered


def test_multi_turn_conversation(server):
    c = client(server)
    messages = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "I am a chef."}]
    first = c.chat.completions.create(model="aloe-base", messages=messages, max_tokens=8)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "What should I cook tonight?"}]
    second = c.chat.completions.create(model="aloe-base", messages=messages, max_tokens=8)
    assert second.choices[0].message.content
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


@pytest.mark.parametrize("headers, body, status, fragment", [
    ({}, {"model": "aloe-base", "messages": [{"role": "user", "content": "hi"}]}, 401, "invalid or missing API key"),
    ({"authorization": "Bearer wrong"}, {"model": "aloe-base", "messages": [{"role": "user", "content": "hi"}]}, 401, "API key"),
    (None, {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model 'nope' not found"),
    (None, {"model": "aloe-base", "messages": []}, 400, "messages"),
    (None, {"model": "aloe-base"}, 400, "messages: Field required"),
    (None, {"model": "aloe-base", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
    (None, {"model": "aloe-base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000}, 400,
     "exceeds this server's limit of 64"),
    (None, {"model": "aloe-base", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400, "temperature"),
    (None, {"model": "aloe-base", "messages": [{"role": "user", "content": "x" * 5000}]}, 413, "over 4096 bytes"),
    (None, "{not json", 400, "not valid JSON"),
    (None, {"model": "aloe-base", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 400,
     "logprobs only for structured_outputs.choice"),
    (None, {"model": "aloe-base", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "structured_outputs": {"choice": ["A", "B"]}}, 400, "not supported with stream"),
    (None, {"model": "aloe-base", "messages": [{"role": "user", "content": "hi"}],
            "structured_outputs": {"choice": ["Yes indeed", "Yes sir"]}}, 400, "do not differ in their first token"),
])
def test_bad_requests_get_openai_style_4xx(server, headers, body, status, fragment):
    headers = {"authorization": f"Bearer {KEY}"} if headers is None else headers
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(f"{server}/v1/chat/completions", content=content,
                   headers={**headers, "content-type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"]


def test_health_and_models_auth(server):
    assert httpx.get(f"{server}/health", timeout=30).json()["status"] == "ok"
    assert httpx.get(f"{server}/v1/models", timeout=30).status_code == 401


def test_openai_backend_engine_against_the_serve_app(server, monkeypatch):
    """The `openai` engine backend, pointed at our own Serve app."""
    from aloe_ray.engines.base import ChatRequest, Sampling
    from aloe_ray.engines.openai_api import OpenAIEngine

    monkeypatch.setenv("ALOE_KEY_FOR_ENGINE", KEY)
    engine = OpenAIEngine(f"{server}/v1", "aloe-base", api_key_env="ALOE_KEY_FOR_ENGINE")
    reqs = [ChatRequest(({"role": "user", "content": f"Name a colour #{i}."},), Sampling(0.7, 0.9, 6, i)) for i in range(4)]
    out = asyncio.run(engine.chat(reqs))
    assert len(out) == 4 and all(c.text and c.completion_tokens <= 6 for c in out)


def test_autoscaling_settings_reach_the_deployment():
    from serving.app import build_app, deployment_options
    from serving.config import ServeArgs

    opts = deployment_options(ServeArgs(min_replicas=2, max_replicas=5, target_ongoing_requests=8))
    assert opts["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 5, "initial_replicas": 2,
                                          "target_ongoing_requests": 8}
    assert opts["request_router_config"].request_router_class.endswith("AffinityRouter")
    assert opts["ray_actor_options"]["num_cpus"] == 1.0 and opts["max_ongoing_requests"] == 64
    app = build_app({"min_replicas": 2, "max_replicas": 5, "target_ongoing_requests": 8})
    from ray.serve import Application

    assert isinstance(app, Application)
    with pytest.raises(Exception, match="min_replicas"):
        build_app({"min_replicas": 3, "max_replicas": 1})


@pytest.mark.parametrize("adapters, fragment", [
    ([{"name": "sft", "path": "s3://b/run/adapters/sft"}, {"name": "dpo", "path": "s3://b/other/dpo"}],
     "all adapters must sit in one folder"),
    ([{"name": "aloe-dpo", "path": "s3://b/run/adapters/dpo"}], "rename ['aloe-dpo'] to their folder names"),
])
def test_vllm_adapter_layout_is_checked_before_anything_loads(adapters, fragment):
    from serving.app import build_app

    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        build_app({"backend": "vllm", "model": "s3://b/base", "adapters": adapters})


def ask_greedy(**kwargs):
    return dict(model="aloe-base", max_tokens=24, temperature=0.0, seed=0,
                messages=[{"role": "user", "content": "Describe a forest in two sentences."}], **kwargs)


def test_streaming_is_token_by_token_with_a_usage_chunk(server):
    c = client(server)
    whole = c.chat.completions.create(**ask_greedy())
    chunks = list(c.chat.completions.create(**ask_greedy(), stream=True, stream_options={"include_usage": True}))
    content = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(content) > 5  # many deltas, not the reply sliced after the fact
    assert "".join(content) == whole.choices[0].message.content
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    plain = list(c.chat.completions.create(**ask_greedy(), stream=True))
    assert all(ch.usage is None for ch in plain) and plain[-1].choices[0].finish_reason


def test_stop_is_honoured_streamed_or_not(server):
    c = client(server)
    full = c.chat.completions.create(**ask_greedy()).choices[0].message.content
    stop = full.split()[3]
    cut = c.chat.completions.create(**ask_greedy(stop=[stop, "#never#"]))
    text = cut.choices[0].message.content
    assert stop not in text and full.startswith(text) and cut.choices[0].finish_reason == "stop"
    streamed = c.chat.completions.create(**ask_greedy(stop=stop), stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed) == text


def test_text_part_content_is_accepted_and_other_parts_refused(server):
    c = client(server)
    parts = [{"type": "text", "text": "Describe a forest "}, {"type": "text", "text": "in two sentences."}]
    as_parts = c.chat.completions.create(**{**ask_greedy(), "messages": [{"role": "user", "content": parts}]})
    assert as_parts.choices[0].message.content == c.chat.completions.create(**ask_greedy()).choices[0].message.content
    r = httpx.post(f"{server}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"}, timeout=60,
                   json={"model": "aloe-base", "messages": [{"role": "user", "content": [
                       {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]})
    assert r.status_code == 400 and "only text content parts" in r.json()["error"]["message"]


def test_unknown_routes_and_methods_get_openai_style_errors(server):
    r = httpx.get(f"{server}/v1/nothing-here", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"{server}/v1/chat/completions", timeout=30)
    assert r.status_code == 405 and r.json()["error"]["message"]


def slow_engine(server) -> dict:
    return httpx.get(f"{server}/slow/health", timeout=30).json()["engines"]["aloe-slow"]


def wait_idle(server) -> dict:
    import time

    for _ in range(100):  # bounded: the worker drops a cancelled row at its next step
        stats = slow_engine(server)
        if stats["running"] == 0:
            return stats
        time.sleep(0.1)
    return stats


def test_a_timed_out_request_gets_504_and_stops_decoding(server):
    import openai

    c = client(f"{server}/slow")
    story = dict(model="aloe-slow", max_tokens=500, temperature=0.0,
                 messages=[{"role": "user", "content": "Write a very long story about ships."}])
    before = slow_engine(server)
    with pytest.raises(openai.APIStatusError) as err:
        c.chat.completions.create(**story)
    assert err.value.status_code == 504 and "longer than 0.5s" in err.value.message
    after = wait_idle(server)
    assert after["running"] == 0 and after["cancelled"] == before["cancelled"] + 1
    assert after["generated_tokens"] - before["generated_tokens"] < 500
    with pytest.raises(openai.APIError, match="longer than 0.5s"):
        list(c.chat.completions.create(**story, stream=True))
    assert wait_idle(server)["cancelled"] == before["cancelled"] + 2


def test_a_prompt_over_the_input_limit_is_refused_with_400(server):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        client(f"{server}/slow").chat.completions.create(
            model="aloe-slow", max_tokens=4, messages=[{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "word " * 3000}])
    assert err.value.code == "context_length_exceeded" and "input limit of 2048" in err.value.message


def test_unexpected_exceptions_become_openai_style_500s():
    """The handlers the app installs, on a throwaway app whose route fails (in-process ASGI)."""
    from fastapi import FastAPI

    from serving.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("engine exploded")

    async def call():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            return await http.get("/boom")

    r = asyncio.run(call())
    assert r.status_code == 500
    assert r.json()["error"] == {"message": "internal error: RuntimeError: engine exploded", "type": "server_error",
                                 "param": None, "code": "internal_error"}
