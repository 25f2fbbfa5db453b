"""The tree-generation job end to end: real Ray, the bundled model, local folder and S3 (moto),
`ray job submit` against `ray start --head`, and exactly-once resume after kills."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest

from aloe_ray.pipeline.run_output import RunOutput
from aloe_ray.schema import NODES, TREES
from aloe_ray.storage import S3Options
from conftest import REPO, free_port, wait_for_port

# Short trees: the point is the pipeline, not the bundled model's prose.
SMALL = [
    "--tree.max_turns=2",
    "--roles.simulator.sampling.max_tokens=12",
    "--roles.inducer.sampling.max_tokens=16",
    "--roles.responder.sampling.max_tokens=12",
    "--pipeline.progress_interval_s=2",
]


def job_cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / "generate_trees.py"), *SMALL, *args]


def run_job(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(job_cmd(*args), cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def check_run(output: str, run_id: str, n_trees: int, candidates: int = 2, s3: S3Options | None = None):
    """Exactly n finished trees, none duplicated, every node's parent present."""
    out = RunOutput(output, run_id, s3)
    trees, nodes = out.read("trees"), out.read("nodes")
    assert trees.schema.equals(TREES) and nodes.schema.equals(NODES)
    tree_ids = trees["tree_id"].to_pylist()
    assert len(tree_ids) == len(set(tree_ids)) == n_trees, Counter(tree_ids)
    assert set(trees["status"].to_pylist()) == {"ok"}, trees.filter(pc.equal(trees["status"], "failed"))["failure_reason"]
    node_ids = nodes["node_id"].to_pylist()
    assert len(node_ids) == len(set(node_ids))
    present = set(node_ids)
    assert all(p in present for p in nodes["parent_id"].to_pylist() if p is not None)
    assert set(nodes["tree_id"].to_pylist()) == set(tree_ids)
    per_tree = Counter(nodes["tree_id"].to_pylist())
    for row in trees.to_pylist():
        assert per_tree[row["tree_id"]] == row["turns"] * (1 + candidates) == row["num_nodes"]
    return trees, nodes


def manifest_tokens(run_dir) -> int:
    manifest = json.loads((run_dir / "jobs" / "generate_trees" / "manifest.json").read_text())
    return sum(s["served_tokens"] for s in manifest["engines"]["default"])


def check_quality_report(q: dict, nodes, stdout: str, run_dir) -> None:
    """The manifest's quality figures equal a recount from the nodes table; the files and the
    job log's warnings are there."""
    rows = nodes.to_pylist()
    users = [n for n in rows if n["role"] == "user"]
    replies = [n for n in rows if n["role"] == "assistant"]
    by_id = {n["node_id"]: n for n in rows}
    assert q["user_messages"] == len(users) and q["judged_turns"] == len(users)
    assert q["inducer_parse_rate"] == sum(bool(u["induced_ok"]) for u in users) / len(users)
    assert q["cut"]["simulator"] == sum(u["finish_reason"] == "length" for u in users)
    assert q["cut"]["responder"] == sum(r["finish_reason"] == "length" for r in replies)
    assert q["cut"]["inducer"] == sum(u["induced_finish_reason"] == "length" for u in users)
    assert q["replies"]["judge"] == len(users) and q["cut"]["judge"] == 0  # constrained: one token
    chosen = [r for r in replies if r["label"] == "chosen"]
    assert q["personalized_chosen_rate"] == sum(r["personalized"] for r in chosen) / len(users)
    first = sum(u["judge_order"][0] == u["judge_choice"] for u in users)
    assert q["chosen_position_share"]["A"] == first / len(users)
    for u in users:  # the recorded order is a permutation and the verdict indexes candidates
        kids = [r for r in replies if r["parent_id"] == u["node_id"]]
        assert sorted(u["judge_order"]) == [0, 1]
        assert next(k for k in kids if k["label"] == "chosen")["candidate_index"] == u["judge_choice"]
        assert u["text_raw"] is not None and u["text"].strip()
        assert abs(sum(u["judge_probs"]) - 1) < 1e-4
    ok_pairs = sum(1 for u in users if all(by_id[r["node_id"]]["finish_reason"] != "length"
                                           for r in replies if r["parent_id"] == u["node_id"]))
    assert q["dpo_pairs_default_filters"] <= ok_pairs
    assert sum(q["dpo_dropped"].values()) + q["dpo_pairs_default_filters"] == len(users)
    folder = run_dir / "jobs" / "generate_trees"
    assert (folder / "quality.md").read_text().startswith("# Data quality")
    assert (folder / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[aloe-ray] quality: inducer parsed" in stdout
    for warning in q["warnings"]:
        assert f"WARNING (data quality): {warning}" in stdout
    assert q["cut_share"]["responder"] > 0.30 and any("responder replies were cut" in w for w in q["warnings"])


def test_local_run_writes_tables_manifest_and_resumes(tmp_path):
    out_dir = str(tmp_path / "data")
    proc = run_job(f"--output={out_dir}", "--run_id=local", "--num_trees=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{out_dir}/local" in proc.stdout and "3 ok, 0 failed trees" in proc.stdout
    assert "[trees] done 3/3" in proc.stdout and "tok/s" in proc.stdout
    assert "turns 6/6" in proc.stdout  # the heartbeat counts turns as they complete, not only parts
    assert manifest_tokens(tmp_path / "data" / "local") > 0
    trees, nodes = check_run(out_dir, "local", 3)
    assert nodes.num_rows == 3 * 2 * 3
    users = nodes.filter(pc.equal(nodes["role"], "user")).to_pylist()
    assert all(u["judge_choice"] in (0, 1) and len(u["judge_probs"]) == 2 for u in users)
    assert all(n["model"] == "smollm2-135m" and n["seed"] is not None for n in nodes.to_pylist())
    manifest = json.loads((tmp_path / "data" / "local" / "jobs" / "generate_trees" / "manifest.json").read_text())
    assert manifest["counts"]["trees_ok"] == 3 and manifest["counts"]["nodes"] == 18
    assert manifest["config"]["run_id"] == "local" and manifest["packages"]["ray"] == "2.60.0"
    assert manifest["engines"]["default"][0]["generated_tokens"] > 0
    assert "max_turns: 2" in (tmp_path / "data" / "local" / "jobs" / "generate_trees" / "config.yaml").read_text()
    check_quality_report(manifest["quality"], nodes, proc.stdout, tmp_path / "data" / "local")

    # a rerun with the same run_id and a larger target grows only the missing tree
    again = run_job(f"--output={out_dir}", "--run_id=local", "--num_trees=4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 already done, 1 to grow" in again.stdout
    trees4, _ = check_run(out_dir, "local", 4)
    assert set(trees["tree_id"].to_pylist()) < set(trees4["tree_id"].to_pylist())


def test_bad_input_fails_before_ray_starts(tmp_path):
    bad = tmp_path / "profiles.jsonl"
    bad.write_text('"ok"\n{nope\n')
    proc = run_job(f"--personas.profiles={bad}", f"--personas.personalities={bad}", f"--output={tmp_path}")
    assert proc.returncode == 2
    assert f"error: {bad}:2: not a JSON string" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout
    proc = run_job("--tree.policy=best")
    assert proc.returncode == 2 and "tree.policy: Input should be" in proc.stderr


def test_killed_driver_rerun_is_exactly_once(tmp_path):
    out_dir = str(tmp_path / "data")
    args = [f"--output={out_dir}", "--run_id=killed", "--num_trees=4", "--pipeline.trees_per_part=1",
            "--pipeline.trees_in_flight=2"]
    proc = subprocess.Popen(job_cmd(*args), cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    trees_dir = tmp_path / "data" / "killed" / "trees"
    deadline = time.monotonic() + 400
    # committed parts only: pathlib's glob also matches the hidden temporary file of a write in progress
    while time.monotonic() < deadline and not list(trees_dir.glob("part-*.parquet")):
        assert proc.poll() is None, "job ended before it could be killed"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and what runs in its process group
    proc.wait()
    committed = len(list(trees_dir.glob("part-*.parquet")))
    assert 1 <= committed < 4
    # an orphan a crash could leave: nodes written, trees part (the commit) not
    orphan = tmp_path / "data" / "killed" / "nodes" / "part-orphan.parquet"
    orphan.write_bytes(next((tmp_path / "data" / "killed" / "nodes").glob("part-*.parquet")).read_bytes())

    rerun = run_job(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # Ray's own processes can outlive the killed driver for a moment and commit one more part,
    # so the rerun may find more than we counted: never fewer, and the total is always 4.
    done, to_grow = map(int, re.search(r"(\d+) already done, (\d+) to grow", rerun.stdout).groups())
    assert committed <= done <= 4 and done + to_grow == 4
    assert int(re.search(r"removed (\d+) uncommitted part", rerun.stdout).group(1)) >= 1
    check_run(out_dir, "killed", 4)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """`ray start --head` on loopback, token auth on (as Ray 2.60 defaults)."""
    port, dash = free_port(), free_port()
    venv_bin = str(Path(sys.executable).parent)
    # As with an activated virtualenv: job entrypoints' `python` is this environment's.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    ray_bin = f"{venv_bin}/ray"
    subprocess.run([ray_bin, "start", "--head", "--num-cpus=2", f"--port={port}", f"--dashboard-port={dash}",
                    "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=180)
    wait_for_port(dash, timeout=120)
    yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "env": env, "ray": ray_bin}
    subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_ray_job_submit_to_s3(ray_cluster, s3_bucket, s3_env):
    runtime_env = json.dumps({"env_vars": s3_env})
    output = f"s3://{s3_bucket}/runs"
    cmd = [ray_cluster["ray"], "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", str(REPO),
           "--runtime-env-json", runtime_env, "--",
           "python", "jobs/generate_trees.py", *SMALL, f"--output={output}", "--run_id=submitted", "--num_trees=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=ray_cluster["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "succeeded" in proc.stdout
    assert "[trees] done 2/2" in proc.stdout  # progress lines reach the job logs
    assert f"{output}/submitted" in proc.stdout
    check_run(output, "submitted", 2)


KILL_ENGINE = """
import os, signal, sys, time, ray
ray.init(address=sys.argv[1], namespace="aloe-ray", log_to_driver=False)
deadline = time.monotonic() + 400
while True:  # the engine replica reports to the run's stats board once it has served a call
    try:
        replicas = ray.get(ray.get_actor(sys.argv[2], namespace="aloe-ray").snapshot.remote())
        if replicas:
            break
    except ValueError:
        pass
    assert time.monotonic() < deadline, "engine replica never reported"
    time.sleep(0.5)
time.sleep(float(sys.argv[3]))  # let trees get going, then pull the engine out from under them
os.kill(replicas[0]["pid"], signal.SIGKILL)
print("killed", flush=True)
"""


def test_killed_engine_replica_run_and_rerun_are_exactly_once(ray_cluster, tmp_path):
    out_dir = str(tmp_path / "data")
    args = [f"--output={out_dir}", "--run_id=actorkill", "--num_trees=4", "--pipeline.trees_per_part=1",
            f"--ray.address={ray_cluster['address']}"]
    proc = subprocess.Popen(job_cmd(*args), cwd=REPO, env=ray_cluster["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    killer = subprocess.run([sys.executable, "-c", KILL_ENGINE, ray_cluster["address"],
                             "aloe-engine.actorkill.stats", "6"],
                            env=ray_cluster["env"], capture_output=True, text=True, timeout=600)
    assert "killed" in killer.stdout, killer.stderr[-3000:]
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode in (0, 1), out[-3000:]
    rerun = run_job(*args, env=ray_cluster["env"])
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    check_run(out_dir, "actorkill", 4)
