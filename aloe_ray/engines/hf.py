"""The `hf` backend: a transformers model with dynamic batching, for CPU (the default) or GPU.

Concurrent callers share forward passes: requests wait in a queue; one worker thread takes up
to `max_batch_size` of them at a time and decodes them together, dropping each row from the
batch (and its KV cache) as soon as it finishes. Each row samples with its own seeded
generator, so a request's output does not depend on which others share its batch.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aloe_ray.engines.base import ChatRequest, Completion, Sampling


@dataclass
class EngineStats:
    started_at: float
    busy_s: float = 0.0
    batches: int = 0
    requests: int = 0
    generated_tokens: int = 0

    def as_dict(self) -> dict:
        wall = max(time.monotonic() - self.started_at, 1e-9)
        return {
            "busy_s": self.busy_s,
            "wall_s": wall,
            "utilisation": self.busy_s / wall,
            "batches": self.batches,
            "requests": self.requests,
            "mean_batch_size": self.requests / max(self.batches, 1),
            "generated_tokens": self.generated_tokens,
        }


class HFEngine:
    def __init__(
        self,
        model_path: str,
        *,
        model_name: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 16,
        batch_wait_ms: float = 10.0,
        max_input_tokens: int = 2048,
        torch_threads: int | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(torch_threads or os.cpu_count() or 1)
        if dtype == "auto":
            dtype = "float32" if device == "cpu" else "bfloat16"
        self.device = device
        self.model_name = model_name or model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device)
        self.model.eval()
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.max_input_tokens = max_input_tokens
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = {i for i in eos_ids if i is not None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.stats = EngineStats(started_at=time.monotonic())
        self._queue: asyncio.Queue | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine")

    async def chat(self, requests: Sequence[ChatRequest], affinity: str | None = None) -> list[Completion]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._batch_loop())
        loop = asyncio.get_running_loop()
        futures = []
        for req in requests:
            fut = loop.create_future()
            self._queue.put_nowait((req, fut))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def _batch_loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            deadline = loop.time() + self.batch_wait_s
            while len(items) < self.max_batch_size:
                remaining = deadline - loop.time()
                try:
                    items.append(self._queue.get_nowait() if remaining <= 0 else
                                 await asyncio.wait_for(self._queue.get(), remaining))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            for kind in (True, False):
                group = [(r, f) for r, f in items if (r.choices is not None) == kind and not f.done()]
                if not group:
                    continue
                try:
                    results = await loop.run_in_executor(self._executor, self._run, [r for r, _ in group])
                except Exception as exc:  # one bad batch fails its callers, not the engine
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), res in zip(group, results):
                    if not fut.done():
                        fut.set_result(res)

    def _run(self, requests: list[ChatRequest]) -> list[Completion]:
        started = time.monotonic()
        try:
            if requests[0].choices is not None:
                return self._score_choices(requests)
            return self._generate(requests)
        finally:
            self.stats.busy_s += time.monotonic() - started
            self.stats.batches += 1
            self.stats.requests += len(requests)

    def _encode(self, req: ChatRequest) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            list(req.messages), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)[-self.max_input_tokens:]

    def _left_padded(self, encoded: list[list[int]]):
        import torch

        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, width - len(e):] = torch.tensor(e, dtype=torch.long)
            mask[i, width - len(e):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _generate(self, requests: list[ChatRequest]) -> list[Completion]:
        import torch
        from transformers import DynamicCache

        encoded = [self._encode(r) for r in requests]
        ids, mask, positions = self._left_padded(encoded)
        generators = [_generator(r.sampling.seed) for r in requests]
        tokens: list[list[int]] = [[] for _ in requests]
        finish: list[str | None] = [None] * len(requests)
        active = list(range(len(requests)))
        cache = DynamicCache()
        with torch.inference_mode():
            while True:
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                 cache=cache, use_cache=True)
                logits = out.logits[:, -1, :].float().cpu()
                keep, next_ids = [], []
                for row, i in enumerate(active):
                    tok = _sample(logits[row], requests[i].sampling, generators[i])
                    if tok in self.eos_ids:
                        finish[i] = "stop"
                    else:
                        tokens[i].append(tok)
                        if len(tokens[i]) >= requests[i].sampling.max_tokens:
                            finish[i] = "length"
                    if finish[i] is None:
                        keep.append(row)
                        next_ids.append(tok)
                if not keep:
                    break
                if len(keep) < len(active):  # drop finished rows from the batch and the cache
                    index = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(index)
                    mask, positions = mask[index], positions[index]
                    active = [active[k] for k in keep]
                ids = torch.tensor(next_ids, dtype=torch.long, device=self.device).unsqueeze(1)
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
                positions = positions[:, -1:] + 1
        self.stats.generated_tokens += sum(len(t) for t in tokens)
        return [
            Completion(
                text=self.tokenizer.decode(t, skip_special_tokens=True).strip(),
                finish_reason=f or "stop",
                prompt_tokens=len(e),
                completion_tokens=len(t),
                model=self.model_name,
            )
            for t, f, e in zip(tokens, finish, encoded)
        ]

    def _score_choices(self, requests: list[ChatRequest]) -> list[Completion]:
        """Restrict the next token to each choice's first token; the answer is the most likely."""
        import torch

        encoded = [self._encode(r) for r in requests]
        ids, mask, positions = self._left_padded(encoded)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1, :]
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        results = []
        for row, (req, enc) in enumerate(zip(requests, encoded)):
            first = [self.tokenizer.encode(c, add_special_tokens=False)[0] for c in req.choices]
            if len(set(first)) != len(first):
                raise ValueError(f"choices {req.choices} do not differ in their first token")
            probs = torch.softmax(logprobs[row, first], dim=-1).tolist()
            best = max(range(len(probs)), key=probs.__getitem__)
            results.append(Completion(text=req.choices[best], finish_reason="choice", prompt_tokens=len(enc),
                                      completion_tokens=1, model=self.model_name, choice_probs=probs))
        self.stats.generated_tokens += len(requests)
        return results


def _generator(seed: int | None):
    import torch

    g = torch.Generator()
    g.manual_seed(seed if seed is not None else torch.seed())
    return g


def _sample(logits, sampling: Sampling, generator) -> int:
    import torch

    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > sampling.top_p
        sorted_probs[outside] = 0.0
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))
