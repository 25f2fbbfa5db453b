"""The `hf` backend: a transformers model with continuous batching, for CPU (the default) or GPU.

Concurrent callers share forward passes. One worker thread owns the model: it decodes all running
requests together, one token per step, and between steps it admits waiting requests into the
running batch (up to `max_batch_size`), so nobody waits for a whole batch to finish. Each new
prompt is prefilled on its own (no padding waste, resuming from the conversation's cached prefix:
see prefix_cache.py) and joins the batch's left-padded KV cache (hf_batch.py), which is trimmed to
its longest live row as rows finish, so a step's cost follows the live rows, not the traffic's
history. A finished request is answered at once; a cancelled one (its caller's future cancelled,
e.g. by a timeout, or its stream closed) leaves the batch at the next step. `stream()` yields text
as it is decoded. Each row samples with its own seeded generator, so a request's output does not
depend on which others share its batch. On CPU all engines of a process share one thread budget:
torch's intra-op threads are set once, and one forward pass runs at a time. With `timeout_s`, a
`chat` call whose requests have not all finished that long after the call (queueing included)
raises EngineTimeout, and its requests leave the batch as cancelled ones do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aloe_ray.engines.base import ChatRequest, Completion, EngineError, EngineTimeout
from aloe_ray.engines.hf_batch import DecodeBatch
from aloe_ray.engines.prefix_cache import PrefixCache
from aloe_ray.engines.prompt_fit import fit_messages
from aloe_ray.engines.reply_text import ReplyText
from aloe_ray.engines.row_sampling import row_generator, sample_token

log = logging.getLogger(__name__)

STALL_S = 300.0
"""check_health fails an engine with work waiting and no decode step for this long (one step of
a small model takes well under a second; a step of a large one seconds)."""
_CPU_FORWARD = threading.Lock()  # one CPU forward pass at a time per process: no oversubscription
_cpu_threads: int | None = None
_cpu_threads_lock = threading.Lock()


def share_cpu_threads(asked: int | None) -> int:
    """Set torch's intra-op threads once per process (every CPU engine of the process shares them):
    `asked`, else the CPUs this process may run on. Returns the count in force."""
    global _cpu_threads
    import torch

    with _cpu_threads_lock:
        if _cpu_threads is None:
            _cpu_threads = asked or len(os.sched_getaffinity(0)) or 1
            torch.set_num_threads(_cpu_threads)
        elif asked and asked != _cpu_threads:
            log.warning("torch_threads=%s ignored: this process's CPU engines already share %s threads",
                        asked, _cpu_threads)
        return _cpu_threads


@dataclass
class _Pending:
    request: ChatRequest
    affinity: str | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    on_text: Callable[[str], None] | None = None
    """Streaming: called (on the loop) with each new piece of text."""
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.future.add_done_callback(lambda f: f.cancelled() and self.cancelled.set())

    def _call(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the caller's event loop is gone: nobody waits for this answer
            self.cancelled.set()

    def deliver(self, result: Completion | None = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if not self.future.done():
                self.future.set_exception(error) if error is not None else self.future.set_result(result)

        self._call(settle)

    def send_text(self, delta: str) -> None:
        if delta and self.on_text is not None:
            self._call(self.on_text, delta)


@dataclass
class _Row:
    pending: _Pending
    prompt_len: int
    generator: Any
    text: ReplyText | None
    """Tracks the decoded text when the request streams or has stop strings."""
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None


@dataclass
class EngineStats:
    started_at: float
    busy_s: float = 0.0
    batches: int = 0
    requests: int = 0
    cancelled: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    decode_rows: int = 0
    running: int = 0
    batch_width: int = 0
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
            "cancelled": self.cancelled,
            "running": self.running,
            "batch_width": self.batch_width,
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
        timeout_s: float | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            share_cpu_threads(torch_threads)
        if dtype == "auto":
            dtype = "float32" if device == "cpu" else "bfloat16"
        self.device = device
        self._forward_lock = _CPU_FORWARD if device == "cpu" else threading.Lock()
        self.model_name = model_name or model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device)
        self.model.eval()
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.max_input_tokens = max_input_tokens
        self.timeout_s = timeout_s
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
        self._beat = time.monotonic()  # the decode loop's last sign of life

    def check_health(self) -> None:
        """Raises when the decode loop has died, or has work and made no step for STALL_S."""
        if self._worker is not None and not self._worker.is_alive():
            raise EngineError("hf engine: the decode thread has died")
        busy = self.stats.running > 0 or not self._queue.empty()
        if busy and time.monotonic() - self._beat > STALL_S:
            raise EngineError(f"hf engine: work waiting and no decode step for {STALL_S:.0f}s")

    async def chat(self, requests: Sequence[ChatRequest], affinity: str | None = None) -> list[Completion]:
        loop = asyncio.get_running_loop()
        pending = [_Pending(r, affinity, loop.create_future(), loop) for r in requests]
        self._submit(pending)
        deadline = asyncio.timeout(self.timeout_s)  # None: no deadline
        try:
            async with deadline:
                return list(await asyncio.gather(*(p.future for p in pending)))
        except TimeoutError:
            if not deadline.expired():
                raise
            raise EngineTimeout(f"hf request took longer than {self.timeout_s}s; stopped") from None

    async def stream(self, request: ChatRequest, affinity: str | None = None) -> AsyncIterator[str | Completion]:
        """Text deltas as the reply decodes, then its Completion (whose text the deltas add up to).
        Closing the iterator early, or cancelling its consumer, stops the decoding at the next step."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        p = _Pending(request, affinity, loop.create_future(), loop, on_text=items.put_nowait)
        p.future.add_done_callback(items.put_nowait)  # after every delta: deliveries keep their order
        self._submit([p])
        try:
            while True:
                item = await items.get()
                if isinstance(item, str):
                    yield item
                else:
                    yield item.result()
                    return
        finally:
            p.cancelled.set()  # a no-op once the row has finished
            p.future.cancel()

    def _submit(self, pending: list[_Pending]) -> None:
        with self._start_lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="hf-engine", daemon=True)
                self._worker.start()
        for p in pending:
            self._queue.put(p)

    def _work(self) -> None:
        while True:
            self._beat = time.monotonic()
            first = self._queue.get()
            time.sleep(self.batch_wait_s)  # let a burst of concurrent requests arrive together
            self.stats.batches += 1
            self._serve([first, *self._drain(self.max_batch_size - 1)])

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

        batch = DecodeBatch(self.device)
        try:
            with torch.inference_mode():
                while True:
                    started = self._beat = time.monotonic()
                    self._admit(batch, arrivals)
                    arrivals = []
                    if batch:
                        next_ids = self._advance(batch)
                    self.stats.running, self.stats.batch_width = len(batch), batch.width
                    arrivals = self._drain(self.max_batch_size - len(batch))
                    if not batch and not arrivals:
                        self.stats.busy_s += time.monotonic() - started
                        return
                    if batch:
                        self.stats.decode_steps += 1
                        self.stats.decode_rows += len(batch)
                        with self._forward_lock:
                            batch.step(self.model, next_ids)
                    self.stats.busy_s += time.monotonic() - started
        except BaseException as exc:  # the engine survives a bad step; its callers get the error
            for p in [*(r.pending for r in batch.rows), *arrivals]:
                p.deliver(error=exc)
            self.stats.running = 0

    def _admit(self, batch: DecodeBatch, arrivals: list[_Pending]) -> None:
        joined = []
        for p in arrivals:
            if p.cancelled.is_set():
                continue
            self.stats.requests += 1
            try:
                if p.request.choices is not None:  # one forward pass, answered right away
                    p.deliver(self._score_choice(p))
                    continue
                prompt = self._encode(p.request)
                layers, last = self._prefill(prompt, p.affinity)
            except Exception as exc:  # this request's fault (too long, bad choices): only it fails
                p.deliver(error=exc)
                continue
            s = p.request.sampling
            text = ReplyText(self._decode, s.stop) if (s.stop or p.on_text) else None
            joined.append((_Row(p, len(prompt), row_generator(s.seed), text), layers, last, len(prompt)))
        if joined:
            batch.admit(joined)

    def _advance(self, batch: DecodeBatch) -> list[int]:
        """Sample each row's next token, answer finished rows, drop them and cancelled ones; the
        next tokens of the rows that stay, in batch order."""
        greedy = None
        if any(r.pending.request.sampling.temperature <= 0 for r in batch.rows):
            greedy = batch.logits.argmax(dim=-1).tolist()
        keep, next_ids = [], []
        for i, row in enumerate(batch.rows):
            if row.pending.cancelled.is_set():
                self.stats.cancelled += 1
                self.stats.generated_tokens += len(row.tokens)
                continue
            s = row.pending.request.sampling
            tok = greedy[i] if s.temperature <= 0 else sample_token(batch.logits[i].cpu(), s, row.generator)
            if tok in self.eos_ids:
                row.finish = "stop"
            else:
                row.tokens.append(tok)
                if row.text is not None and row.text.update(row.tokens):
                    row.finish = "stop"
                elif len(row.tokens) >= s.max_tokens:
                    row.finish = "length"
            if row.finish is not None:
                self._finish(row)
                continue
            if row.text is not None:
                row.pending.send_text(row.text.delta())
            keep.append(i)
            next_ids.append(tok)
        batch.keep(keep)
        return next_ids

    def _finish(self, row: _Row) -> None:
        self.stats.generated_tokens += len(row.tokens)
        if row.text is not None:
            text = row.text.text()
            row.pending.send_text(row.text.delta(final=True))
        else:
            text = self._decode(row.tokens).strip()
        row.pending.deliver(Completion(text=text, finish_reason=row.finish or "stop", prompt_tokens=row.prompt_len,
                                       completion_tokens=len(row.tokens), model=self.model_name))

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _render(self, messages: Sequence[dict]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
        if hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def _encode(self, req: ChatRequest) -> list[int]:
        """The prompt's tokens; a chat over max_input_tokens loses its oldest non-system messages
        (prompt_fit.py), or fails with PromptTooLong."""
        ids = self._render(req.messages)
        if len(ids) <= self.max_input_tokens:
            return ids
        messages, _ = fit_messages(req.messages, lambda m: len(self._render(m)), self.max_input_tokens)
        return self._render(messages)

    def _prefill(self, tokens: list[int], affinity: str | None):
        """Compute one prompt's KV cache (resuming from the prefix cache) and its last logits."""
        import torch
        from transformers import DynamicCache

        cached, past = self.prefix_cache.lookup(affinity, tokens)
        cache = DynamicCache(ddp_cache_data=past) if past else DynamicCache()
        ids = torch.tensor([tokens[cached:]], dtype=torch.long, device=self.device)
        positions = torch.arange(cached, len(tokens), device=self.device).unsqueeze(0)
        with torch.inference_mode(), self._forward_lock:
            out = self.model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        self.prefix_cache.store(affinity, tokens, layers)
        return layers, out.logits[0, -1, :].float()

    def _score_choice(self, p: _Pending) -> Completion:
        """Restrict the next token to each choice's first token; the answer is the most likely."""
        import torch

        req = p.request
        first = [self.tokenizer.encode(c, add_special_tokens=False)[0] for c in req.choices]
        if len(set(first)) != len(first):
            raise ValueError(f"choices {req.choices} do not differ in their first token")
        tokens = self._encode(req)
        _, logits = self._prefill(tokens, p.affinity)
        probs = torch.softmax(torch.log_softmax(logits.cpu(), dim=-1)[first], dim=-1).tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        self.stats.generated_tokens += 1
        return Completion(text=req.choices[best], finish_reason="choice", prompt_tokens=len(tokens),
                          completion_tokens=1, model=self.model_name, choice_probs=probs)

