"""The tree job on a local multi-node Ray cluster (several raylets on this machine,
`ray.cluster_utils.Cluster`): growers spread over the nodes, the trees are exactly those of a
single-node run, and a node lost mid-run costs only its in-flight trees, which the rerun grows.

Every role is on the `openai` backend against the loopback endpoint (`benchmarks/
loopback_endpoint.py`), whose replies depend only on the request: a deterministic engine, so two
runs that grow the same trees write the same texts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow.compute as pc
import pytest
import yaml

from aloe_ray.pipeline.run_output import RunOutput
from conftest import REPO, free_port, server_process


@pytest.fixture(scope="module")
def endpoint():
    port = free_port()
    with server_process([sys.executable, str(REPO / "benchmarks" / "loopback_endpoint.py"), "--port", str(port)], port):
        yield f"http://127.0.0.1:{port}/v1"


def _config(tmp_path, base_url: str, trees: int) -> str:
    path = tmp_path / f"multinode-{trees}.yaml"
    api = {"backend": "openai", "model": "loopback", "base_url": base_url, "timeout_s": 30, "max_retries": 1}
    path.write_text(yaml.safe_dump({
        "num_trees": trees, "samples_per_persona": 2, "tree": {"max_turns": 3}, "engines": {"api": api},
        "roles": {r: {"engine": "api"} for r in ("simulator", "inducer", "responder", "judge")},
        "pipeline": {"progress_interval_s": 2, "trees_per_part": 2, "trees_in_flight": 4},
    }))
    return str(path)


def _cmd(config: str, output, run_id: str, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / "generate_trees.py"), "--config", config, f"--output={output}",
            f"--run_id={run_id}", *extra]


def _env() -> dict:
    """The test process's environment without RAY_ADDRESS (the Cluster fixture sets it): a job
    joins the cluster only when told to (--ray.address)."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def _run(*args, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(*args, **kw), cwd=REPO, capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def _content(output, run_id: str):
    out = RunOutput(str(output), run_id)
    nodes = out.read("nodes")
    return (sorted(out.read("trees")["tree_id"].to_pylist()),
            sorted(zip(nodes["node_id"].to_pylist(), nodes["text"].to_pylist(), nodes["label"].to_pylist())))


@pytest.fixture()
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1), c.add_node(num_cpus=1)]
    c.wait_for_nodes()
    yield c, workers
    c.shutdown()


def test_multi_node_run_spreads_growers_and_grows_the_same_trees(tmp_path, endpoint, cluster):
    c, _ = cluster
    config = _config(tmp_path, endpoint, 40)
    _run(config, tmp_path / "single", "same", "--ray.address=local", "--ray.num_cpus=2")
    multi = _run(config, tmp_path / "multi", "same", f"--ray.address={c.address}")
    assert "3 grower actor(s)" in multi.stdout  # one per CPU of the three nodes (the endpoint is remote)
    manifest = json.loads((tmp_path / "multi" / "same" / "jobs" / "generate_trees" / "manifest.json").read_text())
    assert len(manifest["growers_by_node"]) >= 2, manifest["growers_by_node"]
    single_ids, single_nodes = _content(tmp_path / "single", "same")
    multi_ids, multi_nodes = _content(tmp_path / "multi", "same")
    assert len(single_ids) == 40 and multi_ids == single_ids
    assert multi_nodes == single_nodes  # same node ids, texts and labels


def test_a_node_lost_mid_run_costs_only_its_trees_in_flight(tmp_path, endpoint, cluster):
    c, workers = cluster
    config = _config(tmp_path, endpoint, 200)
    out_dir = tmp_path / "kill"
    proc = subprocess.Popen(_cmd(config, out_dir, "kill", f"--ray.address={c.address}"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    trees_dir = out_dir / "kill" / "trees"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(trees_dir.glob("part-*.parquet"))) < 5:
        time.sleep(0.2)
    assert len(list(trees_dir.glob("part-*.parquet"))) >= 5, "no parts committed"
    c.remove_node(workers[0])  # its raylet and every worker process on it
    log, _ = proc.communicate(timeout=600)
    first = RunOutput(str(out_dir), "kill").read("trees")
    kept = set(first.filter(pc.equal(first["status"], "ok"))["tree_id"].to_pylist())
    assert 0 < len(kept) <= 200, log[-3000:]

    again = _run(config, out_dir, "kill", f"--ray.address={c.address}")
    assert "200 trees requested" in again.stdout, (log[-2000:], again.stdout[-2000:])
    out = RunOutput(str(out_dir), "kill")
    trees, nodes = out.read("trees"), out.read("nodes")
    ids = trees["tree_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 200 and set(trees["status"].to_pylist()) == {"ok"}
    node_ids = nodes["node_id"].to_pylist()
    assert len(node_ids) == len(set(node_ids)) == 200 * 3 * 3
    present = set(node_ids)
    assert all(p in present for p in nodes["parent_id"].to_pylist() if p is not None)
    assert set(pc.unique(nodes["tree_id"]).to_pylist()) == set(ids)
    assert kept <= set(ids)  # what was committed before the node died is kept, not grown again
    assert f"{len(kept)} already done, {200 - len(kept)} to grow" in again.stdout
