"""Exactly once on a long-lived cluster: a `ray start --head` cluster outlives the tree job's
driver, which is SIGKILLed alone after its first commit and restarted at once (the new driver
takes the run over at the next epoch, waits for the old job's actors, recovers, finishes).
benchmarks/chaos.py runs this and the harder cases (raced drivers, frozen drivers whose growers
commit late, S3 faults) at a larger size."""

from __future__ import annotations

import sys
import time

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from chaos_counts import audit  # noqa: E402
from chaos_fixtures import Driver, RayHead, fixture_process, free_port  # noqa: E402

TREES = 12


@pytest.fixture(scope="module")
def head():
    with RayHead(num_cpus=2) as h:
        yield h


def _config(tmp_path, port: int) -> str:
    import yaml

    api = {"backend": "openai", "model": "loopback", "base_url": f"http://127.0.0.1:{port}/v1", "timeout_s": 60}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "num_trees": TREES, "tree": {"max_turns": 2}, "engines": {"api": api},
        "roles": {r: {"engine": "api"} for r in ("simulator", "inducer", "responder", "judge")},
        "pipeline": {"progress_interval_s": 2, "trees_in_flight": 4},
    }))
    return str(path)


def test_a_driver_killed_alone_on_a_long_lived_cluster_and_restarted_at_once_is_exact(tmp_path, head):
    from aloe_ray.pipeline.run_output import RunOutput

    port = free_port()
    with fixture_process("endpoint", port, "--latency-ms", "150"):
        args = ["--config", _config(tmp_path, port), f"--output={tmp_path / 'out'}", "--run_id=kill",
                f"--ray.address={head.address}"]
        trees_dir = tmp_path / "out" / "kill" / "trees"
        first = Driver(args, head.env, tmp_path / "first.log")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(trees_dir.glob("part-*.parquet")):
            assert first.poll() is None, first.text()[-3000:]
            time.sleep(0.2)
        assert list(trees_dir.glob("part-*.parquet")), first.text()[-3000:]
        first.kill()  # the driver alone: the cluster and whatever Ray leaves of its job live on
        second = Driver(args, head.env, tmp_path / "second.log")
        assert second.wait(timeout=400) == 0, second.text()[-4000:]
    log = second.text()
    assert "took the run over from a driver that is gone" in log and "epoch 1 -> 2" in log, log[-3000:]
    row = audit(RunOutput(str(tmp_path / "out"), "kill"), TREES)
    assert row["exact"], row  # every tree once and ok, nodes == num_nodes, no orphan, raw and committed alike
