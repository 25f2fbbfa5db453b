"""Direct preference optimisation on grown trees: TRL's DPOTrainer (LoRA or full) on Ray Train,
from the base model or an SFT run's output (--from_sft=<sft run root>).

Run it (same code three ways):
    python jobs/train_dpo.py --data.trees=./aloe-data/<tree run>          # local Ray, bundled model
    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . \\
        -- python jobs/train_dpo.py --config my.yaml                       # a running cluster
    (KubeRay RayJob entrypoint: python jobs/train_dpo.py --config ...)
Options: --help lists every config key; --key.sub=value overrides one.
"""

from __future__ import annotations

import sys


def parse_config(argv: list[str] | None = None):
    """The job's resolved config (defaults, --config file, flags); nothing heavy runs."""
    from aloe_ray.config import load_config
    from aloe_ray.config.train import TrainDPOConfig

    return load_config(TrainDPOConfig, argv, prog="python jobs/train_dpo.py")


def main(argv: list[str] | None = None) -> int:
    from aloe_ray.pipeline.train import run_job

    return run_job("dpo", parse_config, argv)


if __name__ == "__main__":
    sys.exit(main())
