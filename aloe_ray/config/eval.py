"""Config of the ALOE benchmark job (`jobs/eval_aloe.py`)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from enum import StrEnum
from typing import ClassVar

from pydantic import Field, model_validator

from aloe_ray.config.base import RayConfig, StorageConfig, StrictModel
from aloe_ray.config.engines import EngineConfig, RoleConfig, SamplingConfig


class EvalPersonasConfig(StrictModel):
    """Benchmark personas. Nothing set: the built-in seeds' held-out benchmark split."""

    table: str | None = None
    """A personas Parquet table in our schema (e.g. <output>/<run_id>/personas from the persona
    job); only rows of `split` are used."""

    split: str = "benchmark"
    """With `table`: the split to evaluate on (the held-out one)."""

    profiles: str | None = None
    """Profiles file in the reference JSONL format (e.g. ../shared/aloe_reference/profile_eval.jsonl)."""

    personalities: str | None = None
    """Personalities file in the reference JSONL format; needed with `profiles`."""

    first_personalities: int | None = Field(default=5, ge=1)
    """JSONL files: every profile x the first this-many personalities (the reference benchmark:
    20 x first 5 = 100); null: x all of them."""

    selection_seed: int = 0
    """Seed of the shuffle that picks `num_personas` of the candidates (a larger count keeps the
    smaller count's personas, so a rerun with more personas resumes)."""

    @model_validator(mode="after")
    def _one_source(self) -> EvalPersonasConfig:
        if self.table and (self.profiles or self.personalities):
            raise ValueError("set either personas.table or personas.profiles/personalities, not both")
        if bool(self.profiles) != bool(self.personalities):
            raise ValueError("personas.profiles and personas.personalities go together")
        return self


class Scoring(StrEnum):
    expected = "expected"
    """G-Eval: the probability-weighted mean over the answers 1..5 (constrained choice); where the
    backend gives no probabilities, the chosen answer itself."""
    sampled = "sampled"
    """A free-text reply, parsed ('4', 'Score: 4/5', '**4**'); retried when it does not parse."""


class JudgeConfig(StrictModel):
    history: bool = True
    """The judge sees the conversation so far; false reproduces the reference, which shows the
    judge only the user's current message and the reply."""

    scoring: Scoring = Scoring.expected
    """How a score is read from the judge: expected (G-Eval) or sampled (parsed text)."""


def _sampling(temperature: float, max_tokens: int) -> SamplingConfig:
    return SamplingConfig(temperature=temperature, max_tokens=max_tokens)


class EvalRolesConfig(StrictModel):
    """The three model roles of the benchmark; each names its engine."""

    simulator: RoleConfig = Field(default_factory=lambda: RoleConfig(sampling=_sampling(0.9, 96)))
    """The user simulator: role-plays the persona, opens and continues the conversation."""

    model: RoleConfig = Field(default_factory=lambda: RoleConfig(sampling=_sampling(0.7, 192)))
    """The model under test: sees only the conversation, never the persona. Point its engine at
    an endpoint (backend openai + base_url) to test a served model. max_tokens leaves room for a
    ~3-sentence reply; the report gives the share of replies cut at it (finish_reason 'length')."""

    judge: RoleConfig = Field(default_factory=lambda: RoleConfig(sampling=_sampling(0.0, 32)))
    """The judge: scores each reply 1-5, seeing the full persona; `max_attempts` bounds the retries
    of a score that does not parse (then it is recorded as missing, with the raw reply). max_tokens
    bounds a sampled (free-text) score, room for 'Sure! I'd rate this reply a 4 out of 5'; expected
    scoring answers with one constrained token whatever it is."""


class EvalPipelineConfig(StrictModel):
    rollouts_per_part: int = Field(default=8, ge=1)
    """Personas rolled out together and written as one Parquet part (per table)."""

    runner_actors: int = Field(default=1, ge=1)
    """Ray Data actors running rollouts (light: async, they wait on the engines)."""

    parts_in_flight_per_actor: int = Field(default=16, ge=1)
    """Parts one runner actor works on at once; rollouts in flight = actors x this x rollouts_per_part."""

    runner_num_cpus: float = Field(default=0.1, ge=0)
    """CPUs Ray reserves per runner actor."""

    retry_failed: bool = True
    """On a rerun, roll out again the personas whose rollout failed before."""

    progress_interval_s: float = Field(default=10.0, gt=0)
    """Seconds between progress lines."""


class ReportConfig(StrictModel):
    bootstrap_samples: int = Field(default=1000, ge=10)
    """Resamples of the personas for the confidence intervals."""

    ci_level: float = Field(default=0.95, gt=0, lt=1)
    """Confidence level of the intervals."""

    seed: int = 0
    """Seed of the bootstrap."""


def _new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("run-%Y%m%d-%H%M%S")


def eval_name_for(model: str) -> str:
    """A folder-safe name for a model spec: 's3://m/Llama-3.1-8B/' -> 'Llama-3.1-8B'."""
    last = model.rstrip("/").rsplit("/", 1)[-1] or "model"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-.") or "model"
    return name[:128]


class EvalConfig(StrictModel):
    """ALOE benchmark: 100 held-out personas x 10 turns (without --config: 4 personas, a few minutes on a laptop)."""

    EMBEDDED_DEFAULT: ClassVar[dict] = {"num_personas": 4, "roles": {"model": {"sampling": {"max_tokens": 72}},
                                                                     "simulator": {"sampling": {"max_tokens": 48}}}}
    """Without a config file: 4 personas and short replies from the bundled model, a few minutes on
    2 CPU cores. The field defaults (100 personas, 192-token replies) are the method's and apply to
    every config file."""

    PRESETS: ClassVar[dict[str, dict]] = {"reference": {
        "num_personas": 100, "turns": 10, "judge": {"history": False, "scoring": "sampled"},
    }}
    """`--preset reference`: the reference benchmark (100 personas x 10 turns; the judge sees only
    the current message and writes an integer score); see docs/method.md."""

    # The simulator talks to the model under test for `turns` turns per persona, the judge scores
    # every reply 1-5; AL(k), IR, N-AL, N-IR with bootstrap intervals are reported.

    run_id: str = Field(default_factory=_new_run_id, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    """Run the evaluation belongs to; output goes to <output>/<run_id>/eval/<name>/. Rerun with
    the same run_id and name to resume (finished personas are skipped)."""

    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    """Name of this evaluation inside the run (e.g. base, sft, dpo); default: the model under
    test's model name."""

    output: str = "./aloe-data"
    """Run root: a local folder, file:// or s3://bucket/prefix."""

    num_personas: int | None = Field(default=100, ge=1)
    """Personas to evaluate, a seeded selection of the source (the ALOE benchmark: 100); a source
    with fewer is an error; null: all the source has."""

    turns: int = Field(default=10, ge=1, le=50)
    """Turns per conversation (one user message and one judged reply each)."""

    seed: int = 0
    """Mixed into every rollout id and sampling seed."""

    max_failed_share: float = Field(default=0.0, ge=0, le=1)
    """Exit code: 0 only when every selected persona's rollout is ok, or when at most this share of
    them is not (failed, or never rolled out); else 1 (2: bad input or an engine that does not
    answer, before any rollout runs)."""

    personas: EvalPersonasConfig = Field(default_factory=EvalPersonasConfig)
    """Persona source."""

    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    """What the judge sees and how its score is read."""

    roles: EvalRolesConfig = Field(default_factory=EvalRolesConfig)
    """Model roles."""

    engines: dict[str, EngineConfig] = Field(default_factory=lambda: {"default": EngineConfig()})
    """Engine pools by name; roles refer to them. Roles sharing a pool share its loaded weights."""

    pipeline: EvalPipelineConfig = Field(default_factory=EvalPipelineConfig)
    """Parallelism and output layout."""

    report: ReportConfig = Field(default_factory=ReportConfig)
    """Confidence intervals."""

    storage: StorageConfig = Field(default_factory=StorageConfig)
    """Object-store settings."""

    ray: RayConfig = Field(default_factory=RayConfig)
    """Where Ray runs."""

    @property
    def eval_name(self) -> str:
        return self.name or eval_name_for(self.engines[self.roles.model.engine].model)

    def used_engines(self) -> dict[str, EngineConfig]:
        """The engines some role refers to (only these are started)."""
        names = {getattr(self.roles, role).engine for role in EvalRolesConfig.model_fields}
        return {name: cfg for name, cfg in self.engines.items() if name in names}

    @model_validator(mode="after")
    def _roles_name_engines(self) -> EvalConfig:
        for role in EvalRolesConfig.model_fields:
            name = getattr(self.roles, role).engine
            if name not in self.engines:
                raise ValueError(
                    f"roles.{role}.engine is '{name}', but engines has only {sorted(self.engines)}"
                )
        return self
