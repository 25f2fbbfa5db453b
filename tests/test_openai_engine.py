"""The openai backend against a real HTTP server on loopback (an OpenAI-style test endpoint)."""


import asyncio
import threading
import time

import pytest

from aloe_ray.engines.base import ChatRequest, EngineError, EngineTimeout, PromptTooLong, Sampling
from aloe_ray.engines.openai_api import OpenAIEngine
from conftest import free_port, wait_for_port


@pytest.fixture(scope="module")
def endpoint():
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()
    seen: list[dict] = []
    state = {"fail_next": 0, "status": 429, "error": None, "delay_s": 0.0, "refuse_structured": False}

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        body = await request.json()
        seen.append({"auth": request.headers.get("authorization"), **body})
        if state["refuse_structured"] and "structured_outputs" in body:  # as api.openai.com answers
            return JSONResponse({"error": {"message": "Unrecognized request argument supplied: structured_outputs",
                                           "type": "invalid_request_error", "param": None, "code": None}},
                                status_code=400)
        if state["fail_next"]:
            state["fail_next"] -= 1
            error = state["error"] or {"message": "slow down", "type": "rate_limit"}
            return JSONResponse({"error": error}, status_code=state["status"], headers={"retry-after-ms": "10"})
        await asyncio.sleep(state["delay_s"])
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
    assert c.text == "B" and c.finish_reason == "choice" and c.completion_tokens == 1
    assert c.choice_probs[1] > c.choice_probs[0] and abs(sum(c.choice_probs) - 1) < 1e-9
    assert endpoint["seen"][-1]["logprobs"] is True
    assert endpoint["seen"][-1]["structured_outputs"] == {"choice": ["A", "B"]}


def test_a_server_refusing_structured_outputs_is_asked_without_it(endpoint):
    endpoint["state"]["refuse_structured"] = True
    try:
        async def run():
            engine = OpenAIEngine(endpoint["url"], "m", max_retries=0)
            first = await engine.chat([req("which?", choices=("A", "B"))])
            before = len(endpoint["seen"])
            second = await engine.chat([req("which?", choices=("A", "B"))])
            return first + second, len(endpoint["seen"]) - before

        (a, b), calls = asyncio.run(run())
    finally:
        endpoint["state"]["refuse_structured"] = False
    assert a.choice_probs == b.choice_probs and a.finish_reason == b.finish_reason == "choice"
    assert calls == 1 and "structured_outputs" not in endpoint["seen"][-1]  # asked once, then never again


@pytest.mark.parametrize("status, error, raised, fragment", [
    (504, {"message": "request took longer than 120s", "type": "timeout", "code": "timeout"}, EngineTimeout,
     "the server timed out"),
    (400, {"message": "prompt of 3000 tokens exceeds the input limit", "type": "invalid_request_error",
           "code": "context_length_exceeded", "param": "messages"}, PromptTooLong, "exceeds the input limit"),
    (400, {"message": "This model's maximum context length is 2048 tokens. However, you requested 3000 tokens",
           "type": "BadRequestError", "code": 400}, PromptTooLong, "maximum context length"),
])
def test_server_errors_keep_their_meaning(endpoint, status, error, raised, fragment):
    endpoint["state"].update(fail_next=1, status=status, error=error)
    try:
        with pytest.raises(raised, match=fragment):
            asyncio.run(OpenAIEngine(endpoint["url"], "m", max_retries=0).chat([req()]))
    finally:
        endpoint["state"].update(fail_next=0, error=None)


def test_no_answer_within_the_timeout_is_engine_timeout(endpoint):
    endpoint["state"]["delay_s"] = 5.0
    try:
        with pytest.raises(EngineTimeout, match="no answer within 0.3s"):
            asyncio.run(OpenAIEngine(endpoint["url"], "m", timeout_s=0.3, max_retries=1).chat([req()]))
    finally:
        endpoint["state"]["delay_s"] = 0.0


def test_missing_key_env_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("ALOE_MISSING_KEY", raising=False)
    with pytest.raises(EngineError, match="ALOE_MISSING_KEY"):
        OpenAIEngine("http://127.0.0.1:9/v1", "m", api_key_env="ALOE_MISSING_KEY")
