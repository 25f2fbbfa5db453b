"""Grow persona-conditioned multi-turn preference trees into Parquet.

Run it (same code three ways):
    python jobs/generate_trees.py                                  # local Ray, bundled model, ./aloe-data
    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . \\
        -- python jobs/generate_trees.py --config my.yaml          # a running cluster
    (KubeRay RayJob entrypoint: python jobs/generate_trees.py --config ...)
Options: --help lists every config key; --key.sub=value overrides one.
Exit code: 0 when every requested tree is ok (or at most --max_failed_share of them is not), 1 when
more failed, 2 on bad input or an engine that does not answer (before any tree grows).
"""

from __future__ import annotations

import sys


def parse_config(argv: list[str] | None = None):
    """The job's resolved config (defaults, --config file, flags); nothing heavy runs."""
    from aloe_ray.config import GenerateTreesConfig, load_config

    return load_config(GenerateTreesConfig, argv, prog="python jobs/generate_trees.py")


def main(argv: list[str] | None = None) -> int:
    from aloe_ray.config import ConfigError
    from aloe_ray.engines.models import ModelNotFoundError
    from aloe_ray.engines.probe import EngineUnavailable
    from aloe_ray.personas.loaders import PersonaFileError
    from aloe_ray.pipeline.lease import LeaseError, RunBusy
    from aloe_ray.pipeline.outcome import Outcome
    from aloe_ray.storage import StorageError

    try:
        cfg = parse_config(argv)
        args = sys.argv[1:] if argv is None else argv
        if not any(a == "--config" or a.startswith("--config=") for a in args):
            print(f"[aloe-ray] no --config: the embedded default, {cfg.num_trees} trees of up to "
                  f"{cfg.tree.max_turns} turns on the bundled model (the method's turn cap is 10: "
                  "--tree.max_turns=10); --help lists every key")
        from aloe_ray.pipeline.generate import run_generation

        manifest = run_generation(cfg)
    except (ConfigError, PersonaFileError, StorageError, ModelNotFoundError, RunBusy, LeaseError,
            EngineUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = manifest["counts"]
    outcome = Outcome("tree", counts["trees_requested"], counts["trees_ok"], cfg.max_failed_share)
    print(outcome.line())
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
