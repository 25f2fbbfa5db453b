"""Engines as pools of Ray actors, and the client that routes requests to them.

A pool is `replicas` long-lived actors, each loading the weights once. `EnginePool` is the
picklable client every caller holds: it implements `ChatEngine`, sends a conversation's
requests to one replica (by affinity key, so its growing prefix can hit that replica's cache),
and moves to another replica when one dies while Ray restarts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from collections.abc import Sequence

import ray

from aloe_ray.config.engines import EngineBackend, EngineConfig
from aloe_ray.engines.base import ChatRequest, Completion, EngineError
from aloe_ray.engines.factory import build_engine
from aloe_ray.storage import S3Options


class EngineActor:
    """Hosts one in-process engine (hf or vllm) for the pool."""

    def __init__(self, cfg: EngineConfig, s3: S3Options | None) -> None:
        self.engine = build_engine(cfg, s3)
        self.served_requests = self.served_tokens = 0

    async def ready(self) -> dict:
        return {"model": self.engine.model_name, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    async def chat(self, requests: list[ChatRequest], affinity: str | None = None) -> list[Completion]:
        completions = await self.engine.chat(requests, affinity)
        self.served_requests += len(completions)
        self.served_tokens += sum(c.completion_tokens for c in completions)
        return completions

    async def stats(self) -> dict:
        """Backend stats (hf: utilisation, batching, prefix cache) plus what this actor served,
        whatever the backend: `served_requests` and `served_tokens` (completion tokens)."""
        stats = getattr(self.engine, "stats", None)
        out = stats.as_dict() if stats is not None else {}
        return {**out, "served_requests": self.served_requests, "served_tokens": self.served_tokens,
                "node": ray.get_runtime_context().get_node_id()}


class EnginePool:
    def __init__(self, name: str, model_name: str, handles: list, max_attempts: int = 4, backoff_s: float = 1.0):
        self.name = name
        self.model_name = model_name
        self.handles = handles
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self._round_robin = itertools.count()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_round_robin"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._round_robin = itertools.count()

    async def chat(self, requests: Sequence[ChatRequest], affinity: str | None = None) -> list[Completion]:
        n = len(self.handles)
        start = _stable_hash(affinity) % n if affinity else next(self._round_robin) % n
        last: Exception | None = None
        for attempt in range(self.max_attempts):
            handle = self.handles[(start + attempt) % n]
            try:
                return await handle.chat.remote(list(requests), affinity)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                last = exc  # the replica died or is restarting: try the next one after a pause
                await asyncio.sleep(self.backoff_s * 2**attempt)
        raise EngineError(f"engine pool '{self.name}': no replica answered after {self.max_attempts} tries: {last}")

    async def stats(self) -> list[dict]:
        return list(await asyncio.gather(*(h.stats.remote() for h in self.handles)))


class LazyEngine:
    """A picklable engine that is built in the process that first uses it (openai clients)."""

    def __init__(self, cfg: EngineConfig, s3: S3Options | None = None):
        self.cfg, self.s3 = cfg, s3
        self.model_name = cfg.model
        self._engine = None

    def __getstate__(self) -> dict:
        return {"cfg": self.cfg, "s3": self.s3, "model_name": self.model_name, "_engine": None}

    async def chat(self, requests: Sequence[ChatRequest], affinity: str | None = None) -> list[Completion]:
        if self._engine is None:
            self._engine = build_engine(self.cfg, self.s3)
        return await self._engine.chat(requests, affinity)


def start_engine_pools(engines: dict[str, EngineConfig], *, prefix: str, namespace: str,
                       s3: S3Options | None = None) -> dict[str, EnginePool | LazyEngine]:
    """Start every pool's actors and wait until each has loaded its model."""
    pools: dict[str, EnginePool | LazyEngine] = {}
    pending = {}
    for name, cfg in engines.items():
        if cfg.backend == EngineBackend.openai:
            pools[name] = LazyEngine(cfg, s3)
            continue
        handles = []
        for i in range(cfg.replicas):
            handles.append(
                ray.remote(EngineActor)
                .options(
                    name=engine_actor_name(prefix, name, i),
                    namespace=namespace,
                    num_cpus=cfg.num_cpus,
                    num_gpus=cfg.num_gpus,
                    max_concurrency=cfg.max_concurrency,
                    max_restarts=-1,
                )
                .remote(cfg, s3)
            )
        pools[name] = EnginePool(name, cfg.model, handles)
        pending[name] = [h.ready.remote() for h in handles]
    for name, refs in pending.items():
        try:
            ray.get(refs)
        except ray.exceptions.RayError as exc:
            raise EngineError(f"engine pool '{name}' failed to start: {exc}") from exc
    return pools


def engine_actor_name(prefix: str, engine: str, replica: int) -> str:
    return f"{prefix}.{engine}.{replica}"


def _stable_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
