"""Dedup at scale: the blockwise vectorised greedy dedup (aloe_ray.personas.dedup.dedup) against
the naive per-item loop, on random unit vectors of the embedding dimension (and optionally on
real MiniLM embeddings of the reference persona pools).

    python benchmarks/dedup_scale.py                       # 100,000 x 384, naive loop on 3,000
    python benchmarks/dedup_scale.py --n 200000 --rounds 10 --naive 5000 --real

Random 384-d unit vectors are almost orthogonal, so nearly all are kept: the worst case for the
work (every kept vector is compared with every later one). To exercise the within-batch conflict
path, a share of the vectors are noisy copies of earlier ones. The naive loop's time grows with
the square of n, so its figure at full n is extrapolated from the subset (marked '~').
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from aloe_ray.personas.dedup import dedup, dedup_reference


def synthetic(n: int, dim: int, dup_share: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    dups = rng.random(n) < dup_share
    src = rng.integers(0, np.maximum(np.arange(n), 1))
    x[dups] = x[src[dups]] + 0.3 * rng.normal(size=(int(dups.sum()), dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_rounds(x: np.ndarray, rounds: int, threshold: float) -> tuple[float, int]:
    """Dedup x as the job does: `rounds` batches, each against everything kept before."""
    kept = np.zeros((0, x.shape[1]), np.float32)
    t0 = time.perf_counter()
    for batch in np.array_split(x, rounds):
        r = dedup(batch, kept, threshold=threshold)
        kept = np.concatenate([kept, batch[r.keep]])
    return time.perf_counter() - t0, len(kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="vectors to dedup")
    ap.add_argument("--dim", type=int, default=384, help="dimension (all-MiniLM-L6-v2: 384)")
    ap.add_argument("--rounds", type=int, default=10, help="batches, each deduped against all kept before")
    ap.add_argument("--naive", type=int, default=3000, help="subset size for the naive per-item loop")
    ap.add_argument("--threshold", type=float, default=0.6)
    ap.add_argument("--dup-share", type=float, default=0.2, help="share of noisy copies of earlier vectors")
    ap.add_argument("--real", action="store_true", help="also embed and dedup the reference pools (MiniLM)")
    args = ap.parse_args()

    x = synthetic(args.n, args.dim, args.dup_share, seed=0)
    sub = x[:args.naive]
    t0 = time.perf_counter()
    naive = dedup_reference(sub, threshold=args.threshold)
    naive_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast_sub = dedup(sub, threshold=args.threshold)
    fast_sub_s = time.perf_counter() - t0
    same = bool((naive.keep == fast_sub.keep).all())
    full_s, kept = run_rounds(x, args.rounds, args.threshold)
    naive_full = naive_s * (args.n / args.naive) ** 2

    print(f"dedup scale: {args.n:,} unit vectors x {args.dim}, threshold {args.threshold}, "
          f"{args.dup_share:.0%} noisy copies, {args.rounds} rounds")
    print(f"{'':34}{'items':>10}{'seconds':>11}{'items/s':>12}{'kept':>9}")
    print(f"{'naive per-item loop':34}{args.naive:>10,}{naive_s:>11.2f}{args.naive / naive_s:>12,.0f}"
          f"{int(naive.keep.sum()):>9,}")
    print(f"{'blockwise vectorised':34}{args.naive:>10,}{fast_sub_s:>11.2f}{args.naive / fast_sub_s:>12,.0f}"
          f"{int(fast_sub.keep.sum()):>9,}")
    print(f"{'naive per-item loop (extrapolated)':34}{args.n:>10,}{'~' + format(naive_full, '.0f'):>11}"
          f"{'~' + format(args.n / naive_full, ',.0f'):>12}{'':>9}")
    print(f"{'blockwise vectorised':34}{args.n:>10,}{full_s:>11.2f}{args.n / full_s:>12,.0f}{kept:>9,}")
    print(f"same decisions on the subset: {same}; speed-up on the subset {naive_s / fast_sub_s:.1f}x, "
          f"at full size ~{naive_full / full_s:.0f}x")
    if args.real:
        real(args.threshold)


def real(threshold: float) -> None:
    from pathlib import Path

    from aloe_ray.personas.embed import SentenceEmbedder
    from aloe_ray.personas.loaders import load_reference_jsonl

    ref = Path(__file__).resolve().parents[2] / "shared" / "aloe_reference"
    texts = load_reference_jsonl(str(ref / "profile.jsonl")) + load_reference_jsonl(str(ref / "personality.jsonl"))
    t0 = time.perf_counter()
    emb = SentenceEmbedder().encode(texts)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = dedup(emb, threshold=threshold)
    dedup_s = time.perf_counter() - t0
    print(f"real MiniLM embeddings of the reference pools: {len(texts)} texts embedded in {embed_s:.1f}s "
          f"({len(texts) / embed_s:.0f}/s); dedup at {threshold}: {int(r.keep.sum())} kept in {dedup_s * 1000:.1f}ms")


if __name__ == "__main__":
    main()
