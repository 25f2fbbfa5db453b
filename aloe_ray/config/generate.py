"""Config of the tree-generation job (`jobs/generate_trees.py`)."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import ClassVar

from pydantic import Field, model_validator

from aloe_ray.config.base import RayConfig, StorageConfig, StrictModel
from aloe_ray.config.engines import EngineConfig, RoleConfig, SamplingConfig


class ContinuationPolicy(StrEnum):
    chosen = "chosen"
    """Continue along the judge's preferred candidate."""
    random = "random"
    """Continue along a seeded random candidate (what the reference implementation does)."""
    all = "all"
    """Continue along every candidate, breadth first, until `max_nodes` is reached."""


class PersonaSourceConfig(StrictModel):
    """Where personas come from. Nothing set: the built-in seeds, paired profile x personality."""

    table: str | None = None
    """A personas Parquet table (file or folder; local, file:// or s3://) in our schema."""

    split: str | None = None
    """Only personas of this split of `table` (e.g. 'train'); default: all rows."""

    profiles: str | None = None
    """Profiles file in the reference JSONL format (one JSON string per line)."""

    personalities: str | None = None
    """Personalities file in the reference JSONL format; needed with `profiles`."""

    personalities_per_profile: int = Field(default=10, ge=1)
    """Pairing rule for JSONL files and the seeds: each profile x this many personalities."""

    pairing_seed: int = 0
    """Seed of the profile x personality pairing."""

    @model_validator(mode="after")
    def _one_source(self) -> PersonaSourceConfig:
        if self.table and (self.profiles or self.personalities):
            raise ValueError("set either personas.table or personas.profiles/personalities, not both")
        if bool(self.profiles) != bool(self.personalities):
            raise ValueError("personas.profiles and personas.personalities go together")
        return self


class TreeConfig(StrictModel):
    max_turns: int = Field(default=10, ge=1, le=50)
    """Turn cap of every conversation."""

    num_candidates: int = Field(default=2, ge=2, le=8)
    """Assistant candidates per turn; even indices are personalized (induced persona as hint),
    odd ones plain."""

    policy: ContinuationPolicy = ContinuationPolicy.random
    """Which candidates the conversation continues along: chosen, random or all."""

    max_nodes: int = Field(default=64, ge=3)
    """Node budget per tree; only limits the 'all' policy."""


def _sampling(temperature: float, max_tokens: int) -> SamplingConfig:
    return SamplingConfig(temperature=temperature, max_tokens=max_tokens)


class RolesConfig(StrictModel):
    """The four model roles of tree growth; each names its engine."""

    simulator: RoleConfig = Field(default_factory=lambda: RoleConfig(sampling=_sampling(0.9, 96)))
    """The user simulator: role-plays the persona and writes the user's messages (one to three
    sentences; 96 tokens leave room to spare)."""

    inducer: RoleConfig = Field(default_factory=lambda: RoleConfig(sampling=_sampling(0.3, 160)))
    """The persona inducer: extracts what the conversation has revealed about the user (two
    labelled lines that grow with the turns)."""

    responder: RoleConfig = Field(default_factory=lambda: RoleConfig(sampling=_sampling(0.7, 160)))
    """The responders: write the candidate assistant replies (about three sentences, ~60-90 tokens;
    160 leave room to spare: a reply cut at max_tokens is never a training target)."""

    judge: RoleConfig = Field(default_factory=lambda: RoleConfig(sampling=_sampling(0.0, 8)))
    """The judge: picks the candidate the user would prefer (constrained to the candidate letters)."""


class PipelineConfig(StrictModel):
    trees_per_part: int = Field(default=4, ge=1)
    """Consecutive trees of a batch committed together as one Parquet part (per table), as soon
    as all of them are grown: a killed run loses at most the parts in flight."""

    trees_per_file: int = Field(default=2000, ge=1)
    """After the run, parts of at most half of this are compacted into files of up to this many
    trees (nodes: their nodes), so the file count follows the data's size, not the commits."""

    grower_actors: int | None = Field(default=None, ge=1)
    """Ray Data actors that grow trees (async: they wait on the engines, but each costs ~2.5 ms of
    CPU per LLM call in its HTTP client and bookkeeping). Default: sized to the cluster, one per
    CPU left over after the engine replicas' reservations (at least 1, at most one per batch)."""

    trees_in_flight: int | None = Field(default=None, ge=1)
    """Trees growing at once over all growers (each grower holds its share). Default: what the
    engines the roles use can serve at once (hf: replicas x max_batch_size; vllm: replicas x
    max_concurrency; openai: max_concurrency), summed, at least one per grower."""

    grower_num_cpus: float = Field(default=0.1, ge=0)
    """CPUs Ray reserves per grower actor."""

    retry_failed: bool = True
    """On a rerun of a run_id, grow again the trees that failed before."""

    progress_interval_s: float = Field(default=10.0, gt=0)
    """Seconds between progress lines."""

    batch_retries: int = Field(default=2, ge=0)
    """Times a batch is tried again when its grower actor dies under it (out of memory, a crash;
    Ray restarts the actor). A batch that still kills it fails its trees with the reason, and the
    run goes on without it: a rerun grows them again."""

    lease_ttl_s: float = Field(default=60.0, gt=0)
    """The driver renews the run's lease (jobs/generate_trees/lease.json) every third of this; a
    second driver on the run_id is refused while it is live. A dead driver's lease is taken over
    at once on its own host, else after this many seconds without renewal."""


def _new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("run-%Y%m%d-%H%M%S")


class GenerateTreesConfig(StrictModel):
    """Grow persona-conditioned multi-turn preference trees into Parquet."""

    EMBEDDED_DEFAULT: ClassVar[dict] = {
        "num_trees": 8, "tree": {"max_turns": 3},
        "roles": {"simulator": {"sampling": {"max_tokens": 48}}, "inducer": {"sampling": {"max_tokens": 64}},
                  "responder": {"sampling": {"max_tokens": 72}}},
    }
    """Without a config file: a handful of short trees with short replies, a few minutes on 2 CPU
    cores (the quality report then says how many replies were cut). The field defaults (10 turns,
    replies with room to spare) are the method's and apply to every config file."""

    PRESETS: ClassVar[dict[str, dict]] = {"reference": {
        "tree": {"num_candidates": 2, "policy": "random", "max_turns": 10},
        "roles": {role: {"sampling": {"max_tokens": 300}} for role in ("simulator", "inducer", "responder")},
    }}
    """`--preset reference`: the reference implementation's trees (2 candidates, random
    continuation, 10 turns, 300-token replies); see docs/method.md."""

    run_id: str = Field(default_factory=_new_run_id, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    """Run name; ids and seeds derive from it. Rerun with the same run_id to resume."""

    output: str = "./aloe-data"
    """Run root: a local folder, file:// or s3://bucket/prefix. Tables go to <output>/<run_id>/."""

    num_trees: int | None = Field(default=4, ge=1)
    """Trees to grow (the first personas x samples); null: every persona x samples_per_persona."""

    samples_per_persona: int = Field(default=1, ge=1)
    """Trees per persona (different seeds)."""

    seed: int = 0
    """Mixed into every tree id and sampling seed."""

    max_failed_share: float = Field(default=0.0, ge=0, le=1)
    """Exit code: 0 only when every requested tree is ok, or when at most this share of them is not
    (failed, or never grown); else 1 (2: bad input or an engine that does not answer, before any tree
    grows). 0: any failed tree fails the job; 1: failed trees never do."""

    personas: PersonaSourceConfig = Field(default_factory=PersonaSourceConfig)
    """Persona source."""

    tree: TreeConfig = Field(default_factory=TreeConfig)
    """Shape of each tree."""

    roles: RolesConfig = Field(default_factory=RolesConfig)
    """Model roles."""

    engines: dict[str, EngineConfig] = Field(default_factory=lambda: {"default": EngineConfig()})
    """Engine pools by name; roles refer to them. Roles sharing a pool share its loaded weights."""

    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    """Parallelism and output layout."""

    storage: StorageConfig = Field(default_factory=StorageConfig)
    """Object-store settings."""

    ray: RayConfig = Field(default_factory=RayConfig)
    """Where Ray runs."""

    def used_engines(self) -> dict[str, EngineConfig]:
        """The engines some role refers to (only these are started)."""
        names = {getattr(self.roles, role).engine for role in RolesConfig.model_fields}
        return {name: cfg for name, cfg in self.engines.items() if name in names}

    @model_validator(mode="after")
    def _roles_name_engines(self) -> GenerateTreesConfig:
        for role in RolesConfig.model_fields:
            name = getattr(self.roles, role).engine
            if name not in self.engines:
                raise ValueError(
                    f"roles.{role}.engine is '{name}', but engines has only {sorted(self.engines)}"
                )
        return self
