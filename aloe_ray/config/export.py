"""Config of the dataset export (`jobs/export_dataset.py`)."""

from __future__ import annotations

from pydantic import Field

from aloe_ray.config.base import StorageConfig, StrictModel
from aloe_ray.config.train import RejectedMode, SftLoss


class ExportDatasetConfig(StrictModel):
    """Write a tree run's SFT and DPO rows as Hugging Face `datasets` folders with a dataset card."""

    trees: str = ""
    """Run root of a tree run (e.g. ./aloe-data/run-1 or s3://bucket/aloe/run-1); several:
    comma-separated."""

    output: str | None = None
    """Where the export goes (local folder or s3:// prefix); default: <first trees root>/export/hf."""

    name: str | None = None
    """The dataset's name in its card; default: the run id(s)."""

    license: str = "other"
    """Licence tag of the card. The texts were written by the models named in the card; their terms apply."""

    loss_on: SftLoss = SftLoss.chosen
    """SFT: which assistant turns carry loss (as jobs/train_sft.py)."""

    rejected: RejectedMode = RejectedMode.each
    """DPO: one pair per rejected candidate or per turn (as jobs/train_dpo.py)."""

    personalized_chosen_only: bool = False
    """DPO: keep only turns where the judge preferred the personalized reply."""

    min_judge_margin: float = Field(default=0.0, ge=0, le=1)
    """DPO: keep only pairs whose judge probability margin is at least this."""

    keep_truncated: bool = False
    """Keep replies cut at max_tokens as targets (off: dropped and counted, as in training)."""

    storage: StorageConfig = Field(default_factory=StorageConfig)
    """Object-store settings."""
