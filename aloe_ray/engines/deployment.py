"""Engines as Ray Serve deployments: the one way an hf or vllm engine is hosted, for the jobs
and for the HTTP app alike.

- `EngineServer` is the hf deployment: each replica loads the model once (plus any LoRA
  adapters) and serves batches of chat requests and token streams by deployment handle. A vllm
  engine is ray.serve.llm's LLMServer with the same `complete` call (engines/serve_llm.py:
  AloeLLMServer, its placement group sized for tensor parallelism by ray.serve.llm). Serve gives
  both replicas or autoscaling by load (`replicas`..`max_replicas`), health checks that restart
  a dead or hung engine, and routing by conversation (hf: `engines/routing.py`; vllm:
  ray.serve.llm's prefix-aware router).
- `start_engines` runs a job's engines, each as its own Serve application
  `aloe-engine.<run>.<engine>` with no HTTP route (a Serve instance the job starts has no proxy
  at all, so nothing listens on a port), or attaches to an application that already runs
  (`EngineConfig.serve_app`, e.g. a long-lived RayService built by `build_engine_app`).
- `ServedEngine` is the picklable client the growers, persona writers and eval runners hold.
  It implements `ChatEngine`: a replica that dies under a call is retried on another one, and a
  caller that gives up cancels the call inside the replica (its decoding stops).
- openai engines stay HTTP clients (`LazyEngine`): their server is somebody else's.

A call's random draws do not depend on which replica serves it, nor on how many there are:
seeds are per request and independent of batch mates on every backend (engines/base.py); the
arithmetic of different batch shapes may still differ in the last bits (README, "Throughput").
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import ray
from ray import serve

from aloe_ray.config.engines import EngineBackend, EngineConfig
from aloe_ray.engines.base import ChatRequest, Completion, EngineError
from aloe_ray.engines.factory import build_engine
from aloe_ray.engines.probe import EngineUnavailable
from aloe_ray.storage import S3Options

ENGINE_DEPLOYMENT = "EngineServer"
STREAM_FLUSH_S = 0.05
"""A replica's stream sends what decoded at most this often (the first text at once)."""
STATS_PERIOD_S = 1.0
"""How often a replica sends its counters to the job's stats board."""


@dataclass(frozen=True)
class EngineCall:
    """One call to an engine deployment: what `ChatEngine.chat` takes, plus the adapter."""

    requests: list[ChatRequest]
    affinity: str | None = None
    """The conversation's key: the router keeps one conversation on one replica."""
    adapter: str | None = None
    """A name in `EngineConfig.adapters`; None: the base model."""

    @property
    def messages(self) -> list:
        """The conversation of the call's first request: the text ray.serve.llm's prefix-aware
        router (vllm engines) matches, as it matches an OpenAI request's messages."""
        return list(self.requests[0].messages) if self.requests else []


class ReplicaCounters:
    """What an engine replica served, whatever its backend, reported to the job's stats board
    (mixed into EngineServer and serve_llm.AloeLLMServer)."""

    def init_counters(self, models: dict, board: tuple[str, str] | None) -> None:
        self.models = models
        self.served_requests = self.served_tokens = 0
        self._board_name = board
        self._board = None
        self._reporter: asyncio.Task | None = None
        ctx = serve.get_replica_context()
        self.replica = ctx.replica_id.unique_id if ctx else f"pid-{os.getpid()}"
        self.app = ctx.app_name if ctx else None

    def _served(self, completions: Sequence[Completion]) -> None:
        self.served_requests += len(completions)
        self.served_tokens += sum(c.completion_tokens for c in completions)
        if self._board_name and self._reporter is None:
            self._reporter = asyncio.get_running_loop().create_task(self._report_forever())

    async def stats(self) -> dict:
        """The base engine's backend stats (hf: utilisation, batching, prefix cache) plus what
        this replica served, whatever the backend: `served_requests` and `served_tokens`."""
        import psutil

        base = self.models[None]
        out = base.stats.as_dict() if getattr(base, "stats", None) is not None else {}
        return {**out, "served_requests": self.served_requests, "served_tokens": self.served_tokens,
                "server": type(self).__name__, "app": self.app, "replica": self.replica,
                "node": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(), "rss_bytes": psutil.Process().memory_info().rss,
                "models": {name or "": _model_stats(e) for name, e in self.models.items()}}

    async def _report_forever(self) -> None:
        while True:
            try:
                if self._board is None:
                    name, namespace = self._board_name
                    self._board = ray.get_actor(name, namespace=namespace)
                await self._board.report.remote(self.replica, await self.stats())
            except Exception:  # noqa: BLE001 - the board is gone (job over) or busy: try later
                self._board = None
            await asyncio.sleep(STATS_PERIOD_S)


@serve.deployment(name=ENGINE_DEPLOYMENT)
class EngineServer(ReplicaCounters):
    """One replica: the base engine and one engine per adapter (hf merges each into a copy)."""

    def __init__(self, cfg: EngineConfig, s3: S3Options | None = None, board: tuple[str, str] | None = None):
        from aloe_ray.engines.models import adapter_base, resolve_adapter, resolve_model

        self.cfg = cfg
        models = {None: build_engine(cfg, s3)}
        for name, path in cfg.adapters.items():
            base = resolve_model(cfg.model, s3)
            merged = resolve_adapter(base, path, s3)
            trained_on = adapter_base(merged)
            if trained_on and trained_on not in (cfg.model, os.path.abspath(cfg.model), base):
                logging.getLogger("ray.serve").warning(
                    "adapter %s was trained on %s but is served on %s: its replies come from a model it "
                    "was not trained for", name, trained_on, cfg.model)
            engine = build_engine(cfg.model_copy(update={"model": merged, "adapters": {}}), s3)
            engine.model_name = name
            models[name] = engine
        self.init_counters(models, board)

    def _engine(self, adapter: str | None):
        if adapter not in self.models:
            raise EngineError(f"engine has no adapter '{adapter}'; served: {sorted(n for n in self.models if n)}")
        return self.models[adapter]

    async def complete(self, call: EngineCall) -> list[Completion]:
        completions = await self._engine(call.adapter).chat(call.requests, call.affinity)
        self._served(completions)
        return completions

    async def stream(self, request: ChatRequest, adapter: str | None = None,
                     affinity: str | None = None) -> AsyncIterator[str | Completion]:
        """Text deltas as they decode, then the Completion. A cancelled or closed stream stops
        the decoding (the hf engine's stream does, at its next step)."""
        engine = self._engine(adapter)
        if not hasattr(engine, "stream"):
            (out,) = await engine.chat([request], affinity)
            if out.text:
                yield out.text
            self._served([out])
            yield out
            return
        # Each item crosses a process boundary: text that decodes while the last piece is on its
        # way goes in the next piece (the first one leaves at once; none waits for more tokens).
        pending, last = "", 0.0
        async for item in engine.stream(request, affinity):
            if isinstance(item, Completion):
                if pending:
                    yield pending
                self._served([item])
                yield item
                return
            pending += item
            if time.monotonic() - last >= STREAM_FLUSH_S:
                yield pending
                pending, last = "", time.monotonic()

    async def check_health(self) -> None:
        """Serve calls this every health_check_period_s: an engine that raises (its decode loop
        died, or hangs with work waiting) gets the replica replaced."""
        for engine in self.models.values():
            check = getattr(engine, "check_health", None)
            if check is not None:
                result = check()
                if asyncio.iscoroutine(result):
                    await result


def _model_stats(engine) -> dict:
    keys = ("running", "cancelled", "requests", "generated_tokens", "batch_width")
    stats = getattr(engine, "stats", None)
    d = stats.as_dict() if stats is not None else {}
    return {k: d[k] for k in keys if k in d}


class EngineStatsBoard:
    """Each replica's latest counters, by replica id (a replica that restarts is a new entry, so
    what a dead one served is kept); used as a Ray actor."""

    def __init__(self) -> None:
        self.replicas: dict[str, dict] = {}

    def report(self, replica: str, stats: dict) -> None:
        self.replicas[replica] = stats

    def snapshot(self) -> list[dict]:
        return list(self.replicas.values())


def deployment_options(cfg: EngineConfig) -> dict:
    """Serve options of an engine deployment, from its EngineConfig."""
    from ray.serve.config import RequestRouterConfig

    opts: dict = {
        "max_ongoing_requests": cfg.max_concurrency,
        "health_check_period_s": 10,
        "health_check_timeout_s": 60,
        "graceful_shutdown_timeout_s": 5,
        "max_constructor_retry_count": 3,  # a model that does not load fails the app in minutes, not hours
        "request_router_config": RequestRouterConfig(request_router_class="aloe_ray.engines.routing:AffinityRouter"),
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus,
                              "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}}},
    }
    if cfg.max_replicas and cfg.max_replicas > cfg.replicas:
        opts["autoscaling_config"] = {"min_replicas": cfg.replicas, "initial_replicas": cfg.replicas,
                                      "max_replicas": cfg.max_replicas,
                                      "target_ongoing_requests": target_ongoing_requests(cfg)}
    else:
        opts["num_replicas"] = cfg.replicas
    return opts


def target_ongoing_requests(cfg: EngineConfig) -> float:
    if cfg.target_ongoing_requests is not None:
        return cfg.target_ongoing_requests
    return float(cfg.max_batch_size if cfg.backend == EngineBackend.hf else max(cfg.max_concurrency // 2, 1))


def engine_app(cfg: EngineConfig, s3: S3Options | None = None, board: tuple[str, str] | None = None,
               name: str = ENGINE_DEPLOYMENT):
    """The Serve application of one engine (its only deployment is the ingress): EngineServer
    for hf, ray.serve.llm's server for vllm (engines/serve_llm.py). `name`: the deployment's,
    where an app holds several engines (the Serve app's interactive roles)."""
    if cfg.backend == EngineBackend.vllm:
        from aloe_ray.engines.serve_llm import llm_engine_app

        return llm_engine_app(cfg, s3, board, name=name)
    return EngineServer.options(name=name, **deployment_options(cfg)).bind(cfg, s3, board)


def build_engine_app(args: dict):
    """Serve application builder (`import_path: aloe_ray.engines.deployment:build_engine_app`)
    for a long-lived engine that jobs attach to with `serve_app`; `args` is an EngineConfig
    (plus optional `s3: {endpoint_url, region}`)."""
    args = dict(args or {})
    s3 = args.pop("s3", None)
    return engine_app(EngineConfig.model_validate(args), S3Options(**s3) if s3 else None)


class ServedEngine:
    """Client of an engine deployment: picklable, fetches its handle in the process using it."""

    def __init__(self, name: str, app: str, model_name: str, *, adapter: str | None = None, handle=None,
                 deployment: str = ENGINE_DEPLOYMENT, max_attempts: int = 4, backoff_s: float = 1.0):
        self.name, self.app, self.model_name, self.adapter = name, app, model_name, adapter
        self.deployment, self.max_attempts, self.backoff_s = deployment, max_attempts, backoff_s
        self._handle = handle

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}

    def for_adapter(self, adapter: str | None, model_name: str) -> ServedEngine:
        return ServedEngine(self.name, self.app, model_name, adapter=adapter, handle=self._handle,
                            deployment=self.deployment, max_attempts=self.max_attempts, backoff_s=self.backoff_s)

    @property
    def handle(self):
        if self._handle is None:
            self._handle = serve.get_deployment_handle(self.deployment, self.app)
        return self._handle

    async def chat(self, requests: Sequence[ChatRequest], affinity: str | None = None) -> list[Completion]:
        call = EngineCall(list(requests), affinity, self.adapter)
        last: BaseException | None = None
        for attempt in range(self.max_attempts):
            response = self.handle.complete.remote(call)
            try:
                return await response
            except asyncio.CancelledError:
                response.cancel()  # the caller gave up: stop the work in the replica
                raise
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                last = exc  # the replica died under the call: Serve routes the retry elsewhere
                await asyncio.sleep(self.backoff_s * 2**attempt)
        raise EngineError(f"engine '{self.name}': no replica answered after {self.max_attempts} tries: {last}")

    async def stream(self, request: ChatRequest, affinity: str | None = None) -> AsyncIterator[str | Completion]:
        """Text deltas, then the Completion; closing the iterator cancels the stream in the replica."""
        gen = self.handle.options(stream=True).stream.remote(request, self.adapter, affinity)
        try:
            async for item in gen:
                yield item
        finally:
            gen.cancel()

    async def stats(self) -> dict:
        return await self.handle.stats.remote()


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


class Engines(dict):
    """A job's engines by name (ServedEngine or LazyEngine), with the Serve apps it started."""

    def __init__(self, engines: dict, *, started: list[str], board=None) -> None:
        super().__init__(engines)
        self.started, self.board = started, board

    @property
    def served(self) -> dict[str, ServedEngine]:
        return {n: e for n, e in self.items() if isinstance(e, ServedEngine)}

    def stats(self, *, settle: bool = False) -> dict[str, list[dict]]:
        """Per-replica counters of the engines this job started (every replica that reported,
        dead ones included), by engine name. `settle`: wait for the replicas' last report."""
        if self.board is None:
            return {}
        if settle:
            time.sleep(2 * STATS_PERIOD_S + 0.5)
        snapshot = ray.get(self.board.snapshot.remote(), timeout=30)
        by_app = {e.app: n for n, e in self.served.items()}
        out: dict[str, list[dict]] = {n: [] for n in self.served if self[n].app in self.started}
        for s in snapshot:
            name = by_app.get(s.get("app"))
            if name in out:
                out[name].append(s)
        return out

    def served_tokens(self) -> int | None:
        """Completion tokens served so far by the engines this job started; None when some of
        its engines are not ours to count (openai, attached apps)."""
        if len(self.started) != len(self):
            return None
        return sum(s.get("served_tokens", 0) for replicas in self.stats().values() for s in replicas)

    def close(self) -> None:
        """Delete the Serve apps this job started (their names are the run's: a rerun in the same
        Ray instance starts them afresh)."""
        for app in self.started:
            try:
                serve.delete(app)
            except Exception:  # noqa: BLE001 - Serve already gone with the cluster
                pass
        if self.board is not None:
            ray.kill(self.board)
        self.started = []

    def __enter__(self) -> Engines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def describe_engine(name: str, e: EngineConfig) -> str:
    """One engine as the jobs log it when they start it."""
    if e.serve_app:
        return f"{name} (Serve app {e.serve_app})"
    scale = f"x{e.replicas}" + (f"..{e.max_replicas}" if e.max_replicas else "")
    return f"{name} ({e.backend.value}: {e.model}" + ("" if e.backend == EngineBackend.openai else f" {scale}") + ")"


def start_engines(engines: dict[str, EngineConfig], *, prefix: str, namespace: str,
                  s3: S3Options | None = None, start_timeout_s: float = 1800) -> Engines:
    """Start (or attach to) every engine's Serve app and wait until each is RUNNING: the check that
    a local engine answers (EngineUnavailable when one does not)."""
    from ray.serve.config import ProxyLocation
    from ray.serve.schema import ApplicationStatus

    clients: dict = {}
    started: list[str] = []
    board = None
    served = {n: c for n, c in engines.items() if c.backend != EngineBackend.openai}
    for name, cfg in engines.items():
        if cfg.backend == EngineBackend.openai:
            clients[name] = LazyEngine(cfg, s3)
    if served:
        serve.start(proxy_location=ProxyLocation.Disabled)  # no-op when Serve already runs (its proxies stay)
        if any(not c.serve_app for c in served.values()):
            board = ray.remote(num_cpus=0)(EngineStatsBoard).options(name=f"{prefix}.stats",
                                                                   namespace=namespace).remote()
    try:
        running = serve.status().applications
        for name, cfg in served.items():
            if cfg.serve_app:
                if cfg.serve_app not in running:
                    raise EngineUnavailable(f"engine '{name}': no Serve application '{cfg.serve_app}' runs on "
                                            f"this cluster (running: {sorted(running) or 'none'})")
                clients[name] = ServedEngine(name, cfg.serve_app, cfg.model)
                continue
            app = f"{prefix}.{name}"
            board_ref = (f"{prefix}.stats", namespace)
            serve._run(engine_app(cfg, s3, board_ref), name=app, route_prefix=None, _blocking=False)
            started.append(app)
            clients[name] = ServedEngine(name, app, cfg.model)
        deadline = time.monotonic() + start_timeout_s
        waiting = [clients[n].app for n in served]
        while waiting:
            apps = serve.status().applications
            for app in list(waiting):
                status = apps[app].status if app in apps else None
                if status == ApplicationStatus.RUNNING:
                    waiting.remove(app)
                elif status in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY):
                    raise EngineUnavailable(f"engine app '{app}' failed to start: {_app_message(apps[app])}")
            if waiting and time.monotonic() > deadline:
                raise EngineUnavailable(f"engine apps {waiting} not running after {start_timeout_s:.0f}s")
            if waiting:
                time.sleep(0.5)
    except BaseException:
        Engines(clients, started=started, board=board).close()
        raise
    return Engines(clients, started=started, board=board)


def _app_message(app_status) -> str:
    parts = [app_status.message or ""]
    for name, d in (app_status.deployments or {}).items():
        if d.message:
            parts.append(f"{name}: {d.message}")
    return "; ".join(p for p in parts if p)[-3000:] or "no message"
