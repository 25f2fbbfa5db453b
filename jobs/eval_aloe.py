"""The ALOE benchmark: how well a model aligns with a user over a conversation.

The user simulator (role-playing a held-out persona) talks to the model under test for `turns`
turns; after each reply a judge, who sees the full persona, scores it 1-5. Reports AL(k), IR, R^2,
N-AL, N-IR, N-R^2 with bootstrap intervals over personas into <output>/<run_id>/eval/<name>/.

Run it (same code three ways):
    python jobs/eval_aloe.py                                       # no config: local Ray, bundled model, 4 personas x 10 turns
    python jobs/eval_aloe.py --num_personas=100                    # the benchmark's 100 personas (a --config file's default)
    python jobs/eval_aloe.py --engines.api.backend=openai --engines.api.model=aloe-dpo \\
        --engines.api.base_url=http://127.0.0.1:8000/v1 --roles.model.engine=api   # test an endpoint
    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . \\
        -- python jobs/eval_aloe.py --config my.yaml               # a running cluster
    (KubeRay RayJob entrypoint: python jobs/eval_aloe.py --config /configs/eval_aloe.yaml)
Compare evaluations (eval folders, run folders or report.json files; local or s3://):
    python jobs/eval_aloe.py compare aloe-data/r1/eval/base aloe-data/r1/eval/dpo --output aloe-data/r1/compare
Options: --help lists every config key; --key.sub=value overrides one.
Exit code: 0 when every selected persona's rollout is ok (or at most --max_failed_share of them is
not), 1 when more failed, 2 on bad input or an engine that does not answer (before any rollout).
"""

from __future__ import annotations

import sys

PROG = "python jobs/eval_aloe.py"
COMPARE_USAGE = (f"usage: {PROG} compare RUN_OR_REPORT [RUN_OR_REPORT ...] --output DIR [--labels a,b,...] "
                 "[--storage.s3_endpoint_url=URL]\n\nPuts several evaluations side by side: one Markdown table "
                 "(DIR/compare.md, also printed), DIR/compare.json and one plot of every AL(k) curve "
                 "(DIR/al_curves.png). An argument is a report.json, an eval folder (<run>/eval/<name>) or a "
                 "run folder (every evaluation in it).")


def parse_config(argv: list[str] | None = None):
    """The job's resolved config (defaults, --config file, flags); nothing heavy runs."""
    from aloe_ray.config import EvalConfig, load_config

    return load_config(EvalConfig, argv, prog=PROG)


def parse_compare(argv: list[str]) -> tuple[list[str], str, list[str] | None, str | None]:
    """(paths, output, labels, s3 endpoint) of `compare ...`."""
    from aloe_ray.config import ConfigError

    if "-h" in argv or "--help" in argv:
        print(COMPARE_USAGE)
        raise SystemExit(0)
    paths: list[str] = []
    opts: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"--{key} needs a value")
                value, i = argv[i + 1], i + 1
            if key not in ("output", "labels", "storage.s3_endpoint_url"):
                raise ConfigError(f"unknown compare option --{key}: allowed --output, --labels, --storage.s3_endpoint_url")
            opts[key] = value
        else:
            paths.append(arg)
        i += 1
    if not paths:
        raise ConfigError("compare needs at least one eval folder, run folder or report.json")
    if "output" not in opts:
        raise ConfigError("compare needs --output DIR (local folder or s3://bucket/prefix)")
    labels = [s.strip() for s in opts["labels"].split(",")] if "labels" in opts else None
    return paths, opts["output"], labels, opts.get("storage.s3_endpoint_url")


def main(argv: list[str] | None = None) -> int:
    from aloe_ray.config import ConfigError
    from aloe_ray.engines.models import ModelNotFoundError
    from aloe_ray.engines.probe import EngineUnavailable
    from aloe_ray.personas.loaders import PersonaFileError
    from aloe_ray.pipeline.outcome import Outcome
    from aloe_ray.storage import StorageError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["compare"]:
            from aloe_ray.pipeline.eval import compare_reports
            from aloe_ray.storage import S3Options

            paths, output, labels, endpoint = parse_compare(argv[1:])
            compare_reports(paths, output, labels=labels, s3=S3Options(endpoint_url=endpoint))
            return 0
        cfg = parse_config(argv)
        from aloe_ray.pipeline.eval import run_eval

        report = run_eval(cfg)
    except (ConfigError, PersonaFileError, StorageError, ModelNotFoundError, FileNotFoundError,
            EngineUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    outcome = Outcome("rollout", report["personas_selected"], report["personas"], cfg.max_failed_share)
    print(outcome.line())
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
