"""Persona-pool generation end to end: validate inputs, commit the seeds as round 0, run
self-generation rounds (Ray Data over the engine deployment, embeddings in an actor pool, dedup on the
driver) until every kind stops, then hold out the benchmark, pair, and write the manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from aloe_ray.config import GeneratePersonasConfig, save_config
from aloe_ray.personas.dedup import max_similarity, similarity_histogram
from aloe_ray.personas.embed import resolve_embedder
from aloe_ray.personas.filters import CandidateFilter
from aloe_ray.personas.loaders import PersonaFileError, load_reference_jsonl, read_personas_table, seed_members
from aloe_ray.personas.model import text_id
from aloe_ray.personas.rounds import (Candidate, Reply, dedup_candidates, plan_requests, round_stats,
                                      stop_reason)
from aloe_ray.personas.splits import draw_holdout, make_personas, split_pool
from aloe_ray.pipeline.persona_output import POOL_TABLES, PoolOutput
from aloe_ray.prompts.personas import PERSONA_PROMPT_VERSION
from aloe_ray.schema import PERSONAS, POOL_MEMBERS, POOL_ROUNDS
from aloe_ray.storage import S3Options

KINDS = ("profile", "personality")
MANIFEST_DIR = "jobs/generate_personas"
"""config.yaml and manifest.json of this job, under the run root (each stage keeps its own)."""
SETTINGS_FILE = MANIFEST_DIR + "/settings.json"
"""What the committed rounds depend on (`pool_settings`): a rerun of the run_id must match it."""


@dataclass
class KindPool:
    """One kind's pool as committed so far."""

    kind: str
    texts: list[str] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    rounds_done: int = 0
    last_rate: float | None = None


def s3_options(cfg: GeneratePersonasConfig) -> S3Options:
    return S3Options(endpoint_url=cfg.storage.s3_endpoint_url, region=cfg.storage.s3_region)


def load_seed_pool(cfg: GeneratePersonasConfig, s3: S3Options) -> tuple[dict[str, list[str]], str]:
    """Round 0 texts by kind (exact duplicates removed, order kept) and their source label. The
    built-in seeds give only their training part: the seeds' held-out profiles and personalities
    (the eval job's default benchmark) never enter the pool, so nothing trained downstream saw
    them; a personas table gives its `seeds.split` rows ('train' unless set otherwise)."""
    src = cfg.seeds
    if src.table:
        personas = read_personas_table(src.table, split=src.split, s3=s3)
        found = {"profile": [p.profile for p in personas], "personality": [p.personality for p in personas]}
        label = src.table
    elif src.profiles:
        found = {"profile": load_reference_jsonl(src.profiles, s3),
                 "personality": load_reference_jsonl(src.personalities, s3)}
        label = src.profiles.rsplit("/", 1)[0] + "/"
    else:
        profiles, personalities = seed_members("train")
        found, label = {"profile": list(profiles), "personality": list(personalities)}, "seeds"
    return {k: list(dict.fromkeys(" ".join(t.split()) for t in v)) for k, v in found.items()}, label


def load_benchmark_files(cfg: GeneratePersonasConfig, s3: S3Options) -> dict[str, list[str]] | None:
    b = cfg.benchmark
    if not b.profiles_file:
        return None
    out = {}
    for kind, uri, count in (("profile", b.profiles_file, b.profiles), ("personality", b.personalities_file, b.personalities)):
        texts = load_reference_jsonl(uri, s3)
        if len(texts) < count:
            raise PersonaFileError(f"benchmark: {uri} holds {len(texts)} {kind}s, {count} requested")
        out[kind] = texts[:count]
    return out


def check_inputs(cfg: GeneratePersonasConfig, s3: S3Options):
    """Everything that can be wrong with the inputs, before Ray starts or any model loads."""
    from aloe_ray.engines.factory import check_engine
    from aloe_ray.engines.probe import check_endpoints

    seeds, label = load_seed_pool(cfg, s3)
    bench = load_benchmark_files(cfg, s3)
    if bench is None:
        for kind, count in (("profile", cfg.benchmark.profiles), ("personality", cfg.benchmark.personalities)):
            if count and len(seeds[kind]) <= count:
                raise PersonaFileError(f"benchmark.{POOL_TABLES[kind]}={count} would hold out all {len(seeds[kind])} "
                                       f"seed {POOL_TABLES[kind]}: lower it or add seeds")
    engine = cfg.engines[cfg.generator.engine]
    check_engine(engine)
    resolve_embedder(cfg.embedding.model)
    check_endpoints({cfg.generator.engine: engine}, {cfg.generator.engine: ["generator"]})
    return seeds, label, bench


def candidate_filter(cfg: GeneratePersonasConfig, kind: str) -> CandidateFilter:
    k = getattr(cfg, POOL_TABLES[kind])
    return CandidateFilter(min_words=k.min_words, max_words=k.max_words, personality=kind == "personality")


def pool_settings(cfg: GeneratePersonasConfig, seeds: dict[str, list[str]], seed_label: str) -> dict:
    """What the committed rounds depend on: a resumed run must keep all of it. Stop rules
    (target_size, max_rounds, min_acceptance_rate), requests per round, the benchmark and the
    pairing may change between runs: they only decide how far the pool grows and how it is split."""
    digest = hashlib.sha256(json.dumps(seeds, sort_keys=True).encode()).hexdigest()[:16]
    kinds = {}
    for kind in KINDS:
        k = getattr(cfg, POOL_TABLES[kind])
        kinds[kind] = {"examples_per_request": k.examples_per_request, "new_per_request": k.new_per_request,
                       "filter": dataclasses.asdict(candidate_filter(cfg, kind))}
    return {"seed": cfg.seed, "prompt_version": PERSONA_PROMPT_VERSION,
            "seeds": {"source": seed_label, **cfg.seeds.model_dump(mode="json"),
                      "counts": {k: len(v) for k, v in seeds.items()}, "sha256": digest},
            "embedding": {"model": cfg.embedding.model, "max_seq_length": cfg.embedding.max_seq_length},
            "similarity_threshold": cfg.similarity_threshold, "kinds": kinds}



def run_persona_pool(cfg: GeneratePersonasConfig, log: Callable[[str], None] = print) -> dict:
    """Build the pool under `<output>/<run_id>/`; returns the manifest."""
    started = time.time()
    s3 = s3_options(cfg)
    seeds, seed_label, bench_files = check_inputs(cfg, s3)
    out = PoolOutput(cfg.output, cfg.run_id, s3)
    # Before anything else is written or started: a pool embedded by another model, deduped at
    # another threshold or seeded from other members would mix incompatible rounds.
    out.pin_settings(SETTINGS_FILE, pool_settings(cfg, seeds, seed_label), made="built",
                     instead="another --run_id")
    out.write_text(MANIFEST_DIR + "/config.yaml", save_config(cfg))
    committed, removed = out.recover()
    log(f"[personas] run {cfg.run_id}: {len(seeds['profile'])} seed profiles, {len(seeds['personality'])} seed "
        f"personalities ({seed_label}); {len(committed)} round(s) already committed -> {out.root}")
    if removed:
        log(f"[personas] recovery: removed {removed} uncommitted pool part(s)")
    with _RayRunner(cfg, s3, log) as runner:  # its engines stop with the run
        timing = {"generate_s": 0.0, "dedup_s": 0.0, "embed_seeds_s": 0.0}
        if 0 not in committed:
            t0 = time.monotonic()
            _commit_seeds(cfg, out, seeds, seed_label, runner)
            timing["embed_seeds_s"] = time.monotonic() - t0
            committed = [0]
        pools = _load_pools(cfg, out)
        round_ = max(committed) + 1
        while True:
            active = [k for k in KINDS if _stop(cfg, pools[k]) is None]
            if not active:
                break
            gen_s, dedup_s = _run_round(cfg, out, pools, active, round_, runner, log)
            timing["generate_s"] += gen_s
            timing["dedup_s"] += dedup_s
            round_ += 1
        for k in KINDS:
            log(f"[personas] {POOL_TABLES[k]}: {len(pools[k].texts)} in the pool, stopped: {_stop(cfg, pools[k])}")
        personas, split_info = _split_and_pair(cfg, pools, bench_files, runner)
        out.write_personas(pa.Table.from_pylist([p.to_row() for p in personas], PERSONAS))
        manifest = _manifest(cfg, out, started, timing, split_info, personas, runner)
        out.write_json(MANIFEST_DIR + "/manifest.json", manifest)
        c = manifest["counts"]
        log(f"[personas] finished run {cfg.run_id}: {c['profiles']} profiles, {c['personalities']} personalities, "
            f"{c['personas_train']} training + {c['personas_benchmark']} benchmark personas; "
            f"dedup {timing['dedup_s']:.3f}s; {manifest['timing']['wall_s']:.0f}s")
        log(f"[personas] output: {out.root}/{{profiles,personalities,rounds,personas}}/  manifest: {out.file(MANIFEST_DIR + '/manifest.json')}")
        return manifest


def _stop(cfg: GeneratePersonasConfig, pool: KindPool) -> str | None:
    k = getattr(cfg, POOL_TABLES[pool.kind])
    return stop_reason(pool_size=len(pool.texts), rounds_done=pool.rounds_done, last_rate=pool.last_rate,
                       target=k.target_size, max_rounds=k.max_rounds, min_acceptance_rate=k.min_acceptance_rate)


def _member(cfg, kind, text, round_, source, emb, max_sim, *, request_index=None, seed=None, model=None) -> dict:
    return {"run_id": cfg.run_id, "kind": kind, "member_id": text_id(text, kind), "text": text, "round": round_,
            "source": source, "request_index": request_index,
            "max_similarity": None if max_sim is None or np.isnan(max_sim) else float(max_sim),
            "embedding": emb.tolist(), "model": model,
            "prompt_version": PERSONA_PROMPT_VERSION if model else None, "seed": seed}


def _stats_row(cfg, round_, kind, counts: dict, pool_size: int, stopped, gen_s: float, dedup_s: float) -> dict:
    return {"run_id": cfg.run_id, "round": round_, "kind": kind, **counts, "pool_size": pool_size,
            "stopped": stopped, "generate_s": gen_s, "dedup_s": dedup_s,
            "committed_at": datetime.now(timezone.utc)}


def _commit_seeds(cfg, out: PoolOutput, seeds, label, runner) -> None:
    members, stats = {}, []
    every = runner.embed(seeds["profile"] + seeds["personality"])  # one pass, one actor start
    split_at = {"profile": (0, len(seeds["profile"])), "personality": (len(seeds["profile"]), len(every))}
    for kind in KINDS:
        texts = seeds[kind]
        emb = every[split_at[kind][0]:split_at[kind][1]]
        sims = [float(max_similarity(emb[i:i + 1], emb[:i])[0]) if i else np.nan for i in range(len(texts))]
        members[kind] = [_member(cfg, kind, t, 0, label, e, s) for t, e, s in zip(texts, emb, sims)]
        counts = {"requests": 0, "requests_failed": 0, "asked": 0, "candidates": len(texts), "rejected_filter": 0,
                  "rejection_reasons": "{}", "rejected_duplicate": 0, "accepted": len(texts), "acceptance_rate": 1.0,
                  "similarity_histogram": similarity_histogram(np.array(sims[1:])),
                  "prompt_tokens": 0, "completion_tokens": 0}
        pool = KindPool(kind, texts)
        stats.append(_stats_row(cfg, 0, kind, counts, len(texts), _stop(cfg, pool), 0.0, 0.0))
    out.commit_round(0, members, stats)


def _load_pools(cfg, out: PoolOutput) -> dict[str, KindPool]:
    rounds = sorted(out.read("rounds").to_pylist(), key=lambda r: r["round"])
    pools = {}
    for kind in KINDS:
        rows = sorted(out.read(POOL_TABLES[kind]).to_pylist(), key=lambda r: (r["round"], r["request_index"] or 0))
        emb = np.array([r["embedding"] for r in rows], dtype=np.float32)
        gen = [r for r in rounds if r["kind"] == kind and r["round"] > 0]
        pools[kind] = KindPool(kind, [r["text"] for r in rows], [r["round"] for r in rows], emb, len(gen),
                               gen[-1]["acceptance_rate"] if gen else None)
    return pools


def _run_round(cfg, out: PoolOutput, pools, active: list[str], round_: int, runner, log) -> tuple[float, float]:
    requests = []
    for kind in active:
        k = getattr(cfg, POOL_TABLES[kind])
        requests += plan_requests(cfg.run_id, cfg.seed, kind, round_, pools[kind].texts, requests=k.requests_per_round,
                                  examples=k.examples_per_request, new=k.new_per_request)
    t0 = time.monotonic()
    rows = runner.generate(requests)
    gen_s = time.monotonic() - t0
    members, stats, dedup_total = {}, [], 0.0
    for kind in active:
        k = getattr(cfg, POOL_TABLES[kind])
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["index"])
        replies = [Reply(r["index"], r["seed"], r["text"], r["finish_reason"], r["prompt_tokens"] or 0,
                         r["completion_tokens"] or 0, r["error"]) for r in mine]
        cands, vecs = [], []
        for r in mine:
            for text, reason, vec in zip(r["cand_text"], r["cand_reason"], r["cand_embedding"]):
                cands.append(Candidate(text, r["index"], r["seed"], reason))
                vecs.append(vec if reason is None else None)
        dim = pools[kind].embeddings.shape[1]
        emb = np.array([v if v is not None else np.zeros(dim) for v in vecs], dtype=np.float32).reshape(-1, dim)
        pool = pools[kind]
        t1 = time.monotonic()
        outcome = dedup_candidates(cands, emb, pool.embeddings, threshold=cfg.similarity_threshold,
                                   room=k.target_size - len(pool.texts))
        dedup_s = time.monotonic() - t1
        dedup_total += dedup_s
        members[kind] = [_member(cfg, kind, cands[i].text, round_, f"round-{round_}", emb[i], outcome.max_sim[i],
                                 request_index=cands[i].request_index, seed=cands[i].seed, model=runner.model_name)
                         for i in outcome.accepted]
        counts = round_stats(cands, outcome, replies, new=k.new_per_request)
        pool.texts += [cands[i].text for i in outcome.accepted]
        pool.rounds += [round_] * len(outcome.accepted)
        pool.embeddings = np.concatenate([pool.embeddings, emb[outcome.accepted]]) if outcome.accepted else pool.embeddings
        pool.rounds_done += 1
        pool.last_rate = counts["acceptance_rate"]
        stopped = _stop(cfg, pool)
        stats.append(_stats_row(cfg, round_, kind, counts, len(pool.texts), stopped, gen_s, dedup_s))
        log(_round_line(round_, kind, counts, len(pool.texts), k.target_size, stopped, dedup_s, gen_s))
        for r in replies:
            if r.error:
                log(f"[personas]   request {kind} #{r.index} failed: {r.error}")
    out.commit_round(round_, members, stats)
    return gen_s, dedup_total


def _round_line(round_, kind, c, size, target, stopped, dedup_s, gen_s) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in json.loads(c["rejection_reasons"]).items()) or "none"
    return (f"[personas] round {round_} {kind}: {c['requests']} requests ({c['requests_failed']} failed) asking "
            f"{c['asked']}, {c['candidates']} candidates, {c['accepted']} accepted ({100 * c['acceptance_rate']:.1f}%); "
            f"rejected: {reasons} | pool {size}/{target}{f' -> stop ({stopped})' if stopped else ''} | "
            f"{c['completion_tokens']} tokens in {gen_s:.0f}s, dedup {dedup_s * 1000:.1f}ms")


def _split_and_pair(cfg, pools, bench_files, runner):
    b = cfg.benchmark
    train, bench, info = {}, {}, {}
    for kind, count in (("profile", b.profiles), ("personality", b.personalities)):
        pool = pools[kind]
        tag = ["seeds" if r == 0 else f"round-{r}" for r in pool.rounds]
        if bench_files is not None:
            held = bench_files[kind]
            vecs = runner.embed(held) if held else np.zeros((0, pool.embeddings.shape[1]), np.float32)
            split = split_pool(pool.embeddings, vecs, benchmark_idx=[], max_sim=b.max_similarity)
            bench[kind] = [(t, "benchmark-file") for t in held]
        else:
            idx = draw_holdout(len(pool.texts), count, b.seed)
            split = split_pool(pool.embeddings, pool.embeddings[idx], benchmark_idx=idx, max_sim=b.max_similarity)
            bench[kind] = [(pool.texts[i], tag[i]) for i in idx]
        train[kind] = [(pool.texts[i], tag[i]) for i in split.train]
        info[kind] = {"benchmark": len(bench[kind]), "train": len(split.train), "dropped_near_benchmark": len(split.dropped),
                      "max_similarity_train_to_benchmark": split.max_similarity_to_benchmark}
    personas = make_personas(train["profile"], train["personality"], bench["profile"], bench["personality"],
                             per_profile=cfg.pairing.per_profile, seed=cfg.pairing.seed)
    return personas, info


def _manifest(cfg, out: PoolOutput, started: float, timing: dict, split_info: dict, personas, runner) -> dict:
    from aloe_ray.pipeline.generate import _versions

    rounds = out.read("rounds").to_pylist()
    return {
        "run_id": cfg.run_id,
        "job": "generate_personas",
        "output": out.root,
        "prompt_version": PERSONA_PROMPT_VERSION,
        "embedding_model": cfg.embedding.model,
        "generator_model": cfg.engines[cfg.generator.engine].model,
        "counts": {
            "profiles": sum(r["accepted"] for r in rounds if r["kind"] == "profile"),
            "personalities": sum(r["accepted"] for r in rounds if r["kind"] == "personality"),
            "rounds": max((r["round"] for r in rounds), default=0),
            "requests": sum(r["requests"] or 0 for r in rounds),
            "requests_failed": sum(r["requests_failed"] or 0 for r in rounds),
            "personas_train": sum(p.split == "train" for p in personas),
            "personas_benchmark": sum(p.split == "benchmark" for p in personas),
        },
        "split": split_info,
        "rounds": [{k: r[k] for k in ("round", "kind", "candidates", "accepted", "acceptance_rate", "pool_size",
                                      "stopped", "rejection_reasons", "dedup_s")} for r in sorted(
                       rounds, key=lambda r: (r["round"], r["kind"]))],
        "timing": {"wall_s": time.time() - started, **timing,
                   "dedup_s_all_rounds": sum(r["dedup_s"] or 0.0 for r in rounds)},
        "tables": {"profiles": POOL_MEMBERS.names, "personalities": POOL_MEMBERS.names,
                   "rounds": POOL_ROUNDS.names, "personas": PERSONAS.names},
        "packages": _versions(),
        "config": cfg.model_dump(mode="json"),
    }


class _RayRunner:
    """Ray and the generator engine, started only when a stage needs them (and stopped with the run)."""

    def __init__(self, cfg: GeneratePersonasConfig, s3: S3Options, log) -> None:
        self.cfg, self.s3, self.log = cfg, s3, log
        self.pool = None
        self.engines = None
        self.model_name = cfg.engines[cfg.generator.engine].model

    def __enter__(self) -> _RayRunner:
        return self

    def __exit__(self, *exc) -> None:
        if self.engines is not None:
            self.engines.close()

    def _ray(self):
        import ray
        from ray.data import DataContext

        if not ray.is_initialized():
            c = self.cfg.ray
            ray.init(**c.init_kwargs())
        DataContext.get_current().enable_progress_bars = False
        return ray

    def _embed_kwargs(self) -> dict:
        e = self.cfg.embedding
        return {"compute": _actor_pool(e.actors), "num_cpus": e.num_cpus, "num_gpus": e.num_gpus or None,
                "fn_constructor_kwargs": {"model": e.model, "batch_size": e.batch_size,
                                          "max_seq_length": e.max_seq_length}}

    def embed(self, texts: list[str]) -> np.ndarray:
        from aloe_ray.pipeline.persona_stages import TextEmbedder

        ray = self._ray()
        ds = ray.data.from_items([{"i": i, "text": t} for i, t in enumerate(texts)],
                                 override_num_blocks=max(1, math.ceil(len(texts) / 256)))
        rows = ds.map_batches(TextEmbedder, batch_size=256, batch_format="numpy", **self._embed_kwargs()).take_all()
        rows.sort(key=lambda r: r["i"])
        return np.array([r["embedding"] for r in rows], dtype=np.float32)

    def generate(self, requests) -> list[dict]:
        from aloe_ray.pipeline.persona_stages import CandidateEmbedder, MemberWriter

        ray = self._ray()
        if self.pool is None:
            from aloe_ray.engines.deployment import describe_engine, start_engines

            name = self.cfg.generator.engine
            self.log(f"[personas] starting engine {describe_engine(name, self.cfg.engines[name])}")
            self.engines = start_engines({name: self.cfg.engines[name]}, prefix=f"aloe-persona-engine.{self.cfg.run_id}",
                                         namespace=self.cfg.ray.namespace, s3=self.s3)
            self.pool = self.engines[name]
        p = self.cfg.pipeline
        filters = {kind: candidate_filter(self.cfg, kind) for kind in KINDS}
        ds = ray.data.from_items([r.to_row() for r in requests],
                                 override_num_blocks=max(1, math.ceil(len(requests) / p.requests_per_batch)))
        ds = ds.map_batches(MemberWriter, batch_size=p.requests_per_batch, batch_format="pyarrow",
                            compute=_actor_pool(p.generator_actors, p.batches_in_flight_per_actor),
                            num_cpus=p.generator_num_cpus,
                            fn_constructor_kwargs={"engine": self.pool, "role": self.cfg.generator, "filters": filters,
                                                   "max_tokens": {"profile": self.cfg.profiles.request_max_tokens(),
                                                                  "personality": self.cfg.personalities.request_max_tokens()}})
        ds = ds.map_batches(CandidateEmbedder, batch_size=p.requests_per_batch, batch_format="pyarrow",
                            **self._embed_kwargs())
        rows: list[dict] = []
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows += batch.to_pylist()
        return rows


def _actor_pool(size: int, in_flight: int | None = None):
    from ray.data import ActorPoolStrategy

    if in_flight is None:
        return ActorPoolStrategy(size=size)
    return ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=in_flight, max_concurrent_calls_per_actor=in_flight)
