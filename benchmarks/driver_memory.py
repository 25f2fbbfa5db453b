"""The tree job driver's memory against the size of its run, without growing the run.

    python benchmarks/driver_memory.py                         # 10,000 and 1,000,000 trees
    python benchmarks/driver_memory.py --sizes 10000 100000

For each size N it makes a run root the way a long run leaves it: the real `jobs/generate_trees.py`
grows the first 8 trees against a loopback endpoint that answers at once
(`benchmarks/loopback_endpoint.py`, a benchmark fixture), then N - 8 more committed trees are
synthesised from those 8 (their rows copied, with the plan's tree ids and unique node ids) as
compacted parts of 2,000 trees, as the job's compaction writes them. Then it measures, on the
real job:
  resume   the job asked for N + 8 trees: recovery over N trees, 8 grown, compaction, the manifest
           and the quality report over every node (what a resumed or extended run costs the driver);
  rerun    the finished run asked again (nothing to grow).
It prints the driver process's peak RSS and wall time of each, side by side for every size, and
the ratio of each size's peak to the smallest size's. The synthesised trees never met an
engine: what is measured is the driver's bookkeeping (recovery, plan, Dataset of positions,
manifest, quality), not growing.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import free_port, run_job, seed_personas  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GROWN = 8
PART = 2000


def job_config(path: Path, base_url: str, samples_per_persona: int) -> None:
    api = {"backend": "openai", "model": "loopback", "base_url": base_url, "timeout_s": 60}
    path.write_text(yaml.safe_dump({
        "samples_per_persona": samples_per_persona, "tree": {"max_turns": 3}, "engines": {"api": api},
        "roles": {r: {"engine": "api"} for r in ("simulator", "inducer", "responder", "judge")},
        "pipeline": {"progress_interval_s": 30},
    }))


def synthesise(root: Path, run_id: str, total: int, samples_per_persona: int) -> None:
    """Committed parts for plan positions GROWN .. total-1, copied from the grown trees."""
    from aloe_ray.config import PersonaSourceConfig
    from aloe_ray.personas.loaders import load_personas
    from aloe_ray.schema import NODES, TREES
    from aloe_ray.trees.spec import TreePlan

    run = root / run_id
    trees0 = pq.read_table(run / "trees", schema=TREES)
    nodes0 = pq.read_table(run / "nodes", schema=NODES)
    template_id = trees0["tree_id"][0].as_py()
    tree_row = trees0.filter(pc.equal(trees0["tree_id"], template_id))
    node_rows = nodes0.filter(pc.equal(nodes0["tree_id"], template_id))
    per_tree = node_rows.num_rows
    plan = TreePlan(run_id, tuple(load_personas(PersonaSourceConfig())), samples_per_persona, 0, total)
    for start in range(GROWN, total, PART):
        stop = min(start + PART, total)
        ids = pa.array([plan.tree_id(i) for i in range(start, stop)], pa.string())
        n = len(ids)
        trees = tree_row.take(pa.array([0] * n)).set_column(TREES.get_field_index("tree_id"), "tree_id", ids)
        nodes = node_rows.take(pa.array(list(range(per_tree)) * n))
        owner = pc.take(ids, pa.array([i for i in range(n) for _ in range(per_tree)]))
        suffix = pc.binary_join_element_wise("-", owner, "")
        for col in ("node_id", "parent_id"):
            nodes = nodes.set_column(NODES.get_field_index(col), col,
                                     pc.binary_join_element_wise(nodes[col], suffix, ""))
        nodes = nodes.set_column(NODES.get_field_index("tree_id"), "tree_id", owner)
        name = f"compact-synth{start:09d}.parquet"
        pq.write_table(nodes, run / "nodes" / name, compression="zstd")
        pq.write_table(trees, run / "trees" / name, compression="zstd")


def measure(size: int, base_url: str, tmp: Path) -> dict:
    samples = math.ceil((size + GROWN) / seed_personas())
    config = tmp / f"memory-{size}.yaml"
    job_config(config, base_url, samples)
    out = tmp / f"memory-{size}"
    run_job(config, out, "mem", [f"--num_trees={GROWN}"])
    t = time.monotonic()
    synthesise(out, "mem", size, samples)
    made = time.monotonic() - t
    resume = run_job(config, out, "mem", [f"--num_trees={size + GROWN}"])
    rerun = run_job(config, out, "mem", [f"--num_trees={size + GROWN}"])
    counts = rerun["manifest"]["counts"]
    assert counts["trees_ok"] == size + GROWN, counts
    return {"trees": size + GROWN, "synth_s": made, "resume_s": resume["wall_s"],
            "resume_mb": resume["driver_rss"] / 2**20, "rerun_s": rerun["wall_s"], "rerun_mb": rerun["driver_rss"] / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    args = parser.parse_args()
    import subprocess

    port = free_port()
    endpoint = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "loopback_endpoint.py"), "--port", str(port)])
    rows = []
    try:
        time.sleep(2)
        with tempfile.TemporaryDirectory(prefix="aloe-memory-") as tmp:
            for size in args.sizes:
                rows.append(measure(size, f"http://127.0.0.1:{port}/v1", Path(tmp)))
                print(_row(rows[-1], rows[0]), flush=True)
    finally:
        endpoint.terminate()
        endpoint.wait(timeout=10)
    print(f"\ndriver memory: {GROWN} trees grown on a loopback endpoint, the rest synthesised as committed parts")
    print(f"{'trees':>10}{'synth s':>9}{'resume s':>10}{'resume MB':>11}{'x first':>9}{'rerun s':>9}{'rerun MB':>10}"
          f"{'x first':>9}")
    for r in rows:
        print(_row(r, rows[0]))


def _row(r: dict, first: dict) -> str:
    return (f"{r['trees']:>10,}{r['synth_s']:>9.1f}{r['resume_s']:>10.1f}{r['resume_mb']:>11.0f}"
            f"{r['resume_mb'] / first['resume_mb']:>9.2f}{r['rerun_s']:>9.1f}{r['rerun_mb']:>10.0f}"
            f"{r['rerun_mb'] / first['rerun_mb']:>9.2f}")


if __name__ == "__main__":
    main()
