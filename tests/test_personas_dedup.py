"""Embedding dedup (against a brute-force loop), real MiniLM embeddings, round planning and stop
rules, the benchmark hold-out and pairing, and the reference JSONL pools."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aloe_ray.personas.dedup import dedup, dedup_reference, max_similarity, similarity_histogram
from aloe_ray.personas.loaders import load_reference_jsonl
from aloe_ray.personas.rounds import Candidate, Reply, dedup_candidates, plan_requests, round_stats, stop_reason
from aloe_ray.personas.splits import draw_holdout, make_personas, split_pool
from conftest import REFERENCE


def unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("trial", range(12))
def test_dedup_matches_brute_force(trial):
    rng = np.random.default_rng(trial)
    d = int(rng.integers(2, 12))
    n, k = int(rng.integers(1, 400)), int(rng.integers(0, 60))
    cand, kept = unit(rng, n, d), unit(rng, k, d)
    # within-round duplicates: exact copies and near copies of earlier candidates and of the pool
    cand[n // 2:n // 2 + 5] = cand[:5]
    if k:
        cand[-3:] = kept[:3]
    threshold = float(rng.uniform(0.1, 0.95))
    fast = dedup(cand, kept, threshold=threshold, block=int(rng.integers(1, 80)))
    slow = dedup_reference(cand, kept, threshold=threshold)
    assert fast.keep.tolist() == slow.keep.tolist()
    assert np.allclose(fast.max_sim[fast.keep], slow.max_sim[slow.keep], atol=1e-5)
    assert (fast.max_sim[~fast.keep] > np.float32(threshold)).all()
    # the invariant itself: no kept candidate is more similar than the threshold to another kept
    # candidate or to the pool
    new = cand[fast.keep]
    sims = new @ new.T
    np.fill_diagonal(sims, -1)
    assert sims.max(initial=-1) <= threshold + 1e-6
    if k and len(new):
        assert (new @ kept.T).max() <= threshold + 1e-6


def test_dedup_within_round_order_and_duplicates():
    a = np.array([1.0, 0.0], np.float32)
    b = np.array([0.8, 0.6], np.float32)  # cos(a, b) = 0.8
    c = np.array([0.0, 1.0], np.float32)  # cos(a, c) = 0, cos(b, c) = 0.6
    r = dedup(np.stack([a, a, b, c]), threshold=0.7)
    assert r.keep.tolist() == [True, False, False, True]
    # c is compared with kept members only: b (0.6) was rejected, so c's max is against a
    assert r.max_sim[3] == pytest.approx(0.0, abs=1e-6)
    # against an existing pool
    r = dedup(np.stack([b, c]), kept=a[None], threshold=0.7)
    assert r.keep.tolist() == [False, True] and r.max_sim[0] == pytest.approx(0.8)


def test_dedup_threshold_boundary_is_inclusive():
    a = np.array([1.0, 0.0], np.float32)
    at = np.array([0.6, 0.8], np.float32)  # cos = 0.6 exactly in float32
    above = np.array([0.6001, 0.79992], np.float32)
    above /= np.linalg.norm(above)
    assert float(a @ at) == np.float32(0.6)
    assert dedup(at[None], kept=a[None], threshold=0.6).keep.tolist() == [True]
    assert dedup(above[None], kept=a[None], threshold=0.6).keep.tolist() == [False]
    assert dedup_reference(at[None], kept=a[None], threshold=0.6).keep.tolist() == [True]


def test_dedup_edge_cases():
    rng = np.random.default_rng(0)
    assert dedup(np.zeros((0, 4), np.float32), unit(rng, 3, 4)).keep.tolist() == []
    r = dedup(unit(rng, 5, 4), None, threshold=1.0)
    assert r.keep.all() and r.max_sim[0] == -1
    with pytest.raises(ValueError, match="dimension"):
        dedup(unit(rng, 2, 4), unit(rng, 2, 5))
    assert max_similarity(unit(rng, 3, 4), np.zeros((0, 4), np.float32)).tolist() == [-1, -1, -1]
    assert similarity_histogram(np.array([-0.2, 0.05, 0.55, 1.0])) == [2, 0, 0, 0, 0, 1, 0, 0, 0, 1]


@pytest.fixture(scope="module")
def embedder():
    from aloe_ray.personas.embed import SentenceEmbedder

    return SentenceEmbedder()


def test_minilm_paraphrases_above_and_unrelated_below_threshold(embedder):
    pairs = [
        ("She is a 34-year-old nurse who works night shifts in a hospital in Lagos and has two sons.",
         "A thirty-four year old woman working nights as a hospital nurse in Lagos, mother of two boys."),
        ("He is blunt and impatient, and wants short answers in bullet points without small talk.",
         "He is very direct and has no patience; he prefers brief bullet-point replies and skips pleasantries."),
    ]
    unrelated = ["The stock market fell sharply on Tuesday after the central bank raised interest rates.",
                 "Preheat the oven to 200 degrees and bake the bread for forty minutes."]
    texts = [t for p in pairs for t in p] + unrelated
    v = embedder.encode(texts)
    assert v.shape == (6, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    sims = v @ v.T
    assert sims[0, 1] > 0.6 and sims[2, 3] > 0.6
    for i in range(4):
        assert sims[i, 4] < 0.6 and sims[i, 5] < 0.6
    # the same as sentence-transformers' pipeline: batching and padding do not change a vector
    alone = embedder.encode([texts[0]])[0]
    assert np.allclose(alone, v[0], atol=1e-5)
    # dedup on real embeddings keeps one of each paraphrase pair and both unrelated texts
    assert dedup(v, threshold=0.6).keep.tolist() == [True, False, True, False, True, True]


def test_plan_requests_is_deterministic_and_shows_distinct_members():
    pool = [f"member {i}" for i in range(30)]
    a = plan_requests("run", 0, "profile", 2, pool, requests=4, examples=5, new=20)
    assert a == plan_requests("run", 0, "profile", 2, pool, requests=4, examples=5, new=20)
    assert all(len(set(r.examples)) == 5 and set(r.examples) <= set(pool) for r in a)
    assert len({r.seed for r in a}) == 4 and len({r.examples for r in a}) > 1
    assert [r.seed for r in a] != [r.seed for r in plan_requests("run", 0, "profile", 3, pool, requests=4,
                                                                  examples=5, new=20)]
    assert len(plan_requests("run", 0, "profile", 1, pool[:2], requests=1, examples=5, new=3)[0].examples) == 2


def test_round_dedup_caps_at_target_and_counts_reasons():
    rng = np.random.default_rng(1)
    pool = unit(rng, 3, 8)
    vecs = unit(rng, 5, 8)
    vecs[1] = pool[0]  # duplicate of the pool
    cands = [Candidate(f"t{i}", 0, 7) for i in range(5)] + [Candidate("short", 1, 8, "too_short")]
    emb = np.concatenate([vecs, np.zeros((1, 8), np.float32)])
    outcome = dedup_candidates(cands, emb, pool, threshold=0.9, room=2)
    assert outcome.accepted == [0, 2]
    assert [c.reason for c in cands] == [None, "duplicate", None, "over_target", "over_target", "too_short"]
    stats = round_stats(cands, outcome, [Reply(0, 7, "x"), Reply(1, 8, "y"), Reply(2, 9, None, "error")], new=4)
    assert stats["asked"] == 12 and stats["requests_failed"] == 1 and stats["candidates"] == 6
    assert stats["accepted"] == 2 and stats["acceptance_rate"] == pytest.approx(2 / 6)
    assert json.loads(stats["rejection_reasons"]) == {"duplicate": 1, "over_target": 2, "too_short": 1}
    assert stats["rejected_filter"] == 1 and stats["rejected_duplicate"] == 1
    assert sum(stats["similarity_histogram"]) == 5  # every candidate that reached the dedup


def test_stop_rules():
    kw = dict(target=10, max_rounds=3, min_acceptance_rate=0.1)
    assert stop_reason(pool_size=10, rounds_done=0, last_rate=None, **kw) == "target"
    assert stop_reason(pool_size=5, rounds_done=1, last_rate=0.05, **kw) == "acceptance"
    assert stop_reason(pool_size=5, rounds_done=3, last_rate=0.5, **kw) == "max_rounds"
    assert stop_reason(pool_size=5, rounds_done=1, last_rate=0.5, **kw) is None
    assert stop_reason(pool_size=5, rounds_done=0, last_rate=None, **kw) is None


def test_holdout_drops_near_duplicates_and_pairs_splits():
    rng = np.random.default_rng(3)
    pool = unit(rng, 40, 16)
    pool[7] = pool[3] * 0.99 + unit(rng, 1, 16)[0] * 0.01  # a near-copy of member 3
    pool[7] /= np.linalg.norm(pool[7])
    held = [3, 10]
    split = split_pool(pool, pool[held], benchmark_idx=held, max_sim=0.75)
    assert 7 in split.dropped and not set(held) & set(split.train) and not set(split.train) & set(split.dropped)
    assert sorted(split.train + split.dropped + held) == list(range(40))
    assert max_similarity(pool[split.train], pool[held]).max() <= np.float32(0.75)
    assert split.max_similarity_to_benchmark <= 0.75
    assert draw_holdout(40, 5, 0) == draw_holdout(40, 5, 0) != draw_holdout(40, 5, 1)
    with pytest.raises(ValueError):
        draw_holdout(3, 4, 0)

    profiles = [(f"profile {i}", "seeds") for i in range(6)]
    personalities = [(f"personality {i}", "round-1") for i in range(4)]
    personas = make_personas(profiles[:4], personalities[:3], profiles[4:], personalities[3:], per_profile=2, seed=0)
    train = [p for p in personas if p.split == "train"]
    bench = [p for p in personas if p.split == "benchmark"]
    assert len(train) == 8 and len(bench) == 2 * 1
    assert {p.profile for p in train}.isdisjoint({p.profile for p in bench})
    assert {p.personality for p in train}.isdisjoint({p.personality for p in bench})
    assert all(p.source == "seeds/round-1" for p in personas) and len({p.persona_id for p in personas}) == 10
    again = make_personas(profiles[:4], personalities[:3], profiles[4:], personalities[3:], per_profile=2, seed=0)
    assert [p.persona_id for p in again] == [p.persona_id for p in personas]


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared/aloe_reference not present")
def test_reference_pools_embed_and_benchmark_holdout(embedder):
    profiles = load_reference_jsonl(str(REFERENCE / "profile.jsonl"))
    bench = load_reference_jsonl(str(REFERENCE / "profile_eval.jsonl"))
    assert len(profiles) == 331 and len(bench) == 20
    pv, bv = embedder.encode(profiles), embedder.encode(bench)
    split = split_pool(pv, bv, benchmark_idx=[], max_sim=0.75)
    assert len(split.train) + len(split.dropped) == 331 and split.train
    # every kept training profile is at most 0.75 from every benchmark profile; the dropped ones are not
    assert max_similarity(pv[split.train], bv).max() <= np.float32(0.75)
    if split.dropped:
        assert max_similarity(pv[split.dropped], bv).min() > np.float32(0.75)
