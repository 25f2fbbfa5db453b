"""Engines as Ray Serve deployments (aloe_ray/engines/deployment.py) on a real local Ray with the
bundled model: private apps, routing by conversation, failover, streaming, attaching, errors."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from aloe_ray.config.engines import EngineConfig
from aloe_ray.engines.base import ChatRequest, EngineError, Sampling
from aloe_ray.engines.deployment import ServedEngine, engine_app, start_engines
from aloe_ray.engines.routing import rendezvous_order
from conftest import free_port, wait_for_port

NS = "aloe-deploy-test"


def ask(i: int, tokens: int = 6) -> ChatRequest:
    return ChatRequest(({"role": "user", "content": f"Say a word about {i}."},), Sampling(0.7, 0.95, tokens, seed=i))


@pytest.fixture(scope="module")
def ray_serve():
    import ray
    from ray import serve

    # logical CPUs on purpose: two engine replicas, a user's app and the Serve controller fit
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace=NS, log_to_driver=False)
    yield ray
    serve.shutdown()
    ray.shutdown()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_rendezvous_moves_few_keys_when_a_replica_joins():
    keys = [f"tree-{i}" for i in range(400)]
    before = {k: rendezvous_order(k, ["a", "b", "c"])[0] for k in keys}
    after = {k: rendezvous_order(k, ["a", "b", "c", "d"])[0] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "d" for k in moved)  # only keys that the new replica takes move
    assert 0.1 < len(moved) / len(keys) < 0.4
    assert len(set(before.values())) == 3


def test_job_engine_is_private_and_leaves_a_users_app_alone(ray_serve, bundled_model_path):
    """A job's engine app opens no port; a user's own Serve app with a route keeps answering."""
    from ray import serve

    assert not port_open(8000)
    cfg = EngineConfig(num_cpus=0.5, max_batch_size=4)
    with start_engines({"default": cfg}, prefix="aloe-engine.private", namespace=NS) as engines:
        assert not port_open(8000)  # Serve started by the job: no proxy at all
        assert serve.status().applications["aloe-engine.private.default"].status == "RUNNING"
        (out,) = asyncio.run(engines["default"].chat([ask(1)]))
        assert out.text and out.model == "smollm2-135m"
        stats = engines.stats(settle=True)["default"]
        assert len(stats) == 1 and stats[0]["served_requests"] == 1 and stats[0]["served_tokens"] == out.completion_tokens
    assert "aloe-engine.private.default" not in serve.status().applications  # deleted with the job

    # now a user runs Serve with HTTP and their own app; a job's engines must not disturb it
    serve.shutdown()
    port = free_port()

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Hello:
        async def __call__(self, request) -> str:
            return "hello"

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Hello.bind(), name="users-app", route_prefix="/hello")
    wait_for_port(port)
    with start_engines({"default": cfg}, prefix="aloe-engine.beside", namespace=NS) as engines:
        assert httpx.get(f"http://127.0.0.1:{port}/hello", timeout=30).text == "hello"
        assert asyncio.run(engines["default"].chat([ask(2)]))[0].text
        routes = httpx.get(f"http://127.0.0.1:{port}/-/routes", timeout=30).json()
        assert list(routes) == ["/hello"]  # the engine app has no route
    assert httpx.get(f"http://127.0.0.1:{port}/hello", timeout=30).text == "hello"
    assert set(serve.status().applications) == {"users-app"}
    serve.delete("users-app")


def test_conversations_stick_to_replicas_and_survive_a_killed_replica(ray_serve, bundled_model_path):
    import os
    import signal

    cfg = EngineConfig(num_cpus=0.5, replicas=2, max_batch_size=4)
    with start_engines({"default": cfg}, prefix="aloe-engine.routing", namespace=NS) as engines:
        engine = engines["default"]
        first = asyncio.run(engine.chat([ask(1)], affinity="tree-a"))
        for _ in range(5):
            assert asyncio.run(engine.chat([ask(1)], affinity="tree-a"))[0].text == first[0].text
        served = sorted(s["served_requests"] for s in engines.stats(settle=True)["default"])
        assert served == [6] or served == [0, 6]  # one conversation, one replica
        for i in range(12):  # many conversations spread over both
            asyncio.run(engine.chat([ask(i)], affinity=f"tree-{i}"))
        replicas = engines.stats(settle=True)["default"]
        assert len(replicas) == 2 and all(s["served_requests"] > 0 for s in replicas)

        # a replica process dies: calls are still answered (retried on the live one), same text
        os.kill(replicas[0]["pid"], signal.SIGKILL)
        async def many():
            return await asyncio.gather(*(engine.chat([ask(1)], affinity=f"tree-{i}") for i in range(6)))

        again = asyncio.run(many())
        assert all(c[0].text == first[0].text for c in again)  # seeded: any replica gives the same reply


def test_stream_adds_up_to_the_reply_and_attach_leaves_the_app_running(ray_serve, bundled_model_path):
    from ray import serve

    cfg = EngineConfig(num_cpus=0.5, max_batch_size=4)
    serve.start()
    serve.run(engine_app(cfg), name="shared-engine", route_prefix=None)  # e.g. a RayService's
    attached = EngineConfig(serve_app="shared-engine")
    with start_engines({"default": attached}, prefix="aloe-engine.attach", namespace=NS) as engines:
        engine = engines["default"]
        assert engines.served_tokens() is None  # not ours to count

        async def collect():
            return [item async for item in engine.stream(ask(3, tokens=12))]

        items = asyncio.run(collect())
        *deltas, done = items
        assert deltas and "".join(deltas).strip() == done.text
        (whole,) = asyncio.run(engine.chat([ask(3, tokens=12)]))
        assert whole.text == done.text and whole.completion_tokens == done.completion_tokens
    assert serve.status().applications["shared-engine"].status == "RUNNING"  # the job left it
    serve.delete("shared-engine")

    with pytest.raises(EngineError, match="no Serve application 'nowhere'"):
        start_engines({"default": EngineConfig(serve_app="nowhere")}, prefix="aloe-engine.none", namespace=NS)


def test_bad_model_fails_at_start_with_the_reason(ray_serve, tmp_path):
    from ray import serve

    (tmp_path / "config.json").write_text("{}")  # a folder that looks like a model but is not one
    with pytest.raises(EngineError, match="engine app 'aloe-engine.bad.broken' failed to start"):
        start_engines({"broken": EngineConfig(model=str(tmp_path), num_cpus=0.5)}, prefix="aloe-engine.bad",
                      namespace=NS, start_timeout_s=600)
    assert "aloe-engine.bad.broken" not in serve.status().applications


def test_served_engine_gives_up_after_its_tries(ray_serve):
    import ray
    from ray import serve

    @serve.deployment(name="EngineServer", ray_actor_options={"num_cpus": 0})
    class Gone:
        async def complete(self, call):
            raise ray.exceptions.ActorUnavailableError("replica gone", None)

    serve.run(Gone.bind(), name="gone-engine", route_prefix=None)
    engine = ServedEngine("gone", "gone-engine", "m", max_attempts=2, backoff_s=0.01)
    with pytest.raises(EngineError, match="no replica answered after 2 tries"):
        asyncio.run(engine.chat([ask(0)]))
    serve.delete("gone-engine")


def test_replicas_autoscale_with_load(ray_serve, bundled_model_path):
    """Serve's autoscaler adds a replica while calls wait (on KubeRay a replica that needs a GPU
    brings up a GPU node: tests/test_autoscaling.py)."""
    import time

    cfg = EngineConfig(num_cpus=0.5, replicas=1, max_replicas=2, target_ongoing_requests=1, max_batch_size=2)
    with start_engines({"default": cfg}, prefix="aloe-engine.scale", namespace=NS) as engines:
        engine = engines["default"]
        asyncio.run(engine.chat([ask(0)]))
        assert len(engines.stats(settle=True)["default"]) == 1

        async def load(until: float) -> int:
            async def one(i: int):
                while time.monotonic() < until and len(engines.stats()["default"]) < 2:
                    await engine.chat([ask(i, tokens=24)], affinity=f"tree-{i}")
            await asyncio.gather(*(one(i) for i in range(8)))
            return len(engines.stats()["default"])

        replicas = asyncio.run(load(time.monotonic() + 240))
        assert replicas == 2, "no second replica under sustained load"
        results = asyncio.run(asyncio.wait_for(engine.chat([ask(5)], affinity="tree-5"), 120))
        assert results[0].text
