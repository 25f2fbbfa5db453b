"""One round of pool self-generation, minus the engines: plan the requests, turn replies into
filtered candidates, dedup them against the pool, decide whether to go on. Pure: numpy only.

Determinism: a request's examples and sampling seed derive from (run id, seed, kind, round,
request index) and the pool as it stood before the round, so a rerun plans identical requests.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from aloe_ray.personas.dedup import dedup, similarity_histogram
from aloe_ray.personas.filters import CandidateFilter
from aloe_ray.prompts.personas import parse_generated
from aloe_ray.trees.spec import derive_seed


@dataclass(frozen=True)
class GenerationRequest:
    kind: str
    round: int
    index: int
    seed: int
    examples: tuple[str, ...]
    new: int

    def to_row(self) -> dict:
        return {"kind": self.kind, "round": self.round, "index": self.index, "seed": self.seed,
                "examples": list(self.examples), "new": self.new}


def plan_requests(run_id: str, seed: int, kind: str, round_: int, pool: list[str], *, requests: int,
                  examples: int, new: int) -> list[GenerationRequest]:
    """`requests` requests, each with `examples` distinct pool members drawn by its own seeded RNG."""
    out = []
    for i in range(requests):
        rng = random.Random(derive_seed(run_id, seed, kind, round_, i, "examples"))
        shown = tuple(pool[j] for j in sorted(rng.sample(range(len(pool)), min(examples, len(pool)))))
        out.append(GenerationRequest(kind, round_, i, derive_seed(run_id, seed, kind, round_, i, "sampling"), shown, new))
    return out


@dataclass(frozen=True)
class Reply:
    """What came back for one request (text None: the engine call failed)."""

    index: int
    seed: int
    text: str | None
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Candidate:
    text: str
    request_index: int
    seed: int
    reason: str | None = None
    """Why it was rejected (a filter, 'truncated', 'duplicate', 'over_target'), or None if kept."""


def candidates_from_replies(replies: list[Reply], check: CandidateFilter) -> list[Candidate]:
    """Parsed and filtered candidates, in request then item order. The last item of a reply cut
    off by max_tokens is rejected as 'truncated'."""
    out: list[Candidate] = []
    for reply in sorted(replies, key=lambda r: r.index):
        if reply.text is None:
            continue
        items = parse_generated(reply.text).items
        for pos, text in enumerate(items):
            cut = reply.finish_reason == "length" and pos == len(items) - 1
            out.append(Candidate(text, reply.index, reply.seed, "truncated" if cut else check.reason(text)))
    return out


@dataclass
class RoundOutcome:
    accepted: list[int]
    """Indices (into the candidates) of the new members, in order."""
    max_sim: np.ndarray
    """Per candidate: largest similarity to the pool when considered (NaN if filtered out)."""
    stats: dict = field(default_factory=dict)


def dedup_candidates(candidates: list[Candidate], embeddings: np.ndarray, pool: np.ndarray, *,
                     threshold: float, room: int | None) -> RoundOutcome:
    """Dedup the filtered candidates (rows of `embeddings`, aligned with `candidates`) against
    the pool and each other; keep at most `room` (the rest: 'over_target'). Sets `reason` on
    every rejected candidate."""
    passed = [i for i, c in enumerate(candidates) if c.reason is None]
    max_sim = np.full(len(candidates), np.nan, dtype=np.float32)
    accepted: list[int] = []
    if passed:
        result = dedup(embeddings[passed], pool, threshold=threshold)
        max_sim[passed] = result.max_sim
        for i, keep in zip(passed, result.keep):
            if not keep:
                candidates[i].reason = "duplicate"
            elif room is not None and len(accepted) >= room:
                candidates[i].reason = "over_target"
            else:
                accepted.append(i)
    return RoundOutcome(accepted=accepted, max_sim=max_sim)


def round_stats(candidates: list[Candidate], outcome: RoundOutcome, replies: list[Reply], *, new: int) -> dict:
    """The counts of a round's stats row (one kind)."""
    reasons = Counter(c.reason for c in candidates if c.reason is not None)
    filtered = sum(n for r, n in reasons.items() if r not in ("duplicate", "over_target"))
    n = len(candidates)
    sims = outcome.max_sim[~np.isnan(outcome.max_sim)]
    return {
        "requests": len(replies),
        "requests_failed": sum(r.text is None for r in replies),
        "asked": len(replies) * new,
        "candidates": n,
        "rejected_filter": filtered,
        "rejection_reasons": json.dumps(dict(sorted(reasons.items()))),
        "rejected_duplicate": reasons.get("duplicate", 0),
        "accepted": len(outcome.accepted),
        "acceptance_rate": len(outcome.accepted) / n if n else 0.0,
        "similarity_histogram": similarity_histogram(sims),
        "prompt_tokens": sum(r.prompt_tokens for r in replies),
        "completion_tokens": sum(r.completion_tokens for r in replies),
    }


def stop_reason(*, pool_size: int, rounds_done: int, last_rate: float | None, target: int, max_rounds: int,
                min_acceptance_rate: float) -> str | None:
    """Why a kind generates no more rounds, or None to go on. `last_rate` is its latest generation
    round's acceptance rate (None before the first)."""
    if pool_size >= target:
        return "target"
    if last_rate is not None and last_rate < min_acceptance_rate:
        return "acceptance"
    if rounds_done >= max_rounds:
        return "max_rounds"
    return None
