"""What to grow: one `TreeSpec` per (persona, sample index); ids and seeds derive from it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from aloe_ray.personas.model import Persona


def stable_id(*parts: object) -> str:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).hexdigest()


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on its parts."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True)
class TreeShape:
    max_turns: int = 10
    num_candidates: int = 2
    policy: str = "random"  # chosen | random | all
    max_nodes: int = 64


@dataclass(frozen=True)
class TreeSpec:
    run_id: str
    tree_id: str
    persona: Persona
    sample_index: int
    seed: int


def tree_id_for(run_id: str, persona_id: str, sample: int, seed: int) -> str:
    return "tree-" + stable_id(run_id, persona_id, sample, seed)


def tree_hashes(tree_ids: Iterable[str]) -> np.ndarray:
    """The 64 bits behind each tree id ('tree-' + 16 hex digits), as uint64: 8 bytes a tree where
    a set of id strings costs ~100. An id of another form (a test's, a hand-made table's) is
    hashed the way `stable_id` hashes."""
    ids = list(tree_ids)
    try:
        if all(len(t) == 21 and t.startswith("tree-") for t in ids):
            return np.frombuffer(bytes.fromhex("".join(t[5:] for t in ids)), dtype=">u8").astype(np.uint64)
    except ValueError:
        pass
    return np.array([int(t[5:], 16) if len(t) == 21 and t.startswith("tree-") and _is_hex(t[5:])
                     else int(stable_id(t), 16) for t in ids], dtype=np.uint64)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


PLAN_CHUNK = 65536
"""Plan positions hashed at a time when matching a plan against what is done."""


@dataclass(frozen=True)
class TreePlan:
    """Every tree of a run by position: persona-major, sample-minor within a persona, the first
    `limit`. A position is all a worker needs to rebuild its spec, so the driver never holds the
    specs of a large run (only the personas, once)."""

    run_id: str
    personas: tuple[Persona, ...]
    samples_per_persona: int = 1
    seed: int = 0
    limit: int | None = None

    def __len__(self) -> int:
        count = len(self.personas) * self.samples_per_persona
        return count if self.limit is None else min(count, self.limit)

    def tree_id(self, index: int) -> str:
        persona, sample = divmod(index, self.samples_per_persona)
        return tree_id_for(self.run_id, self.personas[persona].persona_id, sample, self.seed)

    def spec(self, index: int) -> TreeSpec:
        if not 0 <= index < len(self):
            raise IndexError(f"tree {index} of a plan of {len(self)}")
        persona, sample = divmod(index, self.samples_per_persona)
        tree_id = self.tree_id(index)
        return TreeSpec(self.run_id, tree_id, self.personas[persona], sample, derive_seed(tree_id, self.seed))

    def done_mask(self, done: np.ndarray) -> np.ndarray:
        """One bool per position: whether its tree's hash (`tree_hashes`) is in `done`. Positions
        are hashed a chunk at a time, so the driver holds a bit per tree, never the ids."""
        done = np.asarray(done, dtype=np.uint64)
        if done.size > 1 and not (done[1:] >= done[:-1]).all():
            done = np.sort(done)
        mask = np.zeros(len(self), dtype=bool)
        if not done.size:
            return mask
        for start in range(0, len(self), PLAN_CHUNK):
            stop = min(start + PLAN_CHUNK, len(self))
            ids = np.fromiter((self._hash(i) for i in range(start, stop)), dtype=np.uint64, count=stop - start)
            at = np.minimum(np.searchsorted(done, ids), done.size - 1)
            mask[start:stop] = done[at] == ids
        return mask

    def _hash(self, index: int) -> int:
        persona, sample = divmod(index, self.samples_per_persona)
        digest = hashlib.blake2b("\x1f".join(map(str, (self.run_id, self.personas[persona].persona_id, sample,
                                                      self.seed))).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")


def make_tree_specs(run_id: str, personas: Iterable[Persona], *, samples_per_persona: int = 1,
                    seed: int = 0, limit: int | None = None) -> list[TreeSpec]:
    """Specs in persona order, sample-major within a persona; the first `limit` of them."""
    plan = TreePlan(run_id, tuple(personas), samples_per_persona, seed, limit)
    return [plan.spec(i) for i in range(len(plan))]
