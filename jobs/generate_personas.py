"""Build the persona pool: seed profiles and personalities, rounds of self-generation on the engine
pool with sentence-embedding dedup, then training personas (profile x personality pairs) and a
held-out benchmark split.

Run it (same code three ways):
    python jobs/generate_personas.py                               # local Ray, bundled model, ./aloe-data
    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . \\
        -- python jobs/generate_personas.py --config my.yaml       # a running cluster
    (KubeRay RayJob entrypoint: python jobs/generate_personas.py --config /configs/generate_personas.yaml)
Options: --help lists every config key; --key.sub=value overrides one. Rerunning a run_id resumes
after its last committed round; a rerun whose settings differ from what those rounds were built
with (seeds, embedding, threshold, filters, k/m) is refused with exit 2.
Exit code: 0 when every generation request of the pool's rounds got a reply (or at most
--max_failed_share of them failed), 1 when more failed, 2 on bad input or an engine that does not
answer (before any round runs).
"""

from __future__ import annotations

import sys


def parse_config(argv: list[str] | None = None):
    """The job's resolved config (defaults, --config file, flags); nothing heavy runs."""
    from aloe_ray.config import GeneratePersonasConfig, load_config

    return load_config(GeneratePersonasConfig, argv, prog="python jobs/generate_personas.py")


def main(argv: list[str] | None = None) -> int:
    from aloe_ray.config import ConfigError
    from aloe_ray.engines.models import ModelNotFoundError
    from aloe_ray.engines.probe import EngineUnavailable
    from aloe_ray.personas.embed import EmbedderNotFoundError
    from aloe_ray.personas.loaders import PersonaFileError
    from aloe_ray.pipeline.outcome import Outcome
    from aloe_ray.storage import StorageError

    try:
        cfg = parse_config(argv)
        from aloe_ray.pipeline.personas import run_persona_pool

        manifest = run_persona_pool(cfg)
    except (ConfigError, PersonaFileError, StorageError, ModelNotFoundError, EmbedderNotFoundError,
            EngineUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = manifest["counts"]
    outcome = Outcome("generation request", counts["requests"], counts["requests"] - counts["requests_failed"],
                      cfg.max_failed_share)
    print(outcome.line())
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
