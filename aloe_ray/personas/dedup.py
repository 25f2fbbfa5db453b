"""Greedy dedup of unit vectors by cosine similarity, blockwise and vectorised. Pure numpy.

Candidates are considered in order; candidate i is kept iff its largest cosine similarity to
everything kept before it (the existing pool, and this batch's earlier *kept* candidates) is at
most the threshold. That is exactly the sequential loop "for each candidate: compare with all
kept; keep if max <= t", computed with matrix products instead:

1. every candidate against the existing pool, in blocks (one GEMM per block pair);
2. the survivors in blocks of `block`: against the kept candidates of earlier blocks (GEMM), then
   within the block: a candidate with no too-similar earlier candidate in the block is kept at
   once; only the ones that conflict with an earlier one are resolved in order, each with one
   vector operation over the block.

Similarities are float32 dot products (inputs must be L2-normalised); the comparison is against
the threshold rounded to float32, so a similarity equal to the threshold is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DedupResult:
    keep: np.ndarray
    """bool (n,): the candidate is kept."""
    max_sim: np.ndarray
    """float32 (n,): for a kept candidate, its largest similarity to everything kept before it (-1
    when nothing was); for a rejected one, a similarity above the threshold that rejected it (the
    naive loop may report a larger one)."""


def as_unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {x.shape}")
    return x


def max_similarity(queries: np.ndarray, keys: np.ndarray, block: int = 4096) -> np.ndarray:
    """Largest dot product of each query row with any key row (-1 where there are no keys)."""
    queries, keys = as_unit_rows(queries), as_unit_rows(keys)
    out = np.full(len(queries), -1.0, dtype=np.float32)
    if len(keys) == 0 or len(queries) == 0:
        return out
    for q0 in range(0, len(queries), block):
        q = queries[q0:q0 + block]
        best = out[q0:q0 + block]
        for k0 in range(0, len(keys), block):
            np.maximum(best, (q @ keys[k0:k0 + block].T).max(axis=1), out=best)
    return out


def dedup(candidates: np.ndarray, kept: np.ndarray | None = None, *, threshold: float = 0.6,
          block: int = 2048) -> DedupResult:
    """Greedy in-order dedup of `candidates` against `kept` and each other (see module docstring)."""
    cand = as_unit_rows(candidates)
    n, dim = cand.shape
    pool = as_unit_rows(kept) if kept is not None and len(kept) else np.zeros((0, dim), np.float32)
    if pool.shape[1] != dim:
        raise ValueError(f"candidates have dimension {dim}, kept vectors {pool.shape[1]}")
    t = np.float32(threshold)
    max_sim = max_similarity(cand, pool)
    keep = np.zeros(n, dtype=bool)
    alive = np.flatnonzero(max_sim <= t)  # survivors of the existing pool, in order
    accepted_blocks: list[np.ndarray] = []
    for b0 in range(0, len(alive), block):
        idx = alive[b0:b0 + block]
        vecs = cand[idx]
        best = max_sim[idx]
        for earlier in accepted_blocks:  # kept candidates of earlier blocks of this batch
            np.maximum(best, (vecs @ earlier.T).max(axis=1), out=best)
        ok = best <= t
        sims = vecs @ vecs.T
        conflict = np.triu(sims > t, k=1) & ok[:, None] & ok[None, :]  # [i, j]: i < j, too similar
        accepted = ok & ~conflict.any(axis=0)  # no too-similar earlier candidate: kept
        for j in np.flatnonzero(ok & conflict.any(axis=0)):  # in order: accepted[:j] is final here
            accepted[j] = not (conflict[:j, j] & accepted[:j]).any()
        # each candidate's largest similarity to the kept candidates before it in the block
        not_before = ~np.triu(np.ones(conflict.shape, dtype=bool), k=1)
        earlier_kept = np.where(not_before | ~accepted[:, None], np.float32(-1), sims).max(axis=0)
        max_sim[idx] = np.maximum(best, earlier_kept)
        keep[idx[accepted]] = True
        if accepted.any():
            accepted_blocks.append(vecs[accepted])
    return DedupResult(keep=keep, max_sim=max_sim)


def dedup_reference(candidates: np.ndarray, kept: np.ndarray | None = None, *, threshold: float = 0.6) -> DedupResult:
    """The naive per-item loop the vectorised version must match (tests, benchmarks)."""
    cand = as_unit_rows(candidates)
    pool = [] if kept is None else list(as_unit_rows(kept))
    t = np.float32(threshold)
    keep = np.zeros(len(cand), dtype=bool)
    max_sim = np.full(len(cand), -1.0, dtype=np.float32)
    for i, v in enumerate(cand):
        if pool:
            max_sim[i] = np.max(np.stack(pool) @ v)
        if max_sim[i] <= t:
            keep[i] = True
            pool.append(v)
    return DedupResult(keep=keep, max_sim=max_sim)


def similarity_histogram(values: np.ndarray, bins: int = 10) -> list[int]:
    """Counts of similarities in `bins` equal bins over [0, 1]; below 0 counts in the first bin,
    1 in the last."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    counts, _ = np.histogram(v, bins=bins, range=(0.0, 1.0))
    return [int(c) for c in counts]
