"""The ALOE benchmark end to end: validate inputs, pick the personas, start the engines, roll out
every persona concurrently through Ray Data, commit parts, write the report; and the comparison
of several evaluations."""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pyarrow as pa

from aloe_ray import storage
from aloe_ray.config import ConfigError, EvalConfig, save_config
from aloe_ray.config.eval import EvalPersonasConfig, EvalRolesConfig, ReportConfig
from aloe_ray.engines.base import ChatEngine, Sampling
from aloe_ray.engines.factory import check_engine
from aloe_ray.eval.report import al_plot_png, build_report, compare_markdown, report_markdown
from aloe_ray.eval.rollout import ROLES, EvalRoles, JudgeMode, RoleBinding, RolloutSpec, make_rollout_specs, roll_out
from aloe_ray.personas.loaders import (
    PersonaFileError,
    load_reference_jsonl,
    pair_personas,
    read_personas_table,
    seed_personas,
)
from aloe_ray.personas.model import Persona
from aloe_ray.pipeline.eval_output import EvalOutput, eval_root
from aloe_ray.prompts.eval import EVAL_PROMPT_VERSION
from aloe_ray.schema import EVAL_ROLLOUTS, EVAL_TURNS
from aloe_ray.storage import S3Options


def s3_options(cfg) -> S3Options:
    return S3Options(endpoint_url=cfg.storage.s3_endpoint_url, region=cfg.storage.s3_region)


def persona_candidates(src: EvalPersonasConfig, s3: S3Options | None = None) -> list[Persona]:
    """Every persona the source offers, distinct by persona id, in source order: table rows of
    `split`; every JSONL profile x the first N personalities; or the seeds' benchmark split."""
    if src.table:
        candidates = read_personas_table(src.table, split=src.split, s3=s3)
    elif src.profiles:
        profiles = load_reference_jsonl(src.profiles, s3)
        personalities = load_reference_jsonl(src.personalities, s3)[: src.first_personalities]
        candidates = pair_personas(profiles, personalities, per_profile=len(personalities), seed=0,
                                   split="benchmark", source=src.profiles)
    else:
        candidates = seed_personas(per_profile=1, seed=0, split="benchmark")  # the whole held-out cross product
    return list({p.persona_id: p for p in candidates}.values())


def select_personas(candidates: list[Persona], num: int | None, *, seed: int = 0,
                    source: str = "the persona source") -> list[Persona]:
    """The first `num` of a seeded shuffle, in source order (a larger count keeps a smaller
    count's personas); all of them when `num` is None. Fewer candidates than `num` is a
    ConfigError: a benchmark silently run on fewer personas than asked would not compare."""
    if num is None:
        return list(candidates)
    if num > len(candidates):
        fix = (f"set --num_personas={len(candidates)} or --num_personas=null (all of them), or use a larger source"
               if candidates else "use a source that has personas")
        raise ConfigError(f"num_personas is {num} but {source} has only {len(candidates)} distinct personas; {fix}")
    order = list(range(len(candidates)))
    random.Random(seed).shuffle(order)
    return [candidates[i] for i in sorted(order[:num])]


def _source_name(src: EvalPersonasConfig) -> str:
    if src.table:
        return f"personas table {src.table} (split {src.split!r})"
    if src.profiles:
        return f"{src.profiles} x {src.personalities}"
    return "the built-in seeds' benchmark split"


def benchmark_personas(src: EvalPersonasConfig, num: int | None, s3: S3Options | None = None) -> list[Persona]:
    """The personas to evaluate: `select_personas` over `persona_candidates`."""
    return select_personas(persona_candidates(src, s3), num, seed=src.selection_seed, source=_source_name(src))


def rollout_settings(cfg: EvalConfig) -> dict:
    """What decides a rollout's content: a resumed evaluation must keep all of it."""
    engines = cfg.used_engines()
    roles = {r: {**getattr(cfg.roles, r).model_dump(mode="json"),
                 "model": {k: engines[getattr(cfg.roles, r).engine].model_dump(mode="json")[k]
                           for k in ("backend", "model", "base_url")}}
             for r in EvalRolesConfig.model_fields}
    return {"turns": cfg.turns, "seed": cfg.seed, "judge": cfg.judge.model_dump(mode="json"), "roles": roles,
            "prompt_version": EVAL_PROMPT_VERSION}


def bind_roles(roles: EvalRolesConfig, engines: dict[str, ChatEngine]) -> EvalRoles:
    def bind(name: str) -> RoleBinding:
        cfg = getattr(roles, name)
        s = cfg.sampling
        return RoleBinding(engines[cfg.engine], Sampling(s.temperature, s.top_p, s.max_tokens), cfg.max_attempts)

    return EvalRoles(*(bind(r) for r in ROLES))


class TurnBoard:
    """Ray actor: counts finished turns, for progress lines between committed parts."""

    def __init__(self) -> None:
        self.turns = 0

    def turn_done(self) -> None:
        self.turns += 1

    def count(self) -> int:
        return self.turns


class RolloutRunner:
    """Ray Data stage: rolls out one part's personas concurrently (asyncio tasks against the shared
    engine deployments) and commits the part."""

    def __init__(self, roles: EvalRolesConfig, engines: dict[str, ChatEngine], judge: JudgeMode, turns: int,
                 output: EvalOutput, board=None) -> None:
        self.roles = bind_roles(roles, engines)
        self.judge, self.turns, self.output, self.board = judge, turns, output, board

    async def __call__(self, batch: pa.Table) -> AsyncIterator[dict]:
        specs = [RolloutSpec.from_row(row) for row in batch.to_pylist()]
        on_turn = (lambda: self.board.turn_done.remote()) if self.board is not None else None
        results = await asyncio.gather(*(roll_out(s, self.roles, self.judge, self.turns, on_turn=on_turn)
                                         for s in specs))
        part = await asyncio.to_thread(self.output.commit, results)
        cols = ("rollout_id", "status", "failure_reason", "scores_missing", "completion_tokens")
        summary = {c: [r.rollout[c] for r in results] for c in cols}
        summary["part"] = [part] * len(results)
        yield summary


def run_eval(cfg: EvalConfig, log: Callable[[str], None] = print) -> dict:
    """Roll out, score and report into `<output>/<run_id>/eval/<name>/`; returns the report."""
    started = time.time()
    s3 = s3_options(cfg)
    # Bad input fails here, before Ray starts or any model loads.
    candidates = persona_candidates(cfg.personas, s3)
    personas = select_personas(candidates, cfg.num_personas, seed=cfg.personas.selection_seed,
                               source=_source_name(cfg.personas))
    specs = make_rollout_specs(cfg.run_id, cfg.eval_name, personas, seed=cfg.seed)
    for engine in cfg.used_engines().values():
        check_engine(engine)
    out = EvalOutput(eval_root(cfg.output, cfg.run_id, cfg.eval_name), s3)
    out.pin_settings("settings.json", rollout_settings(cfg), made="rolled out", instead="another --name or --run_id")
    out.write_text("config.yaml", save_config(cfg))
    done, orphans = out.recover(retry_failed=cfg.pipeline.retry_failed)
    pending = [s for s in specs if s.rollout_id not in done]
    log(f"[aloe-ray] eval {cfg.eval_name} of run {cfg.run_id}: {len(specs)} personas x {cfg.turns} turns; "
        f"{len(specs) - len(pending)} already done, {len(pending)} to roll out -> {out.root}")
    if orphans:
        log(f"[aloe-ray] recovery: removed {orphans} uncommitted part(s)")
    stats: dict = {"rollout_s": 0.0}
    if pending:
        stats = _roll_out_all(cfg, pending, out, s3, log=log)

    ids = {s.rollout_id for s in specs}
    turns = [r for r in out.read("turns").to_pylist() if r["rollout_id"] in ids]
    rollouts = [r for r in out.read("rollouts").to_pylist() if r["rollout_id"] in ids]
    models = {r: cfg.engines[getattr(cfg.roles, r).engine].model for r in ROLES}
    meta = {"name": cfg.eval_name, "run_id": cfg.run_id, "output": out.root, "models": models,
            "judge_history": cfg.judge.history, "scoring": cfg.judge.scoring.value,
            "prompt_version": EVAL_PROMPT_VERSION, "personas_requested": cfg.num_personas,
            "personas_available": len(candidates), "personas_selected": len(specs)}
    report = write_report(out, turns, rollouts, turns=cfg.turns, meta=meta, settings=cfg.report)
    out.write_json("manifest.json", {
        "run_id": cfg.run_id, "job": "eval_aloe", "eval_name": cfg.eval_name, "output": out.root,
        "counts": {"personas": len(specs), "rollouts_ok": report["personas"],
                   "rollouts_failed": report["rollouts_failed"], "turns": len(turns),
                   "scores_missing": report["scores_missing"]},
        "timing": {"wall_s": time.time() - started, "rollout_s": stats.pop("rollout_s")},
        "engines": stats, "tables": {"turns": EVAL_TURNS.names, "rollouts": EVAL_ROLLOUTS.names},
        "config": cfg.model_dump(mode="json"),
    })
    _log_summary(report, out, log)
    return report


def write_report(out: EvalOutput, turn_rows: list[dict], rollout_rows: list[dict], *, turns: int, meta: dict,
                 settings: ReportConfig) -> dict:
    """report.json, report.md and al_curve.png of an evaluation folder (what `compare` reads);
    returns the report. The benchmark and the interactive sessions (serving/) both write it."""
    report = build_report(turn_rows, rollout_rows, turns=turns, meta=meta, samples=settings.bootstrap_samples,
                          seed=settings.seed, level=settings.ci_level)
    out.write_json("report.json", report)
    out.write_text("report.md", report_markdown(report))
    out.write_bytes("al_curve.png", al_plot_png([report], [meta.get("name") or out.root]))
    return report


def _roll_out_all(cfg: EvalConfig, pending: list[RolloutSpec], out: EvalOutput, s3, *, log) -> dict:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from aloe_ray.engines.deployment import describe_engine, start_engines
    from aloe_ray.engines.probe import check_endpoints, roles_using

    engines = cfg.used_engines()
    check_endpoints(engines, roles_using(cfg.roles))  # before Ray starts or any rollout runs
    if not ray.is_initialized():
        ray.init(**cfg.ray.init_kwargs())
    DataContext.get_current().enable_progress_bars = False
    log("[aloe-ray] starting engines: " + ", ".join(describe_engine(n, e) for n, e in engines.items()))
    pools = start_engines(engines, prefix=f"aloe-engine.{cfg.run_id}.{cfg.eval_name}",
                          namespace=cfg.ray.namespace, s3=s3)
    board = ray.remote(num_cpus=0)(TurnBoard).remote()
    try:
        p = cfg.pipeline
        ds = ray.data.from_items([s.to_row() for s in pending],
                                 override_num_blocks=math.ceil(len(pending) / p.rollouts_per_part))
        ds = ds.map_batches(
            RolloutRunner,
            batch_size=p.rollouts_per_part,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=p.runner_actors, max_tasks_in_flight_per_actor=p.parts_in_flight_per_actor,
                                      max_concurrent_calls_per_actor=p.parts_in_flight_per_actor),
            num_cpus=p.runner_num_cpus,
            fn_constructor_kwargs={"roles": cfg.roles, "engines": dict(pools), "output": out, "turns": cfg.turns,
                                   "judge": JudgeMode(cfg.judge.history, cfg.judge.scoring.value), "board": board},
        )
        began = time.monotonic()
        total_turns = len(pending) * cfg.turns
        counts = {"ok": 0, "failed": 0, "missing": 0}
        failures: list[str] = []

        def report_progress() -> None:
            turns = ray.get(board.count.remote(), timeout=30)
            elapsed = time.monotonic() - began
            rate = turns / elapsed if elapsed > 0 else 0
            eta = f"{(total_turns - turns) / rate:.0f}s" if rate > 0 else "?"
            log(f"[eval] personas done {counts['ok'] + counts['failed']}/{len(pending)} "
                f"({counts['failed']} failed) | turns {turns}/{total_turns} | missing scores {counts['missing']} "
                f"| elapsed {elapsed:.0f}s | ETA {eta}")

        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(p.progress_interval_s):
                try:
                    report_progress()
                except Exception:  # a slow poll must never stop the run
                    pass

        beat = threading.Thread(target=heartbeat, daemon=True)
        beat.start()
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in batch.to_pylist():
                    counts["ok" if row["status"] == "ok" else "failed"] += 1
                    counts["missing"] += int(row["scores_missing"] or 0)
                    if row["status"] != "ok":
                        failures.append(f"{row['rollout_id']}: {row['failure_reason']}")
        finally:
            stop.set()
            beat.join()
        report_progress()
        for line in failures[:5]:
            log(f"[aloe-ray] failed {line}")
        stats: dict = {"rollout_s": time.monotonic() - began}
        stats.update(pools.stats(settle=True))
        return stats
    finally:  # the engines' Serve apps are the run's: free them for a rerun in the same Ray instance
        pools.close()
        ray.kill(board)


def _log_summary(report: dict, out: EvalOutput, log) -> None:
    def fmt(v):
        return "–" if v is None else f"{v:.3f}"

    al = ", ".join(fmt(v) for v in report["AL"])
    ci = report.get("IR_CI")
    cut = report.get("replies_truncated_share")
    log(f"[aloe-ray] {report['name']}: {report['personas']} personas, {report['scores_missing']} missing scores, "
        f"{report['rollouts_failed']} failed rollouts (left out of the metrics), "
        f"{'–' if cut is None else f'{100 * cut:.0f}%'} of replies cut at max_tokens")
    log(f"[aloe-ray] AL(k) = [{al}]")
    log(f"[aloe-ray] IR {fmt(report['IR'])} (CI {'–' if not ci else f'{ci[0]:.3f}..{ci[1]:.3f}'}), "
        f"R2 {fmt(report['R2'])}, N-IR {fmt(report['N_IR'])}, N-R2 {fmt(report['N_R2'])}")
    log(f"[aloe-ray] output: {out.root}/ (turns/, rollouts/, report.json, report.md, al_curve.png)")


def find_reports(path: str, s3: S3Options | None = None) -> list[str]:
    """report.json URIs a compare argument names: the file itself, an evaluation folder, or a run
    folder (every evaluation in its eval/)."""
    if path.endswith(".json"):
        if not storage.exists(path, s3):
            raise FileNotFoundError(f"no such report: {path}")
        return [path]
    direct = storage.join(path, "report.json")
    if storage.exists(direct, s3):
        return [direct]
    found = [u for u in storage.list_files(storage.join(path, "eval"), "report.json", s3)
             if u.count("/") == storage.join(path, "eval").count("/") + 2]
    if not found:
        raise FileNotFoundError(f"no report.json in {path} (expected an eval folder, a run folder or a report.json)")
    return found


def compare_reports(paths: Sequence[str], output: str, *, labels: Sequence[str] | None = None,
                    s3: S3Options | None = None, log: Callable[[str], None] = print) -> str:
    """Put several evaluations side by side: `<output>/compare.md`, `compare.json`, `al_curves.png`."""
    uris = [u for p in paths for u in find_reports(p, s3)]
    reports = [json.loads(storage.read_text(u, s3)) for u in uris]
    if labels is not None and len(labels) != len(reports):
        raise ConfigError(f"--labels names {len(labels)} evaluations but {len(reports)} reports were found")
    if labels is None:
        labels = [r.get("name") or u for r, u in zip(reports, uris)]
        if len(set(labels)) != len(labels):
            labels = [f"{r.get('run_id')}/{r.get('name')}" for r in reports]
    table = compare_markdown(reports, labels)
    storage.write_text(storage.join(output, "compare.md"), "# ALOE benchmark comparison\n\n" + table + "\n"
                       + "\n".join(f"- {lab}: {u}" for lab, u in zip(labels, uris)) + "\n", s3)
    storage.write_text(storage.join(output, "compare.json"), json.dumps(
        [{"label": lab, "report": u, **{m: r.get(m) for m in ("AL", "IR", "R2", "N_AL", "N_IR", "N_R2", "AL_CI",
                                                              "IR_CI", "R2_CI", "N_IR_CI", "N_R2_CI")}}
         for lab, u, r in zip(labels, uris, reports)], indent=2) + "\n", s3)
    storage.write_bytes(storage.join(output, "al_curves.png"), al_plot_png(reports, labels), s3)
    log(table)
    log(f"[aloe-ray] compare: {len(reports)} evaluations -> {storage.join(output, 'compare.md')}, "
        f"{storage.join(output, 'al_curves.png')}")
    return table


__all__ = ["PersonaFileError", "benchmark_personas", "persona_candidates", "select_personas", "compare_reports", "find_reports", "run_eval"]
