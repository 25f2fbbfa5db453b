"""The `hf` backend: a transformers model with continuous batching, for CPU (the default) or GPU.

Concurrent callers share forward passes. One worker thread owns the model: it decodes all running
requests together, one token per step, and between steps it admits waiting requests into the
running batch (up to `max_batch_size`), so nobody waits for a whole batch to finish. Each new
prompt is prefilled on its own (no padding waste, resuming from the conversation's cached prefix:
see prefix_cache.py) and its KV cache is left-padded into the batch's. A finished request is
answered at once. Each row samples with its own seeded generator, so a request's output does not
depend on which others share its batch.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aloe_ray.engines.base import ChatRequest, Completion, Sampling
from aloe_ray.engines.prefix_cache import PrefixCache


@dataclass
class _Pending:
    request: ChatRequest
    affinity: str | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    def deliver(self, result: Completion | None = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if not self.future.done():
                self.future.set_exception(error) if error is not None else self.future.set_result(result)

        self.loop.call_soon_threadsafe(settle)


@dataclass
class _Row:
    pending: _Pending
    prompt: list[int]
    generator: Any
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None


@dataclass
class EngineStats:
    started_at: float
    busy_s: float = 0.0
    batches: int = 0
    requests: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    decode_rows: int = 0
    prefix_cache: PrefixCache | None = None

    def as_dict(self) -> dict:
        wall = max(time.monotonic() - self.started_at, 1e-9)
        cache = self.prefix_cache
        return {
            "prefix_cache_hit_rate": cache.hits_tokens / max(cache.lookups_tokens, 1) if cache else 0.0,
            "busy_s": self.busy_s,
            "wall_s": wall,
            "utilisation": self.busy_s / wall,
            "batches": self.batches,
            "requests": self.requests,
            "mean_batch_size": self.decode_rows / max(self.decode_steps, 1),
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
        prefix_cache_entries: int = 64,
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
        self.prefix_cache = PrefixCache(max_entries=prefix_cache_entries)
        self.stats.prefix_cache = self.prefix_cache
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._failed_rows: list[_Pending] = []

    async def chat(self, requests: Sequence[ChatRequest], affinity: str | None = None) -> list[Completion]:
        loop = asyncio.get_running_loop()
        pending = [_Pending(r, affinity, loop.create_future(), loop) for r in requests]
        with self._start_lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="hf-engine", daemon=True)
                self._worker.start()
        for p in pending:
            self._queue.put(p)
        return list(await asyncio.gather(*(p.future for p in pending)))

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            started = time.monotonic()
            time.sleep(self.batch_wait_s)  # let a burst of concurrent requests arrive together
            try:
                self._serve([first, *self._drain(self.max_batch_size - 1)])
            except BaseException as exc:  # the engine survives a bad batch; its callers get the error
                for p in self._failed_rows:
                    p.deliver(error=exc)
            finally:
                self.stats.busy_s += time.monotonic() - started
                self.stats.batches += 1

    def _drain(self, room: int) -> list[_Pending]:
        out = []
        while len(out) < room:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    def _serve(self, arrivals: list[_Pending]) -> None:
        """Decode until no request is left running, admitting new ones between steps."""
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        rows: list[_Row] = []
        cache = mask = lengths = logits = None
        self._failed_rows = list(arrivals)
        with torch.inference_mode():
            while True:
                joined = []
                for p in arrivals:
                    self.stats.requests += 1
                    if p.request.choices is not None:  # one forward pass, answered right away
                        try:
                            p.deliver(self._score_choice(p))
                        except Exception as exc:
                            p.deliver(error=exc)
                        continue
                    prompt = self._encode(p.request)
                    joined.append((_Row(p, prompt, _generator(p.request.sampling.seed)), *self._prefill(prompt, p.affinity)))
                if joined:
                    width = max(mask.shape[1] if mask is not None else 0, *(len(r.prompt) for r, _, _ in joined))
                    if cache is not None and width > mask.shape[1]:
                        grow = width - mask.shape[1]
                        for layer in cache.layers:
                            layer.keys = F.pad(layer.keys, (0, 0, grow, 0))
                            layer.values = F.pad(layer.values, (0, 0, grow, 0))
                        mask = F.pad(mask, (grow, 0))
                    new_layers = [
                        (torch.cat([F.pad(kv[i][0], (0, 0, width - kv[i][0].shape[2], 0)) for _, kv, _ in joined]),
                         torch.cat([F.pad(kv[i][1], (0, 0, width - kv[i][1].shape[2], 0)) for _, kv, _ in joined]))
                        for i in range(len(joined[0][1]))
                    ]
                    if cache is None:
                        cache = DynamicCache(ddp_cache_data=new_layers)
                    else:
                        for layer, (k, v) in zip(cache.layers, new_layers):
                            layer.keys = torch.cat([layer.keys, k])
                            layer.values = torch.cat([layer.values, v])
                    new_mask = torch.zeros((len(joined), width), dtype=torch.long, device=self.device)
                    for i, (r, _, _) in enumerate(joined):
                        new_mask[i, width - len(r.prompt):] = 1
                    new_lengths = torch.tensor([len(r.prompt) for r, _, _ in joined], device=self.device)
                    new_logits = torch.stack([last for _, _, last in joined])
                    mask = new_mask if mask is None else torch.cat([mask, new_mask])
                    lengths = new_lengths if lengths is None else torch.cat([lengths, new_lengths])
                    logits = new_logits if logits is None else torch.cat([logits, new_logits])
                    rows += [r for r, _, _ in joined]
                if not rows:
                    return

                keep, next_ids = [], []
                for i, row in enumerate(rows):
                    tok = _sample(logits[i], row.pending.request.sampling, row.generator)
                    if tok in self.eos_ids:
                        row.finish = "stop"
                    else:
                        row.tokens.append(tok)
                        if len(row.tokens) >= row.pending.request.sampling.max_tokens:
                            row.finish = "length"
                    if row.finish is None:
                        keep.append(i)
                        next_ids.append(tok)
                    else:
                        self._finish(row)
                if len(keep) < len(rows):  # drop finished rows from the batch and the cache
                    rows = [rows[i] for i in keep]
                    if not rows:
                        cache = mask = lengths = logits = None
                    else:
                        index = torch.tensor(keep, device=self.device)
                        cache.batch_select_indices(index)
                        mask, lengths = mask[index], lengths[index]
                self._failed_rows = [r.pending for r in rows]
                arrivals = self._drain(self.max_batch_size - len(rows))
                self._failed_rows += arrivals
                if not rows:
                    if not arrivals:
                        return
                    continue
                ids = torch.tensor(next_ids, dtype=torch.long, device=self.device).unsqueeze(1)
                self.stats.decode_steps += 1
                self.stats.decode_rows += len(rows)
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=lengths.unsqueeze(1),
                                 cache=cache, use_cache=True)
                lengths = lengths + 1
                logits = out.logits[:, -1, :].float().cpu()

    def _finish(self, row: _Row) -> None:
        self.stats.generated_tokens += len(row.tokens)
        row.pending.deliver(Completion(
            text=self.tokenizer.decode(row.tokens, skip_special_tokens=True).strip(),
            finish_reason=row.finish or "stop",
            prompt_tokens=len(row.prompt),
            completion_tokens=len(row.tokens),
            model=self.model_name,
        ))

    def _encode(self, req: ChatRequest) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            list(req.messages), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)[-self.max_input_tokens:]

    def _prefill(self, tokens: list[int], affinity: str | None):
        """Compute one prompt's KV cache (resuming from the prefix cache) and its last logits."""
        import torch
        from transformers import DynamicCache

        cached, past = self.prefix_cache.lookup(affinity, tokens)
        cache = DynamicCache(ddp_cache_data=past) if past else DynamicCache()
        ids = torch.tensor([tokens[cached:]], dtype=torch.long, device=self.device)
        positions = torch.arange(cached, len(tokens), device=self.device).unsqueeze(0)
        with torch.inference_mode():
            out = self.model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True)
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        self.prefix_cache.store(affinity, tokens, layers)
        return layers, out.logits[0, -1, :].float().cpu()

    def _score_choice(self, p: _Pending) -> Completion:
        """Restrict the next token to each choice's first token; the answer is the most likely."""
        import torch

        req = p.request
        first = [self.tokenizer.encode(c, add_special_tokens=False)[0] for c in req.choices]
        if len(set(first)) != len(first):
            raise ValueError(f"choices {req.choices} do not differ in their first token")
        tokens = self._encode(req)
        _, logits = self._prefill(tokens, p.affinity)
        probs = torch.softmax(torch.log_softmax(logits, dim=-1)[first], dim=-1).tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        self.stats.generated_tokens += 1
        return Completion(text=req.choices[best], finish_reason="choice", prompt_tokens=len(tokens),
                          completion_tokens=1, model=self.model_name, choice_probs=probs)


def _generator(seed: int | None):
    import torch

    g = torch.Generator()
    g.manual_seed(seed if seed is not None else torch.seed())
    return g


_TOP_K_FIRST = 1024


def _sample(logits, sampling: Sampling, generator) -> int:
    """Greedy, or temperature + nucleus (top_p) sampling with the row's own generator. The nucleus
    is searched among the top 1024 tokens first (cheaper than sorting the vocabulary), falling
    back to the full sort when they hold less than top_p of the mass: same result either way."""
    import torch

    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=generator))
    top, order = torch.topk(probs, min(_TOP_K_FIRST, probs.shape[-1]))
    if float(top.sum()) < sampling.top_p:
        top, order = torch.sort(probs, descending=True)
    outside = torch.cumsum(top, dim=-1) - top > sampling.top_p
    top = top.masked_fill(outside, 0.0)
    return int(order[torch.multinomial(top, 1, generator=generator)])
