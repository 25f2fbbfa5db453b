"""Tree-generation throughput: this pipeline vs the reference implementation's structure.

Grows the same trees (same personas, seeds, bundled model, hf backend) two ways in one run:
  (a) the pipeline: Ray Data, trees grown concurrently against a shared, batching engine deployment;
  (b) the reference structure: one tree after another, one request at a time.
Per-request seeds make both produce the same trees, which the script checks.

    python benchmarks/tree_throughput.py [--trees 8] [--turns 3] [--max-tokens N]
(the job's default token budgets per role unless --max-tokens caps them all)
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time


class OneRequestAtATime:
    """Wraps an engine so requests run strictly one after another, as the reference code does."""

    def __init__(self, engine):
        self.engine, self.model_name = engine, engine.model_name
        self._lock = asyncio.Lock()

    async def chat(self, requests, affinity=None):
        out = []
        for req in requests:
            async with self._lock:
                out.extend(await self.engine.chat([req]))
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", type=int, default=8)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=None)
    args = ap.parse_args()

    from aloe_ray.config import GenerateTreesConfig, load_config
    from aloe_ray.engines.hf import HFEngine
    from aloe_ray.engines.models import resolve_model
    from aloe_ray.personas.loaders import load_personas
    from aloe_ray.pipeline.generate import run_generation
    from aloe_ray.pipeline.grower import bind_roles
    from aloe_ray.pipeline.run_output import RunOutput
    from aloe_ray.trees import TreeShape, grow_tree, make_tree_specs

    out_dir = tempfile.mkdtemp(prefix="aloe-bench-")
    argv = [f"--output={out_dir}", "--run_id=bench", f"--num_trees={args.trees}", f"--tree.max_turns={args.turns}",
            f"--pipeline.trees_per_part={max(1, args.trees // 4)}", "--pipeline.progress_interval_s=30"]
    if args.max_tokens:
        argv += [f"--roles.{r}.sampling.max_tokens={args.max_tokens}" for r in ("simulator", "inducer", "responder")]
    cfg = load_config(GenerateTreesConfig, argv)
    tokens = {r: getattr(cfg.roles, r).sampling.max_tokens for r in ("simulator", "inducer", "responder")}

    # (a) the pipeline
    manifest = run_generation(cfg, log=lambda line: None)
    a_s = manifest["timing"]["grow_s"]
    a_tokens = manifest["counts"]["completion_tokens"]
    a_util = manifest["engines"]["default"][0]["utilisation"]
    a_batch = manifest["engines"]["default"][0]["mean_batch_size"]
    pipeline_nodes = {r["node_id"]: r["text"] for r in RunOutput(out_dir, "bench").read("nodes").to_pylist()}

    # (b) the reference structure, same specs and seeds, same engine settings
    ecfg = cfg.engines["default"]
    engine = HFEngine(resolve_model(ecfg.model), model_name=ecfg.model, max_batch_size=1, prefix_cache_entries=0)
    serial = OneRequestAtATime(engine)
    roles = bind_roles(cfg.roles, {"default": serial})
    specs = make_tree_specs(cfg.run_id, load_personas(cfg.personas), limit=cfg.num_trees, seed=cfg.seed)
    shape = TreeShape(cfg.tree.max_turns, cfg.tree.num_candidates, cfg.tree.policy.value, cfg.tree.max_nodes)

    async def sequential():
        return [await grow_tree(spec, roles, shape) for spec in specs]

    engine.stats.started_at = time.monotonic()
    started = time.monotonic()
    results = asyncio.run(sequential())
    b_s = time.monotonic() - started
    b_tokens = sum(r.tree["completion_tokens"] for r in results)
    b_util = engine.stats.as_dict()["utilisation"]
    same = sum(pipeline_nodes.get(n["node_id"]) == n["text"] for r in results for n in r.nodes)
    total_nodes = sum(len(r.nodes) for r in results)

    print(f"\ntree throughput: {args.trees} trees x {args.turns} turns, max tokens per reply {tokens}, "
          f"bundled SmolLM2-135M, hf backend, {manifest['packages']['torch']}")
    print(f"{'':28}{'trees/min':>10}{'gen tok/s':>11}{'wall s':>9}{'engine util':>13}{'mean batch':>12}")
    print(f"{'(a) aloe-ray pipeline':28}{args.trees / a_s * 60:>10.2f}{a_tokens / a_s:>11.1f}{a_s:>9.1f}"
          f"{a_util:>13.2f}{a_batch:>12.1f}")
    print(f"{'(b) reference structure':28}{len(results) / b_s * 60:>10.2f}{b_tokens / b_s:>11.1f}{b_s:>9.1f}"
          f"{b_util:>13.2f}{1.0:>12.1f}")
    print(f"ratio (a)/(b): {(args.trees / a_s) / (len(results) / b_s):.2f}x trees/min, "
          f"{(a_tokens / a_s) / (b_tokens / b_s):.2f}x tokens/s")
    print(f"identical node texts in (a) and (b): {same}/{total_nodes}")


if __name__ == "__main__":
    main()
