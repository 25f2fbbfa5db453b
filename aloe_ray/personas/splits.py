"""The benchmark hold-out and the pairing of a finished pool into personas. Pure: numpy only.

Held-out members are drawn from the pool with a seeded RNG (or given from files); every pool
member more similar than `max_similarity` to a held-out member of the same kind leaves training,
so no benchmark persona is a near-duplicate of a training one. Training personas pair each
training profile with `per_profile` training personalities; benchmark personas are the full cross
product of the held-out profiles and personalities (as the ALOE benchmark's 20 x 5).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from aloe_ray.personas.dedup import max_similarity
from aloe_ray.personas.loaders import pair_personas
from aloe_ray.personas.model import Persona


@dataclass
class HoldOut:
    benchmark: list[int]
    """Pool indices held out for the benchmark (empty when the benchmark comes from files)."""
    train: list[int]
    """Pool indices left for training."""
    dropped: list[int]
    """Pool indices in neither: too similar to a held-out member."""
    max_similarity_to_benchmark: float
    """Largest similarity of a training member to a held-out one (-1 with no benchmark)."""


def draw_holdout(pool_size: int, count: int, seed: int) -> list[int]:
    if count > pool_size:
        raise ValueError(f"cannot hold out {count} of a pool of {pool_size}")
    return sorted(random.Random(seed).sample(range(pool_size), count))


def split_pool(pool: np.ndarray, held_out: np.ndarray, *, benchmark_idx: list[int], max_sim: float) -> HoldOut:
    """Split pool rows into train / dropped, given the held-out vectors (pool rows at
    `benchmark_idx`, or vectors from files with `benchmark_idx=[]`)."""
    rest = [i for i in range(len(pool)) if i not in set(benchmark_idx)]
    sims = max_similarity(pool[rest], held_out) if len(rest) else np.zeros(0, np.float32)
    t = np.float32(max_sim)
    train = [i for i, s in zip(rest, sims) if s <= t]
    dropped = [i for i, s in zip(rest, sims) if s > t]
    kept_sims = [float(s) for s in sims if s <= t]
    return HoldOut(benchmark_idx, train, dropped, max(kept_sims) if kept_sims and len(held_out) else -1.0)


def make_personas(train_profiles: list[tuple[str, str]], train_personalities: list[tuple[str, str]],
                  bench_profiles: list[tuple[str, str]], bench_personalities: list[tuple[str, str]], *,
                  per_profile: int, seed: int) -> list[Persona]:
    """Training then benchmark personas; members are (text, source) pairs, a persona's source is
    '<profile source>/<personality source>'."""
    personas = []
    for split, profiles, personalities in (("train", train_profiles, train_personalities),
                                           ("benchmark", bench_profiles, bench_personalities)):
        if not profiles or not personalities:
            continue
        sources = {**{t: s for t, s in profiles}, **{t: s for t, s in personalities}}
        per = per_profile if split == "train" else len(personalities)
        for p in pair_personas([t for t, _ in profiles], [t for t, _ in personalities], per_profile=per,
                               seed=seed, split=split):
            personas.append(Persona(**{**p.to_row(), "source": f"{sources[p.profile]}/{sources[p.personality]}"}))
    return personas
