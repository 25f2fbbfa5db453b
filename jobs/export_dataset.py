"""Export a tree run's SFT and DPO rows as Hugging Face `datasets` folders with a dataset card.

Run it:
    python jobs/export_dataset.py --trees=./aloe-data/<tree run>               # -> <run>/export/hf
    python jobs/export_dataset.py --trees=s3://bucket/aloe/run-1 --output=s3://bucket/exports/run-1
    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . \\
        -- python jobs/export_dataset.py --config my.yaml                      # a running cluster
Options: --help lists every config key; --key.sub=value overrides one. The filters are the
training jobs' (truncated replies dropped unless --keep_truncated=true).
"""

from __future__ import annotations

import sys


def parse_config(argv: list[str] | None = None):
    """The job's resolved config (defaults, --config file, flags); nothing heavy runs."""
    from aloe_ray.config import load_config
    from aloe_ray.config.export import ExportDatasetConfig

    return load_config(ExportDatasetConfig, argv, prog="python jobs/export_dataset.py")


def main(argv: list[str] | None = None) -> int:
    from aloe_ray.config import ConfigError
    from aloe_ray.storage import StorageError
    from aloe_ray.train.datasets import TreeDataError

    try:
        cfg = parse_config(argv)
        from aloe_ray.pipeline.export import export_dataset

        export_dataset(cfg)
    except (ConfigError, TreeDataError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
