"""The training jobs end to end: real Ray Train (2 gloo workers), TRL, PEFT, the bundled model.

The tree table comes from the scripted engine (a fixture for tree logic): the point here is the
training stack, which runs for real: loss goes down, adapter weights move, DPO's reward margin
turns positive, a crash mid-run resumes from the last checkpoint, and the exported model loads
in our hf engine and through the serving app's adapter path.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from aloe_ray import storage
from aloe_ray.personas.model import Persona
from aloe_ray.pipeline.run_output import RunOutput
from aloe_ray.schema import DPO, NODES, SFT
from aloe_ray.trees import TreeShape
from conftest import REPO
from test_trees import grow

QUICK = ["--ray.num_cpus=2", "--optim.max_length=160", "--optim.per_device_batch_size=2"]


def run_job(script: str, *args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / script), *QUICK, *args], cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def write_trees(root: Path | str, n: int = 4, turns: int = 3, s3=None) -> str:
    """A tree run root holding `n` scripted trees, committed in one part."""
    results = []
    for i in range(n):
        persona = Persona.pair(f"Profile {i}: a {30 + i}-year-old baker in Lyon.", f"Personality {i}: terse, dry humour.")
        results.append(grow(TreeShape(turns, 2, "random", 64), run_id="trees", persona=persona)[0])
    RunOutput.at(str(root), s3).commit(results)
    return str(root)


def meta(run_root: Path, job: str, name: str) -> dict:
    return json.loads((run_root / "jobs" / job / name).read_text())


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> str:
    return write_trees(tmp_path_factory.mktemp("trees") / "trees")


@pytest.fixture(scope="module")
def sft_run(trees, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    marker = out / "crashed"
    proc = run_job("train_sft.py", f"--data.trees={trees}", f"--output={out}", "--run_id=run",
                   "--optim.max_steps=6", "--optim.save_steps=3", "--optim.learning_rate=2e-3",
                   "--data.max_examples=4", "--scaling.max_failures=1",
                   env={"ALOE_TRAIN_FAULT": f"4:{marker}"})
    return out, proc, marker


def test_sft_trains_lora_on_two_workers_resumes_after_a_crash_and_exports(sft_run, bundled_model_path):
    out, proc, marker = sft_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    root = out / "run"
    # the rows trained on are exported in our schema, one conversation per tree
    table = storage.read_parquet(str(root / "sft"))
    assert table.schema.equals(SFT) and table.num_rows == 4
    # a worker died after step 4; Ray Train restarted the group from the step-3 checkpoint
    assert marker.exists() and "fault injection: worker exits at step 4" in proc.stdout + proc.stderr
    assert "resuming from the checkpoint at step 3" in proc.stdout + proc.stderr
    history = meta(root, "train_sft", "metrics.json")["history"]
    steps = [h["step"] for h in history if "loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6]  # every step once: resumed, not restarted or repeated
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0]  # a tiny fixed set: the loss goes down
    assert all(h.get("train_tokens_per_second", 0) > 0 for h in history if "loss" in h)
    assert meta(root, "train_sft", "manifest.json")["preflight"]["checked"] == 4
    assert list((root / "checkpoints" / "sft").glob("checkpoint_*/checkpoint/trainer_state.json"))  # metrics saved with it
    # LoRA B matrices start at zero: training moved them
    from safetensors.torch import load_file

    adapter = load_file(root / "adapters" / "sft" / "adapter_model.safetensors")
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and all(float(t.abs().sum()) > 0 for t in lora_b)
    assert json.loads((root / "adapters" / "sft" / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == "smollm2-135m"
    base = load_file(Path(bundled_model_path) / "model.safetensors")
    merged = load_file(root / "models" / "sft" / "model.safetensors")
    changed = [k for k in base if k in merged and "q_proj" in k and not (base[k] == merged[k]).all()]
    assert changed  # the merged folder holds the trained weights
    manifest = meta(root, "train_sft", "manifest.json")
    assert manifest["rows"] == 4 and manifest["metrics"]["loss"] == losses[-1]


def _generate(model_dir: str) -> str:
    from aloe_ray.engines.base import ChatRequest, Sampling
    from aloe_ray.engines.hf import HFEngine

    engine = HFEngine(model_dir, model_name="trained", max_batch_size=2, batch_wait_ms=10)
    (c,) = asyncio.run(engine.chat([ChatRequest(messages=({"role": "user", "content": "Say hello."},),
                                                sampling=Sampling(temperature=0.0, max_tokens=8, seed=0))]))
    return c.text


def test_the_sft_result_loads_in_the_engine_and_as_a_served_adapter(sft_run, bundled_model_path):
    out, proc, _ = sft_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    root = out / "run"
    assert _generate(str(root / "models" / "sft"))  # the merged folder generates in our hf engine
    from aloe_ray.engines.models import resolve_adapter

    # what the serving app does with `adapters: [{name, path}]`
    served = resolve_adapter(bundled_model_path, str(root / "adapters" / "sft"))
    assert _generate(served)


def test_dpo_from_the_sft_output_makes_the_reward_margin_positive(sft_run, trees, tmp_path):
    out, proc, _ = sft_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    dpo = run_job("train_dpo.py", f"--data.trees={trees}", f"--output={out}", "--run_id=run",
                  f"--from_sft={out / 'run'}", "--optim.max_steps=5", "--optim.save_steps=5",
                  "--optim.learning_rate=1e-3", "--data.max_examples=4", "--rejected=one")
    assert dpo.returncode == 0, dpo.stderr[-4000:]
    root = out / "run"  # the same run root as the SFT run: the stages do not collide
    table = storage.read_parquet(str(root / "dpo"))
    assert table.schema.equals(DPO) and table.num_rows == 4
    history = [h for h in meta(root, "train_dpo", "metrics.json")["history"] if "rewards/margins" in h]
    assert len(history) == 5
    assert history[-1]["rewards/margins"] > 0 and history[-1]["loss"] < history[0]["loss"]
    manifest = meta(root, "train_dpo", "manifest.json")
    assert manifest["base_model"] == str(root / "models" / "sft")
    assert (root / "models" / "dpo" / "config.json").exists() and (root / "adapters" / "dpo").is_dir()
    assert meta(root, "train_sft", "manifest.json")["job"] == "train_sft"  # untouched by the DPO run


def test_full_fine_tuning_to_s3(s3_bucket, tmp_path, bundled_model_path):
    from aloe_ray.engines.models import resolve_model

    trees = write_trees(f"s3://{s3_bucket}/trees/run1", n=2, turns=2)
    out = f"s3://{s3_bucket}/train"
    proc = run_job("train_sft.py", f"--data.trees={trees}", f"--output={out}", "--run_id=full",
                   "--lora.enabled=false", "--scaling.num_workers=1", "--optim.max_steps=2",
                   "--optim.save_steps=2", "--optim.learning_rate=1e-4")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert storage.list_files(f"{out}/full/checkpoints/sft", "trainer_state.json")  # checkpoints on S3
    assert not storage.exists(f"{out}/full/adapters/sft/adapter_config.json")
    merged = resolve_model(f"{out}/full/models/sft")  # the engines' s3:// model path
    from safetensors.torch import load_file

    base, tuned = load_file(Path(bundled_model_path) / "model.safetensors"), load_file(Path(merged) / "model.safetensors")
    assert any(not (base[k] == tuned[k]).all() for k in base if "mlp" in k)  # full fine-tuning moved the MLPs too
    assert json.loads(storage.read_text(f"{out}/full/jobs/train_sft/metrics.json"))["final"]["step"] == 2


def test_bad_input_fails_before_ray_starts(tmp_path, trees):
    proc = run_job("train_sft.py", f"--output={tmp_path}")
    assert proc.returncode == 2 and "set exactly one of data.trees" in proc.stderr
    proc = run_job("train_sft.py", f"--data.trees={tmp_path / 'nope'}", f"--output={tmp_path}")
    assert proc.returncode == 2 and "no trees table under" in proc.stderr
    no_probs = storage.read_parquet(f"{trees}/nodes").drop_columns(["judge_probs"])
    no_probs = no_probs.append_column(NODES.field("judge_probs"), pa.nulls(no_probs.num_rows, pa.list_(pa.float32())))
    storage.write_parquet(str(tmp_path / "unsure" / "nodes" / "part-0.parquet"), no_probs.select(NODES.names))
    storage.write_parquet(str(tmp_path / "unsure" / "trees" / "part-0.parquet"), storage.read_parquet(f"{trees}/trees"))
    proc = run_job("train_dpo.py", f"--data.trees={tmp_path / 'unsure'}", f"--output={tmp_path}",
                   "--min_judge_margin=0.5")
    assert proc.returncode == 2 and "no dpo rows to train on" in proc.stderr and "after the filters" in proc.stderr
    proc = run_job("train_dpo.py", f"--data.trees={trees}", f"--output={tmp_path}", f"--from_sft={tmp_path}")
    assert proc.returncode == 2 and "no merged model" in proc.stderr
    proc = run_job("train_sft.py", f"--data.trees={trees}", "--lora.r=0")
    assert proc.returncode == 2 and "lora.r" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
