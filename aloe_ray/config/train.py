"""Configs of the training jobs (`jobs/train_sft.py`, `jobs/train_dpo.py`)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field, model_validator

from aloe_ray.config.base import RayConfig, StorageConfig, StrictModel
from aloe_ray.config.generate import _new_run_id


class TrainDataConfig(StrictModel):
    """Where the training rows come from: a tree run (its `nodes` table) or an exported table."""

    trees: str | None = None
    """Run root of a tree-generation run (e.g. ./aloe-data/run-1 or s3://bucket/aloe/run-1); its
    `nodes` table is turned into SFT/DPO rows. Several runs: a comma-separated list."""

    table: str | None = None
    """An already exported `sft` or `dpo` table (our schema) instead of `trees`."""

    max_examples: int | None = Field(default=None, ge=1)
    """Use at most this many rows (in id order): for quick runs."""

    @model_validator(mode="after")
    def _one_source(self) -> TrainDataConfig:
        if bool(self.trees) == bool(self.table):
            raise ValueError("set exactly one of data.trees (a tree run root) and data.table (an exported table)")
        return self


class LoraSettings(StrictModel):
    """PEFT LoRA; `enabled: false` is full fine-tuning."""

    enabled: bool = True
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or 'all-linear'."""


class OptimSettings(StrictModel):
    learning_rate: float | None = Field(default=None, gt=0)
    """Default: 1e-4 with LoRA, 1e-5 for full fine-tuning (the reference's value)."""

    num_epochs: float = Field(default=1.0, gt=0)
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the epochs)."""

    per_device_batch_size: int = Field(default=2, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_length: int = Field(default=2048, ge=16)
    """Token limit per example: longer conversations lose their last turns' loss, DPO pairs
    whose prompt fills it are dropped (the job counts both before training starts)."""

    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    logging_steps: int = Field(default=1, ge=1)
    save_steps: int = Field(default=50, ge=1)
    """Checkpoint every this many steps (and at the end); a rerun resumes from the last one."""

    checkpoints_to_keep: int = Field(default=2, ge=1)
    seed: int = 0
    bf16: bool | None = None
    """Default: on with GPUs, off on CPU (bf16 on CPU is many times slower)."""

    gradient_checkpointing: bool = False
    """Trade compute for memory on big models (off: it slows small CPU runs badly)."""


class ScalingSettings(StrictModel):
    """Ray Train workers (data parallel: torch DDP over gloo on CPU, nccl on GPU)."""

    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=1.0, ge=0)
    """Only with use_gpu."""

    max_failures: int = Field(default=2, ge=-1)
    """Worker-group restarts Ray Train makes after a crash, each resuming from the last
    checkpoint (-1: unlimited)."""


class _TrainConfig(StrictModel):
    run_id: str = Field(default_factory=_new_run_id, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    """Run name. Rerun with the same run_id to resume from the last checkpoint."""

    output: str = "./aloe-data"
    """Run root: a local folder, file:// or s3://bucket/prefix. Everything goes to <output>/<run_id>/."""

    data: TrainDataConfig = Field(default_factory=TrainDataConfig.model_construct)
    """Training rows."""

    model: str = "smollm2-135m"
    """Base model: 'smollm2-135m' (bundled), a Hugging Face folder or an s3:// prefix holding one."""

    keep_truncated: bool = False
    """Train on replies cut at max_tokens too (finish_reason 'length'). Off: such a reply carries
    no SFT loss and makes no DPO pair; the manifest counts what was dropped and why."""

    lora: LoraSettings = Field(default_factory=LoraSettings)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    def learning_rate(self) -> float:
        if self.optim.learning_rate is not None:
            return self.optim.learning_rate
        return 1e-4 if self.lora.enabled else 1e-5


REFERENCE_OPTIM = {"learning_rate": 1e-5, "num_epochs": 1, "max_steps": -1, "per_device_batch_size": 2,
                   "gradient_accumulation_steps": 12}
"""The reference's optimisation (lr 1e-5, one epoch, batch 48 via gradient accumulation)."""


class SftLoss(StrEnum):
    chosen = "chosen"
    """Loss on the assistant turns the judge preferred (rejected continuations are context)."""
    continued = "continued"
    """Loss on every assistant turn of the continued path."""


class TrainSFTConfig(_TrainConfig):
    """Supervised fine-tuning on grown trees (TRL SFTTrainer on Ray Train; LoRA or full). Exit code:
    0 when training finished and the model was exported, 1 when it did not (a rerun resumes from
    the last checkpoint), 2 on bad input."""

    EMBEDDED_DEFAULT: ClassVar[dict] = {"optim": {"max_steps": 4, "max_length": 512, "save_steps": 2}}
    """Without a config file: a few steps on the bundled model, minutes on 2 CPU cores."""

    PRESETS: ClassVar[dict[str, dict]] = {"reference": {"lora": {"enabled": False}, "optim": REFERENCE_OPTIM}}
    """`--preset reference`: full fine-tuning, lr 1e-5, one epoch, batch 48 (2 workers x 2 x 12
    accumulation steps); see docs/method.md."""

    loss_on: SftLoss = SftLoss.chosen
    """Which assistant turns of a conversation carry loss."""


class RejectedMode(StrEnum):
    each = "each"
    """One pair per rejected candidate of a turn."""
    one = "one"
    """One pair per turn (the first rejected candidate)."""


class TrainDPOConfig(_TrainConfig):
    """Direct preference optimisation on grown trees (TRL DPOTrainer on Ray Train), from the base
    model or an SFT run's output. Exit code: 0 when training finished and the model was exported,
    1 when it did not (a rerun resumes from the last checkpoint), 2 on bad input."""

    EMBEDDED_DEFAULT: ClassVar[dict] = {"optim": {"max_steps": 4, "max_length": 512, "save_steps": 2}}
    """Without a config file: a few steps on the bundled model, minutes on 2 CPU cores."""

    PRESETS: ClassVar[dict[str, dict]] = {"reference": {
        "from_sft": None, "beta": 0.9, "lora": {"enabled": False}, "optim": REFERENCE_OPTIM}}
    """`--preset reference`: DPO from the base model, beta 0.9, full fine-tuning, lr 1e-5, one
    epoch, batch 48 (2 workers x 2 x 12 accumulation steps); see docs/method.md."""

    from_sft: str | None = None
    """Run root of an SFT run: start from its merged model, <from_sft>/models/sft (instead
    of `model`). Often the same run root as this run's."""

    beta: float = Field(default=0.1, gt=0)
    """DPO temperature (TRL's default; the reference used 0.9 with full fine-tuning)."""

    loss_type: str = "sigmoid"
    """TRL DPO loss ('sigmoid' is the original DPO)."""

    rejected: RejectedMode = RejectedMode.each
    personalized_chosen_only: bool = False
    """Keep only turns where the judge preferred the personalized reply."""

    min_judge_margin: float = Field(default=0.0, ge=0, le=1)
    """Keep only pairs whose judge probability margin (chosen - rejected) is at least this."""
