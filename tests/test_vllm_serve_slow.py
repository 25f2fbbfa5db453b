"""The vllm Serve app (ray.serve.llm behind serving/guard.py) on the bundled model, through real
HTTP and the official openai client. Opt-in and slow like test_vllm_engine_slow.py (ALOE_SLOW=1,
an environment where vLLM imports: scripts/vllm_cpu_env.sh). A real local Ray with the machine's
2 CPUs: the app's logical resources must fit there (serving/llm_app.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import time

import httpx
import pytest

from conftest import serve_on_loopback

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("ALOE_SLOW") != "1", reason="opt-in: set ALOE_SLOW=1"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed here"),
]

KEY = "vllm-test-key"
ARGS = {"model": "smollm2-135m", "served_model_name": "aloe-vllm", "backend": "vllm", "num_cpus": 1,
        "gpu_memory_utilization": 0.3,
        "api_key_env": "ALOE_VLLM_TEST_KEY", "max_model_len": 2048, "max_tokens_limit": 600,
        "default_max_tokens": 16, "max_body_bytes": 4096, "request_timeout_s": 8}


@pytest.fixture(scope="module")
def server():
    from serving.app import build_app

    os.environ[ARGS["api_key_env"]] = KEY  # replicas inherit the environment of the Ray instance
    started = time.monotonic()
    with serve_on_loopback(lambda: build_app(ARGS), "aloe-vllm", namespace="aloe-vllm-serve-test") as url:
        print(f"MEASURE vllm Serve app ready in {time.monotonic() - started:.1f}s")
        yield url


def client(url, key=KEY):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def test_openai_client_chats_and_streams(server):
    c = client(server)
    assert "aloe-vllm" in [m.id for m in c.models.list().data]
    ask = dict(model="aloe-vllm", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0.0)
    started = time.monotonic()
    resp = c.chat.completions.create(**ask)
    print(f"MEASURE one 8-token chat {time.monotonic() - started:.2f}s")
    text = resp.choices[0].message.content
    assert text and 0 < resp.usage.completion_tokens <= 8
    chunks = list(c.chat.completions.create(**ask, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text


def test_the_openai_backend_gets_a_probability_per_choice(server, monkeypatch):
    """Constrained answers through ray.serve.llm: the openai backend's structured_outputs.choice
    and top logprobs, renormalised over the choices (engines/openai_api.py)."""
    import asyncio

    from aloe_ray.engines.base import ChatRequest
    from aloe_ray.engines.openai_api import OpenAIEngine

    monkeypatch.setenv("ALOE_VLLM_ENGINE_KEY", KEY)
    engine = OpenAIEngine(f"{server}/v1", "aloe-vllm", api_key_env="ALOE_VLLM_ENGINE_KEY", max_retries=0)
    reqs = [ChatRequest(({"role": "user", "content": "Is water wet? Answer A for yes, B for no."},), choices=("A", "B")),
            ChatRequest(({"role": "user", "content": "Rate 'thank you' from 1 to 5."},), choices=tuple("12345"))]
    for req, out in zip(reqs, asyncio.run(engine.chat(reqs))):
        assert out.finish_reason == "choice" and out.text in req.choices and out.completion_tokens == 1, out
        assert len(out.choice_probs) == len(req.choices) and abs(sum(out.choice_probs) - 1) < 1e-6, out
        assert out.text == req.choices[max(range(len(req.choices)), key=out.choice_probs.__getitem__)]


def test_without_the_key_every_route_is_401(server):
    from openai import AuthenticationError

    for key in ("wrong-key", ""):
        with pytest.raises(AuthenticationError):
            client(server, key or "x").chat.completions.create(
                model="aloe-vllm", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    for path in ("/v1/models", "/v1/models/aloe-vllm"):
        r = httpx.get(server + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(server + "/v1/chat/completions", content=b"not json")  # auth before anything else
    assert r.status_code == 401


def test_request_limits_hold(server):
    auth = {"authorization": f"Bearer {KEY}"}
    msg = [{"role": "user", "content": "Tell me a story."}]
    r = httpx.post(server + "/v1/chat/completions", headers=auth,
                   json={"model": "aloe-vllm", "messages": [{"role": "user", "content": "x" * 5000}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = httpx.post(server + "/v1/chat/completions", headers=auth,
                   json={"model": "aloe-vllm", "messages": msg, "max_tokens": 601})
    assert r.status_code == 400 and "limit of 600" in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/chat/completions", headers=auth, timeout=60,
                   json={"model": "aloe-vllm", "messages": msg, "temperature": 0.0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= ARGS["default_max_tokens"]


def test_a_request_past_the_timeout_gets_504(server):
    auth = {"authorization": f"Bearer {KEY}"}
    body = {"model": "aloe-vllm", "messages": [{"role": "user", "content": "Write a very long essay."}],
            "max_tokens": 580, "temperature": 0.0, "ignore_eos": True}
    r = httpx.post(server + "/v1/chat/completions", headers=auth, json=body, timeout=60)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    with httpx.stream("POST", server + "/v1/chat/completions", headers=auth, json={**body, "stream": True},
                      timeout=60) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "timeout"


def test_a_job_engine_attaches_to_the_apps_vllm_engine(server):
    """The app's engine is the deployment every vllm job engine is (engines/serve_llm.py): a job
    attaches to it with `serve_app` and calls it by handle, past the HTTP guard, with the vllm
    backend's meaning (a probability per choice from the engine's logits, token counts)."""
    import asyncio

    from aloe_ray.config.engines import EngineConfig
    from aloe_ray.engines.base import ChatRequest, Sampling
    from aloe_ray.engines.deployment import start_engines

    cfg = EngineConfig(backend="vllm", model="aloe-vllm", serve_app="aloe-vllm")
    with start_engines({"judge": cfg}, prefix="aloe-engine.attach", namespace="aloe-vllm-serve-test") as engines:
        assert engines.started == []  # attached: the job starts nothing and leaves the app running
        engine = engines["judge"]
        reqs = [ChatRequest(({"role": "user", "content": "Is water wet? Answer A for yes, B for no."},),
                            choices=("A", "B")),
                ChatRequest(({"role": "user", "content": "Say hello."},), Sampling(0.0, 1.0, 8, 0))]
        judged, said = asyncio.run(engine.chat(reqs, "tree-1"))
        stats = asyncio.run(engine.stats())
    assert judged.finish_reason == "choice" and judged.completion_tokens == 1 and judged.text in ("A", "B")
    assert len(judged.choice_probs) == 2 and all(p > 0 for p in judged.choice_probs)
    assert abs(sum(judged.choice_probs) - 1) < 1e-6
    assert said.text and said.finish_reason in ("stop", "length") and 0 < said.completion_tokens <= 8
    assert stats["server"] == "AloeLLMServer" and stats["served_requests"] >= 2
    from ray import serve

    assert "aloe-vllm" in serve.status().applications


def test_vllm_engines_take_their_placement_from_ray_serve_llm(server):
    """Tensor parallelism: one bundle per GPU, packed on one node, the replica's CPUs in the first
    (ray.serve.llm builds the placement group from the LLMConfig ours writes); routing is
    ray.serve.llm's prefix-aware router."""
    from ray.serve.llm import LLMConfig

    from aloe_ray.config.engines import EngineConfig
    from aloe_ray.engines.serve_llm import AloeLLMServer, llm_config_kwargs, llm_server_options

    cfg = EngineConfig(backend="vllm", model="s3://models/big", num_gpus=4, tensor_parallel_size=4, num_cpus=2,
                       replicas=1, max_replicas=3, max_model_len=8192)
    config = LLMConfig(**llm_config_kwargs(cfg))
    opts = AloeLLMServer.get_deployment_options(config)
    assert opts["placement_group_bundles"] == [{"CPU": 2, "GPU": 1}] + [{"GPU": 1}] * 3
    assert opts["placement_group_strategy"] == "STRICT_PACK"
    assert opts["autoscaling_config"]["max_replicas"] == 3 and opts["ray_actor_options"]["num_cpus"] == 0
    assert config.engine_kwargs["tensor_parallel_size"] == 4 and config.engine_kwargs["max_model_len"] == 8192
    serve_options = llm_server_options(cfg)
    assert serve_options["name"] == "EngineServer"  # jobs attach to either kind of engine alike
    # prefix-aware routing is ray.serve.llm's; a job's call shows it the conversation's messages
    assert serve_options["request_router_config"].request_router_class.endswith("PrefixCacheAffinityRouter")
