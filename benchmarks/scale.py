"""Tree generation at scale, orchestration only: the real `jobs/generate_trees.py` with all four
roles on the `openai` backend pointed at a loopback endpoint that answers at once
(`benchmarks/loopback_endpoint.py`, a benchmark fixture), 3 turns per tree.

    python benchmarks/scale.py                          # 1,000 and 10,000 trees, this pipeline and the last release's settings
    python benchmarks/scale.py --sizes 1000 10000 100000 --baseline-sizes 1000 10000

For each size it runs the job twice, as configured now and with the pipeline as the last
release configured it (one grower actor, no compaction), and prints wall time, trees/s, LLM
calls/s, driver and total peak RSS, files written and the time a rerun of the finished run takes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]

LAST_RELEASE = ["--pipeline.grower_actors=1", "--pipeline.trees_in_flight=16", "--pipeline.trees_per_file=1"]
"""The pipeline as the last release configured it: one grower actor, 16 trees in flight, one
file per 4-tree part (no compaction)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_personas() -> int:
    """Personas the tree job pairs from the built-in seeds by default."""
    from aloe_ray.config import PersonaSourceConfig
    from aloe_ray.personas.loaders import load_personas

    return len(load_personas(PersonaSourceConfig()))


def job_config(path: Path, base_url: str, trees: int) -> None:
    api = {"backend": "openai", "model": "loopback", "base_url": base_url, "timeout_s": 60}
    path.write_text(yaml.safe_dump({
        "num_trees": trees, "samples_per_persona": math.ceil(trees / seed_personas()),
        "tree": {"max_turns": 3}, "engines": {"api": api},
        "roles": {r: {"engine": "api"} for r in ("simulator", "inducer", "responder", "judge")},
        "pipeline": {"progress_interval_s": 30},
    }))


class PeakRSS:
    """Polls a process tree: the driver's RSS and the whole tree's (Ray's processes included)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.driver = self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.Error:
                        rss.append(0)
                self.driver = max(self.driver, rss[0])
                self.total = max(self.total, sum(rss))
            except psutil.Error:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_job(config: Path, output: Path, run_id: str, extra: list[str]) -> dict:
    cmd = [sys.executable, str(REPO / "jobs" / "generate_trees.py"), "--config", str(config),
           f"--output={output}", f"--run_id={run_id}", *extra]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    peak = PeakRSS(proc.pid)
    log, _ = proc.communicate()
    peak.stop()
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"job failed ({proc.returncode}):\n{log[-4000:]}")
    manifest = json.loads((output / run_id / "jobs" / "generate_trees" / "manifest.json").read_text())
    return {"wall_s": wall, "driver_rss": peak.driver, "total_rss": peak.total, "manifest": manifest}


def measure(trees: int, base_url: str, root: Path, label: str, extra: list[str]) -> dict:
    config = root / f"{label}-{trees}.yaml"
    job_config(config, base_url, trees)
    out = root / f"{label}-{trees}"
    first = run_job(config, out, "bench", extra)
    again = run_job(config, out, "bench", extra)  # the finished run, rerun
    c, m = first["manifest"]["counts"], first["manifest"]
    assert c["trees_ok"] == trees, c
    return {"label": label, "trees": trees, "wall_s": first["wall_s"], "trees_per_s": trees / first["wall_s"],
            "calls_per_s": c.get("llm_calls", 0) / first["wall_s"], "driver_mb": first["driver_rss"] / 2**20,
            "total_mb": first["total_rss"] / 2**20, "files": f"{m['files']['nodes']}+{m['files']['trees']}",
            "rerun_s": again["wall_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--skip-baseline", action="store_true", help="only this pipeline's configuration")
    parser.add_argument("--baseline-sizes", type=int, nargs="*", default=None,
                        help="sizes to run the last release's configuration at too (default: every size)")
    parser.add_argument("--extra", nargs="*", default=[], help="flags for this pipeline's job, e.g. --pipeline.trees_in_flight=64")
    args = parser.parse_args()
    port = free_port()
    endpoint = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "loopback_endpoint.py"), "--port", str(port)])
    rows = []
    try:
        time.sleep(2)
        base_url = f"http://127.0.0.1:{port}/v1"
        with tempfile.TemporaryDirectory(prefix="aloe-scale-") as tmp:
            for trees in args.sizes:
                rows.append(measure(trees, base_url, Path(tmp), "this pipeline", args.extra))
                print(_row(rows[-1]), flush=True)
                if not args.skip_baseline and (args.baseline_sizes is None or trees in args.baseline_sizes):
                    rows.append(measure(trees, base_url, Path(tmp), "last release", LAST_RELEASE))
                    print(_row(rows[-1]), flush=True)
    finally:
        endpoint.terminate()
        endpoint.wait(timeout=10)
    print(f"\nscale: loopback endpoint, 3 turns per tree, {os.cpu_count()} CPUs")
    print(f"{'pipeline':<15}{'trees':>8}{'wall s':>9}{'trees/s':>9}{'calls/s':>9}{'driver MB':>11}{'total MB':>10}"
          f"{'files n+t':>13}{'rerun s':>9}")
    for r in rows:
        print(_row(r))


def _row(r: dict) -> str:
    return (f"{r['label']:<15}{r['trees']:>8,}{r['wall_s']:>9.1f}{r['trees_per_s']:>9.1f}{r['calls_per_s']:>9.0f}"
            f"{r['driver_mb']:>11.0f}{r['total_mb']:>10.0f}{r['files']:>13}{r['rerun_s']:>9.1f}")


if __name__ == "__main__":
    main()
