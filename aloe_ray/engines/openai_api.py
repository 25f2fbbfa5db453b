"""The `openai` backend: any OpenAI-compatible chat-completions endpoint.

Timeouts and retries with exponential backoff on connection errors, 408/409/429 and 5xx are the
official client's own (`max_retries`, `timeout`). It means what the other backends mean (base.py):
- A request past its timeout, or answered 504 by a server that gave up on it, raises EngineTimeout;
  a 400 `context_length_exceeded` (or vLLM's "maximum context length") raises PromptTooLong.
- A constrained answer asks the server to choose among the choices (`structured_outputs.choice`,
  vLLM's and our Serve app's extension; a server that refuses the field with a 400 is asked
  without it from then on) and for the first token's top logprobs, renormalised over the choices
  into a probability per choice. Without logprobs the reply text must be one of the choices to
  count as one. A constrained answer counts 1 completion token, whatever the server reports.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Sequence

from aloe_ray.engines.base import ChatRequest, Completion, EngineError, EngineTimeout, PromptTooLong

log = logging.getLogger(__name__)

CHOICE_FIELD = "structured_outputs"


def api_key(api_key_env: str | None) -> str:
    """The key an engine sends: from the environment variable it names (an error if unset), else
    a placeholder (the client requires one; a server without auth ignores it)."""
    if not api_key_env:
        return "not-needed"
    key = os.environ.get(api_key_env, "")
    if not key:
        raise EngineError(f"environment variable {api_key_env} (engine api_key_env) is not set")
    return key


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

        self.model_name = model
        self.timeout_s = timeout_s
        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key(api_key_env), timeout=timeout_s,
                                  max_retries=max_retries)
        self._slots = asyncio.Semaphore(max_concurrency)
        self._server_chooses = True  # until the server refuses `structured_outputs`

    async def chat(self, requests: Sequence[ChatRequest], affinity: str | None = None) -> list[Completion]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, req: ChatRequest) -> Completion:
        import openai

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
        try:
            async with self._slots:
                resp = await self._create(kwargs, req.choices)
        except openai.APITimeoutError:
            raise EngineTimeout(f"{self.model_name}: no answer within {self.timeout_s}s") from None
        except openai.APIStatusError as exc:
            if exc.status_code == 504:
                raise EngineTimeout(f"{self.model_name}: the server timed out: {exc.message}") from exc
            if exc.status_code == 400 and (exc.code == "context_length_exceeded"
                                           or "maximum context length" in exc.message):
                raise PromptTooLong(exc.message) from exc
            raise
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
            if probs is not None or text in req.choices:
                completion.finish_reason, completion.completion_tokens = "choice", 1
        return completion

    async def _create(self, kwargs: dict, choices: tuple[str, ...] | None):
        """One chat completion; a constrained one asks the server to choose, while it accepts that."""
        import openai

        if not (choices and self._server_chooses):
            return await self.client.chat.completions.create(**kwargs)
        try:
            return await self.client.chat.completions.create(
                **kwargs, extra_body={CHOICE_FIELD: {"choice": list(choices)}})
        except openai.BadRequestError as exc:
            if CHOICE_FIELD not in f"{exc.param} {exc.message}":
                raise
            self._server_chooses = False
            log.warning("%s refuses %s (%s): constrained answers from top logprobs only",
                        self.model_name, CHOICE_FIELD, exc.message)
            return await self.client.chat.completions.create(**kwargs)


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
