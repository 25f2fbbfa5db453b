"""Ray Data stages of persona-pool generation: ask the engine for new members (async, many
requests in flight), then embed the candidates that passed the filters (an actor pool that loads
the sentence-embedding model once; GPU when configured)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pyarrow as pa

from aloe_ray.config.engines import RoleConfig
from aloe_ray.engines.base import ChatEngine, ChatRequest, Sampling
from aloe_ray.personas.filters import CandidateFilter
from aloe_ray.personas.rounds import Reply, candidates_from_replies
from aloe_ray.prompts.personas import generation_messages


class MemberWriter:
    """One Ray Data batch of generation requests -> one row per request: the reply, its parsed
    candidates and their filter verdicts. A failed call is retried, then recorded, never raised.
    `max_tokens` by kind leaves room for every member a request asks for (`request_max_tokens`)."""

    def __init__(self, engine: ChatEngine, role: RoleConfig, filters: dict[str, CandidateFilter],
                 max_tokens: dict[str, int]) -> None:
        self.engine, self.role, self.filters, self.max_tokens = engine, role, filters, max_tokens

    async def __call__(self, batch: pa.Table) -> AsyncIterator[dict]:
        rows = batch.to_pylist()
        replies = await asyncio.gather(*(self._ask(r) for r in rows))
        out: dict[str, list] = {k: [] for k in ("kind", "index", "seed", "text", "finish_reason", "error",
                                                "prompt_tokens", "completion_tokens", "cand_text", "cand_reason")}
        for row, reply in zip(rows, replies):
            cands = candidates_from_replies([reply], self.filters[row["kind"]])
            for key, value in (("kind", row["kind"]), ("index", reply.index), ("seed", reply.seed),
                               ("text", reply.text), ("finish_reason", reply.finish_reason), ("error", reply.error),
                               ("prompt_tokens", reply.prompt_tokens), ("completion_tokens", reply.completion_tokens),
                               ("cand_text", [c.text for c in cands]), ("cand_reason", [c.reason for c in cands])):
                out[key].append(value)
        yield out

    async def _ask(self, row: dict) -> Reply:
        s = self.role.sampling
        request = ChatRequest(generation_messages(row["kind"], row["examples"], row["new"]),
                              Sampling(s.temperature, s.top_p, self.max_tokens[row["kind"]], int(row["seed"])))
        error = None
        for _ in range(self.role.max_attempts):
            try:
                done = (await self.engine.chat([request]))[0]
                return Reply(row["index"], row["seed"], done.text, done.finish_reason, done.prompt_tokens,
                             done.completion_tokens)
            except Exception as exc:  # noqa: BLE001 - any failure becomes a recorded failed request
                error = f"{type(exc).__name__}: {exc}"[:500]
        return Reply(row["index"], row["seed"], None, "error", error=error)


class CandidateEmbedder:
    """Adds `cand_embedding`: one vector per candidate that passed the filters, [] for the others."""

    def __init__(self, model: str, batch_size: int, max_seq_length: int) -> None:
        from aloe_ray.personas.embed import SentenceEmbedder

        self.embedder = SentenceEmbedder(model, batch_size=batch_size, max_seq_length=max_seq_length)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("cand_text").to_pylist()
        reasons = batch.column("cand_reason").to_pylist()
        wanted = [t for ts, rs in zip(texts, reasons) for t, r in zip(ts, rs) if r is None]
        vectors = iter(self.embedder.encode(wanted)) if wanted else iter(())
        column = [[next(vectors).tolist() if r is None else [] for r in rs] for rs in reasons]
        return batch.append_column("cand_embedding", pa.array(column, pa.list_(pa.list_(pa.float32()))))


class TextEmbedder:
    """Adds `embedding` to rows with a `text` column (seeds, benchmark files)."""

    def __init__(self, model: str, batch_size: int, max_seq_length: int) -> None:
        from aloe_ray.personas.embed import SentenceEmbedder

        self.embedder = SentenceEmbedder(model, batch_size=batch_size, max_seq_length=max_seq_length)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**batch, "embedding": self.embedder.encode([str(t) for t in batch["text"]])}
