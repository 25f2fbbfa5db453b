"""Engine pools as Ray actors on a real local Ray instance, with the bundled model."""

from __future__ import annotations

import asyncio

import pytest

from aloe_ray.config.engines import EngineConfig
from aloe_ray.engines.base import ChatRequest, EngineError, Sampling
from aloe_ray.engines.pool import EnginePool, engine_actor_name, start_engine_pools


def ask(i: int) -> ChatRequest:
    return ChatRequest(({"role": "user", "content": f"Say a word about {i}."},), Sampling(0.7, 0.95, 6, seed=i))


def test_pool_serves_restarts_and_reports(ray_local, bundled_model_path):
    import ray

    cfg = EngineConfig(num_cpus=1, max_batch_size=8)
    pools = start_engine_pools({"default": cfg}, prefix="aloe-engine.pooltest", namespace="aloe-test")
    pool = pools["default"]
    assert isinstance(pool, EnginePool) and pool.model_name == "smollm2-135m"
    first = asyncio.run(pool.chat([ask(1), ask(2)], affinity="tree-a"))
    assert len(first) == 2 and all(c.text for c in first)

    # kill the replica: the pool waits for Ray to restart it and the call still succeeds
    handle = ray.get_actor(engine_actor_name("aloe-engine.pooltest", "default", 0), namespace="aloe-test")
    ray.kill(handle, no_restart=False)
    again = asyncio.run(pool.chat([ask(1)], affinity="tree-a"))
    assert again[0].text == first[0].text  # same seed, same model, new process

    stats = asyncio.run(pool.stats())
    assert stats[0]["requests"] >= 1 and 0 <= stats[0]["utilisation"] <= 1


def test_pool_gives_up_when_no_replica_answers(ray_local):
    import ray

    @ray.remote
    class Dead:
        async def chat(self, requests, affinity=None):
            raise ray.exceptions.ActorUnavailableError("gone", None)

    pool = EnginePool("dead", "m", [Dead.remote()], max_attempts=2, backoff_s=0.01)
    with pytest.raises(EngineError, match="no replica answered after 2 tries"):
        asyncio.run(pool.chat([ask(0)]))


def test_bad_model_fails_at_start(ray_local, tmp_path):
    with pytest.raises(EngineError, match="engine pool 'broken' failed to start"):
        start_engine_pools({"broken": EngineConfig(model=str(tmp_path), num_cpus=0.5)}, prefix="aloe-engine.bad",
                           namespace="aloe-test")
