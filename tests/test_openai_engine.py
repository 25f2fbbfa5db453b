"""The openai backend against a real HTTP server on loopback (an OpenAI-style test endpoint)."""


import asyncio
import threading
import time

import pytest

from aloe_ray.engines.base import ChatRequest, EngineError, Sampling
from aloe_ray.engines.openai_api import OpenAIEngine
from conftest import free_port, wait_for_port


@pytest.fixture(scope="module")
def endpoint():
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()
    seen: list[dict] = []
    state = {"fail_next": 0, "status": 429}

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        body = await request.json()
        seen.append({"auth": request.headers.get("authorization"), **body})
        if state["fail_next"]:
            state["fail_next"] -= 1
            return JSONResponse({"error": {"message": "slow down", "type": "rate_limit"}},
                                status_code=state["status"], headers={"retry-after-ms": "10"})
        last = body["messages"][-1]["content"]
        logprobs = None
        if body.get("logprobs"):
            top = [{"token": "B", "logprob": -0.2, "bytes": None}, {"token": "A", "logprob": -1.8, "bytes": None},
                   {"token": "The", "logprob": -3.0, "bytes": None}]
            logprobs = {"content": [{"token": "B", "logprob": -0.2, "bytes": None, "top_logprobs": top}]}
        return {
            "id": "c1", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                         "message": {"role": "assistant", "content": "B" if logprobs else f"echo: {last}"}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        }

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    yield {"url": f"http://127.0.0.1:{port}/v1", "seen": seen, "state": state}
    server.should_exit = True
    thread.join(timeout=10)


def req(text="hello", seed=5, choices=None):
    return ChatRequest(({"role": "user", "content": text},), Sampling(0.5, 0.9, 20, seed), choices)


def test_completion_with_key_from_env_seed_and_usage(endpoint, monkeypatch):
    monkeypatch.setenv("ALOE_TEST_KEY", "sekrit")
    engine = OpenAIEngine(endpoint["url"], "served-model", api_key_env="ALOE_TEST_KEY")
    (c,) = asyncio.run(engine.chat([req("hello there")]))
    assert c.text == "echo: hello there" and c.prompt_tokens == 7 and c.completion_tokens == 3
    sent = endpoint["seen"][-1]
    assert sent["auth"] == "Bearer sekrit" and sent["seed"] == 5 and sent["max_tokens"] == 20
    assert sent["model"] == "served-model"


def test_429_and_5xx_are_retried_with_backoff(endpoint):
    async def run():
        engine = OpenAIEngine(endpoint["url"], "m", max_retries=3)  # one client, one event loop
        for status in (429, 503):
            endpoint["state"].update(fail_next=2, status=status)
            before = len(endpoint["seen"])
            (c,) = await engine.chat([req("again")])
            assert c.text == "echo: again"
            assert len(endpoint["seen"]) - before == 3  # two refusals, then success

    asyncio.run(run())


def test_retries_give_up_with_the_status(endpoint):
    from openai import RateLimitError

    endpoint["state"].update(fail_next=5, status=429)
    engine = OpenAIEngine(endpoint["url"], "m", max_retries=1)
    with pytest.raises(RateLimitError):
        asyncio.run(engine.chat([req()]))
    endpoint["state"]["fail_next"] = 0


def test_choices_use_top_logprobs(endpoint):
    engine = OpenAIEngine(endpoint["url"], "m")
    (c,) = asyncio.run(engine.chat([req("which?", choices=("A", "B"))]))
    assert c.text == "B" and c.finish_reason == "choice"
    assert c.choice_probs[1] > c.choice_probs[0] and abs(sum(c.choice_probs) - 1) < 1e-9
    assert endpoint["seen"][-1]["logprobs"] is True


def test_missing_key_env_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("ALOE_MISSING_KEY", raising=False)
    with pytest.raises(EngineError, match="ALOE_MISSING_KEY"):
        OpenAIEngine("http://127.0.0.1:9/v1", "m", api_key_env="ALOE_MISSING_KEY")
