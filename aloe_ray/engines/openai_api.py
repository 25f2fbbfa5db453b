"""The `openai` backend: any OpenAI-compatible chat-completions endpoint.

Timeouts and retries with exponential backoff on connection errors, 408/409/429 and 5xx are the
official client's own (`max_retries`, `timeout`). Constrained answers use top logprobs of a
single token where the server returns them, else the reply text must be one of the choices.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Sequence

from aloe_ray.engines.base import ChatRequest, Completion, EngineError


class OpenAIEngine:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        max_concurrency: int = 64,
    ) -> None:
        from openai import AsyncOpenAI

        api_key = "not-needed"
        if api_key_env:
            api_key = os.environ.get(api_key_env, "")
            if not api_key:
                raise EngineError(f"environment variable {api_key_env} (engine api_key_env) is not set")
        self.model_name = model
        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries)
        self._slots = asyncio.Semaphore(max_concurrency)

    async def chat(self, requests: Sequence[ChatRequest], affinity: str | None = None) -> list[Completion]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, req: ChatRequest) -> Completion:
        s = req.sampling
        kwargs = dict(model=self.model_name, messages=list(req.messages), temperature=s.temperature,
                      top_p=s.top_p, max_tokens=s.max_tokens)
        if s.seed is not None:
            kwargs["seed"] = s.seed
        if s.stop:
            kwargs["stop"] = list(s.stop)
        if req.choices:
            kwargs.update(max_tokens=max(len(c) for c in req.choices) + 2, temperature=0.0,
                          logprobs=True, top_logprobs=20)
        async with self._slots:
            resp = await self.client.chat.completions.create(**kwargs)
        if not resp.choices:
            raise EngineError(f"endpoint returned no choices for model {self.model_name}")
        choice = resp.choices[0]
        text = (choice.message.content or "").strip()
        usage = resp.usage
        completion = Completion(
            text=text,
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            model=resp.model or self.model_name,
        )
        if req.choices:
            probs = _choice_probs(choice, req.choices)
            if probs is not None:
                completion.choice_probs = probs
                completion.text = req.choices[max(range(len(probs)), key=probs.__getitem__)]
                completion.finish_reason = "choice"
        return completion


def _choice_probs(choice, choices: tuple[str, ...]) -> list[float] | None:
    """Renormalised probabilities of the choices from the first token's top logprobs, if given."""
    content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
    if not content or not content[0].top_logprobs:
        return None
    mass = {c: 0.0 for c in choices}
    for top in content[0].top_logprobs:
        token = top.token.strip()
        if token in mass:
            mass[token] += math.exp(top.logprob)
    total = sum(mass.values())
    if total <= 0:
        return None
    return [mass[c] / total for c in choices]
