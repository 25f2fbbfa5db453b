"""Safe resume of a tree run: one driver per run (the lease), pinned settings, and unexpected
errors that become failed trees or retried commits instead of a lost run."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from aloe_ray.config import GenerateTreesConfig, load_config
from aloe_ray.pipeline import grower as grower_module
from aloe_ray.pipeline.generate import SETTINGS_FILE, tree_settings
from aloe_ray.pipeline.grower import TreeGrower
from aloe_ray.pipeline.run_output import RunOutput
from aloe_ray.trees import TreePlan, TreeShape, grow_tree, make_tree_specs
from conftest import REPO
from scripted_engine import ScriptedEngine
from test_trees import PERSONA, roles_for

LEASE = "jobs/generate_trees/lease.json"


def _hold(out: RunOutput, **fields) -> None:
    held = {"owner": "other", "epoch": 1, "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": time.time(), "renewed_at": time.time(), "released": False, "ray": None, **fields}
    out.write_json(LEASE, held)


def _job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "generate_trees.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_the_job_refuses_a_held_run_and_changed_settings_before_ray_starts(tmp_path):
    out = RunOutput(str(tmp_path), "r")
    _hold(out)  # held by this (live) test process
    busy = _job(f"--output={tmp_path}", "--run_id=r")
    assert busy.returncode == 2 and "is being written by another driver" in busy.stderr, busy.stderr[-2000:]
    _hold(out, released=True)

    cfg = load_config(GenerateTreesConfig, ["--run_id=r", f"--output={tmp_path}"])
    out.write_json(SETTINGS_FILE, tree_settings(cfg))
    changed = _job(f"--output={tmp_path}", "--run_id=r", "--tree.max_turns=5", "--roles.judge.sampling.temperature=0.5")
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert "was grown with other settings (roles.judge.sampling.temperature, tree.max_turns differ)" in changed.stderr
    assert "starting engines" not in changed.stdout  # refused before Ray started
    # what only decides how far a run goes may change
    more = load_config(GenerateTreesConfig, ["--run_id=r", "--num_trees=400", "--pipeline.grower_actors=3"])
    assert tree_settings(more) == tree_settings(cfg)


def test_an_unexpected_error_fails_the_tree_not_the_run():
    spec = make_tree_specs("run", [PERSONA])[0]

    def broken_progress(turn: int) -> None:
        raise KeyError("progress board gone")

    result = asyncio.run(grow_tree(spec, roles_for(ScriptedEngine()), TreeShape(2), on_turn=broken_progress))
    assert result.tree["status"] == "failed" and result.nodes == []
    assert result.tree["failure_reason"].startswith("unexpected KeyError while growing")


class _FlakyOutput(RunOutput):
    def __init__(self, root: str, failures: int):
        super().__init__(root, "flaky")
        self.failures = failures

    def commit(self, results, fence=None):
        if self.failures:
            self.failures -= 1
            raise OSError("503 Slow Down")
        return super().commit(results)


@pytest.mark.parametrize("failures, committed, spilled", [(2, True, 0), (8, True, 1), (99, False, 1)])
def test_a_failing_commit_is_retried_then_spilled_then_reported_not_raised(tmp_path, monkeypatch, failures,
                                                                          committed, spilled):
    monkeypatch.setattr(grower_module, "COMMIT_BACKOFF_S", 0.0)
    monkeypatch.setattr(grower_module, "SPILL_BACKOFF_S", 0.0)
    out = _FlakyOutput(str(tmp_path), failures)
    from aloe_ray.config.generate import RolesConfig

    grower = TreeGrower(TreePlan("flaky", (PERSONA,)), RolesConfig(), {"default": ScriptedEngine()}, TreeShape(2), out)
    summary = asyncio.run(grower(pa.table({"spec_index": [0]})))
    assert grower.spilled == spilled and summary["spec_index"] == [0]
    if committed:  # 8: the six tries at once failed, the part was kept and its second later try wrote it
        assert summary["status"] == ["ok"] and summary["part"][0].startswith("part-")
        assert out.read("trees").num_rows == 1
    else:
        assert summary["status"] == ["failed"] and summary["part"] == [None]
        reason = summary["failure_reason"][0]
        assert "commit failed after 10 attempts" in reason and "503" in reason and "a rerun grows it" in reason
        assert out.read("trees").num_rows == 0  # nothing half-written: the rerun grows it


def test_a_spilled_part_commits_as_soon_as_another_part_does(tmp_path, monkeypatch):
    """The store fails every try of part [0] until it is spilled; part [1] (held back until then)
    commits, and that wakes part [0] at once, long before its 1000 s backoff."""
    from aloe_ray.config.generate import RolesConfig
    from aloe_ray.personas.model import Persona

    monkeypatch.setattr(grower_module, "COMMIT_BACKOFF_S", 0.0)
    monkeypatch.setattr(grower_module, "SPILL_BACKOFF_S", 1000.0)
    personas = (Persona.pair("profile 0", "personality 0"), Persona.pair("held 1", "personality 1"))
    out = _FlakyOutput(str(tmp_path), grower_module.COMMIT_ATTEMPTS)
    engine = _HeldTree("held 1")
    grower = TreeGrower(TreePlan("flaky", personas), RolesConfig(), {"default": engine}, TreeShape(2), out,
                        trees_in_flight=2, trees_per_part=1)

    async def run():
        call = asyncio.ensure_future(grower(pa.table({"spec_index": [0, 1]})))
        while not grower.spilled:
            await asyncio.sleep(0.001)
        assert out.read("trees").num_rows == 0  # part [0] is kept in the grower, not written, not dropped
        engine.release.set()
        return await asyncio.wait_for(call, 60)

    summary = asyncio.run(run())
    assert summary["status"] == ["ok", "ok"] and all(p.startswith("part-") for p in summary["part"])
    assert sorted(out.read("trees")["tree_id"].to_pylist()) == sorted(summary["tree_id"])


def test_growers_and_trees_in_flight_are_sized_to_the_cluster_and_the_engines():
    from aloe_ray.config import EngineConfig
    from aloe_ray.config.generate import PipelineConfig
    from aloe_ray.pipeline.generate import grow_sizing

    hf = {"default": EngineConfig(num_cpus=1)}
    api = {"api": EngineConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1")}
    p = PipelineConfig()  # 4 trees a part
    assert grow_sizing(p, 2, hf, trees=40).growers == 1  # the engine replica holds one of two CPUs
    assert grow_sizing(p, 2, api, trees=40).growers == 2  # a remote endpoint: both cores grow trees
    assert grow_sizing(p, 64, {"e": EngineConfig(num_cpus=8, replicas=4)}, trees=400).growers == 32
    assert grow_sizing(p, 16, api, trees=12).growers == 3  # never more actors than parts
    assert grow_sizing(PipelineConfig(grower_actors=5), 2, hf, trees=40).growers == 5  # configured wins

    # In flight: what the engines serve at once, shared by the growers; batches of half a
    # grower's slots, whole parts.
    s = grow_sizing(p, 2, hf, trees=1000)
    assert (s.growers, s.per_grower, s.batch) == (1, 16, 8)  # hf: replicas x max_batch_size
    two = {"a": EngineConfig(num_cpus=0, max_batch_size=8, replicas=2), "b": EngineConfig(num_cpus=0)}
    assert grow_sizing(p, 2, two, trees=1000).per_grower == (16 + 16) // 2
    s = grow_sizing(p, 2, api, trees=1000)
    assert (s.growers, s.per_grower, s.batch) == (2, 256, 128)  # openai: the client's max_concurrency
    s = grow_sizing(PipelineConfig(trees_in_flight=6, trees_per_part=4), 2, api, trees=1000)
    assert (s.per_grower, s.batch) == (3, 4)


class _HeldTree(ScriptedEngine):
    """Holds the tree of the persona whose profile says `marker` until released."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.release = asyncio.Event()

    async def chat(self, requests, affinity=None):
        if self.marker in requests[0].messages[0]["content"]:
            await self.release.wait()
        await asyncio.sleep(0)
        return await super().chat(requests, affinity)


def test_trees_stream_through_a_growers_slots_without_waiting_for_a_part(tmp_path):
    from aloe_ray.config.generate import RolesConfig
    from aloe_ray.personas.model import Persona

    personas = tuple(Persona.pair(f"profile {i}", f"personality {i}") for i in range(6))
    engine = _HeldTree("profile 0")
    out = RunOutput(str(tmp_path), "s")
    grower = TreeGrower(TreePlan("s", personas), RolesConfig(), {"default": engine}, TreeShape(2), out,
                        trees_in_flight=2, trees_per_part=2)

    most_growing = 0

    async def run():
        nonlocal most_growing
        call = asyncio.ensure_future(grower(pa.table({"spec_index": list(range(6))})))
        # Tree 0 is stuck: its slot stays taken, and trees 1..5 pass one by one through the other.
        for _ in range(3000):
            await asyncio.sleep(0.001)
            tally = grower.tally.snapshot()
            most_growing = max(most_growing, tally["started"] - tally["finished"])
            if len(list((tmp_path / "s" / "trees").glob("part-*.parquet"))) == 2:
                break
        committed = sorted(t for t in out.read("trees")["tree_id"].to_pylist())
        engine.release.set()
        return committed, await call

    committed, summary = asyncio.run(run())
    plan = TreePlan("s", personas)
    # Parts [2, 3] and [4, 5] were committed while tree 0 still grew; part [0, 1] waited for it.
    assert committed == sorted(plan.tree_id(i) for i in (2, 3, 4, 5))
    assert summary["tree_id"] == [plan.tree_id(i) for i in range(6)] and set(summary["status"]) == {"ok"}
    assert len(set(summary["part"])) == 3
    assert out.read("trees").num_rows == 6
    assert most_growing == 2  # never more trees at once than the grower's slots


def _scripted_results(n: int):
    from aloe_ray.personas.model import Persona

    specs = make_tree_specs("c", [Persona.pair(f"profile {i}", f"personality {i}") for i in range(n)])

    async def grow_all():
        return await asyncio.gather(*(grow_tree(s, roles_for(ScriptedEngine()), TreeShape(2)) for s in specs))

    return asyncio.run(grow_all())


def test_compaction_bounds_files_and_an_interrupted_one_recovers_exactly(tmp_path):
    out = RunOutput(str(tmp_path), "c")
    results = _scripted_results(10)
    parts = [out.commit(results[i:i + 2]) for i in range(0, 10, 2)]  # 5 parts of 2 trees
    before_nodes = out.read("nodes").num_rows
    assert out.compact(trees_per_file=4) == 4  # 2+2 and 2+2 merged; the fifth part is alone
    trees, nodes = out.read("trees"), out.read("nodes")
    assert sorted(trees["tree_id"].to_pylist()) == sorted(r.tree["tree_id"] for r in results)
    assert nodes.num_rows == before_nodes and len(set(nodes["node_id"].to_pylist())) == before_nodes
    assert len(list((tmp_path / "c" / "trees").glob("*.parquet"))) == 3
    assert len(list((tmp_path / "c" / "nodes").glob("*.parquet"))) == 3

    # a crash after the merged part was committed but before a replaced part was deleted
    again = out.commit(results[0:2])
    assert again == parts[0]
    state = out.recover(retry_failed=True)
    assert state.superseded_parts_removed == 1 and state.orphan_parts_removed == 0
    ids = out.read("trees")["tree_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 10
    assert out.read("nodes").num_rows == before_nodes
    assert out.compact(trees_per_file=4) == 0  # nothing small left to merge


def test_compaction_after_a_retried_failure_keeps_every_tree(tmp_path):
    """recover() rewrites a part without its failed rows under the old name; a compaction whose
    merged ids equal that part's must not overwrite or delete it."""
    from aloe_ray.personas.model import Persona

    out = RunOutput(str(tmp_path), "c")
    specs = make_tree_specs("c", [Persona.pair(f"profile {i}", f"personality {i}") for i in range(3)])
    broken = ScriptedEngine(overrides={"simulator": lambda req, n: "*stares*"})

    async def grow(spec, engine):
        return await grow_tree(spec, roles_for(engine), TreeShape(2))

    first = [asyncio.run(grow(s, broken if i == 1 else ScriptedEngine())) for i, s in enumerate(specs)]
    assert [r.tree["status"] for r in first] == ["ok", "failed", "ok"]
    out.commit(first)
    assert out.recover(retry_failed=True).failed_rows_dropped == 1
    out.commit([asyncio.run(grow(specs[1], ScriptedEngine()))])  # the rerun grows it again
    nodes_before = out.read("nodes").num_rows
    assert out.compact(trees_per_file=6) == 2
    trees = out.read("trees")
    assert sorted(trees["tree_id"].to_pylist()) == sorted(s.tree_id for s in specs)
    assert set(trees["status"].to_pylist()) == {"ok"} and out.read("nodes").num_rows == nodes_before == 18
    assert out.recover(retry_failed=True).superseded_parts_removed == 0
