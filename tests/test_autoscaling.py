"""Autoscaling exercised with Ray's fake multi-node provider (the one Ray tests its autoscaler
with; `RAY_FAKE_CLUSTER=1 ray start --autoscaling-config=...` starts worker nodes as local
raylets). The head has CPUs only; the engine replicas ask for a GPU, which only the `gpu_workers`
node type has, so the autoscaler must add one, and removes it once the job is done. The KubeRay
RayCluster in k8s/ relies on the same mechanism (its GPU worker groups scale from 0); see
docs/runbook.md. The fake nodes' "GPU" is a logical resource: the hf engine runs on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import REPO, free_port

FAKE_CLUSTER = {
    "cluster_name": "aloe-fake", "max_workers": 2,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
        "gpu_workers": {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 500_000_000}, "node_config": {},
                        "min_workers": 0, "max_workers": 1},
    },
    "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
    "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
    "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
    "rsync_exclude": [], "rsync_filter": [],
}

NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print(json.dumps([{"id": n["NodeID"], "alive": n["Alive"], "gpu": n["Resources"].get("GPU", 0)} for n in ray.nodes()]))
"""


def test_engines_that_need_a_gpu_node_scale_the_cluster_up_and_down(tmp_path):
    port = free_port()
    config = tmp_path / "fake-cluster.yaml"
    fake = {**FAKE_CLUSTER, "provider": {**FAKE_CLUSTER["provider"], "gcs_address": f"127.0.0.1:{port}"}}
    config.write_text(yaml.safe_dump(fake))
    venv_bin = str(Path(sys.executable).parent)
    # Every node on loopback (Ray's own switch, as on a laptop): the fake workers join 127.0.0.1.
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "token",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "PATH": f"{venv_bin}:{os.environ['PATH']}", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    address = f"127.0.0.1:{port}"
    subprocess.run([f"{venv_bin}/ray", "start", "--head", f"--autoscaling-config={config}", "--num-cpus=2",
                    f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=180)
    try:
        job = subprocess.run(
            [sys.executable, str(REPO / "jobs" / "generate_trees.py"), f"--ray.address={address}",
             f"--output={tmp_path}", "--run_id=scaled", "--num_trees=2", "--tree.max_turns=1",
             "--engines.default.num_gpus=1", "--engines.default.device=cpu", "--engines.default.num_cpus=1",
             "--roles.simulator.sampling.max_tokens=8", "--roles.inducer.sampling.max_tokens=8",
             "--roles.responder.sampling.max_tokens=8", "--pipeline.progress_interval_s=5"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert job.returncode == 0, (job.stdout[-2000:], job.stderr[-3000:])
        assert "2 ok, 0 failed trees" in job.stdout
        manifest = json.loads((tmp_path / "scaled" / "jobs" / "generate_trees" / "manifest.json").read_text())
        engine_node = manifest["engines"]["default"][0]["node"]

        def nodes() -> list[dict]:
            out = subprocess.run([sys.executable, "-c", NODES, address], env=env, capture_output=True, text=True,
                                 timeout=120, check=True)
            return json.loads(out.stdout.strip().splitlines()[-1])

        [added] = [n for n in nodes() if n["id"] == engine_node]
        assert added["gpu"] == 1  # the engine ran on a node the autoscaler added for it
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and any(n["alive"] and n["gpu"] for n in nodes()):
            time.sleep(3)
        assert not any(n["alive"] and n["gpu"] for n in nodes()), "the idle GPU node was not removed"
    finally:
        subprocess.run([f"{venv_bin}/ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
