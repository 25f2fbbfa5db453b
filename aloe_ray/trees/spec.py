"""What to grow: one `TreeSpec` per (persona, sample index); ids and seeds derive from it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

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

    def to_row(self) -> dict:
        return {"run_id": self.run_id, "tree_id": self.tree_id, "sample_index": self.sample_index,
                "seed": self.seed, **{f"persona_{k}": v for k, v in self.persona.to_row().items()}}

    @classmethod
    def from_row(cls, row: dict) -> TreeSpec:
        persona = Persona(**{k.removeprefix("persona_"): row[k] for k in row if k.startswith("persona_")})
        return cls(run_id=row["run_id"], tree_id=row["tree_id"], persona=persona,
                   sample_index=int(row["sample_index"]), seed=int(row["seed"]))


def make_tree_specs(run_id: str, personas: Iterable[Persona], *, samples_per_persona: int = 1,
                    seed: int = 0, limit: int | None = None) -> list[TreeSpec]:
    """Specs in persona order, sample-major within a persona; the first `limit` of them."""
    specs = []
    for persona in personas:
        for sample in range(samples_per_persona):
            if limit is not None and len(specs) >= limit:
                return specs
            tree_id = "tree-" + stable_id(run_id, persona.persona_id, sample, seed)
            specs.append(TreeSpec(run_id, tree_id, persona, sample, derive_seed(tree_id, seed)))
    return specs
