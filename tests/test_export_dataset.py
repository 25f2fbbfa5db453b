"""jobs/export_dataset.py: a tree run's rows as Hugging Face `datasets` folders plus a card,
local and on S3 (moto). The trees come from the scripted engine (a fixture for tree logic)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter

import boto3
import pytest

from aloe_ray.engines.base import Completion
from aloe_ray.personas.model import Persona
from aloe_ray.pipeline.run_output import RunOutput
from aloe_ray.train.datasets import dpo_pairs, sft_examples
from aloe_ray.trees import TreeShape, grow_tree, make_tree_specs
from conftest import REPO
from scripted_engine import ScriptedEngine
from test_trees import roles_for


class _CutsPlain(ScriptedEngine):
    async def chat(self, requests, affinity=None):
        out = await super().chat(requests, affinity)
        return [Completion(c.text, "length", c.prompt_tokens, c.completion_tokens, c.model, c.choice_probs)
                if c.text.startswith("plain") and c.text.endswith("7") else c for c in out]


def write_run(output: str, run_id: str, s3=None) -> RunOutput:
    out = RunOutput(output, run_id, s3)
    personas = [Persona.pair(f"She is {30 + i} and bakes bread in Lyon.", f"Dry humour, terse {i}.") for i in range(5)]
    specs = make_tree_specs(run_id, personas)

    async def grow_all():
        return await asyncio.gather(*(grow_tree(s, roles_for(_CutsPlain()), TreeShape(3, 2, "random")) for s in specs))

    results = asyncio.run(grow_all())
    out.commit(results[:3])
    out.commit(results[3:])
    return out


def run_export(*args: str, env=None, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "export_dataset.py"), *args], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)


def test_export_writes_loadable_datasets_and_a_card(tmp_path):
    from datasets import load_from_disk

    out = write_run(str(tmp_path), "r1")
    nodes = out.read("nodes").to_pylist()
    proc = run_export(f"--trees={out.root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    dest = tmp_path / "r1" / "export" / "hf"
    dropped = Counter()
    expected_pairs = dpo_pairs(nodes, dropped=dropped)
    assert dropped  # some plain replies were cut: the export drops them as training does
    dpo = load_from_disk(str(dest / "dpo"))["train"]
    sft = load_from_disk(str(dest / "sft"))["train"]
    assert sorted(dpo["pair_id"]) == sorted(p["pair_id"] for p in expected_pairs)
    assert len(sft) == len(sft_examples(nodes)) == 5
    assert dpo[0]["chosen"][0]["role"] == "assistant" and dpo[0]["prompt"][-1]["role"] == "user"
    card = (dest / "README.md").read_text()
    facts = json.loads((dest / "export.json").read_text())
    assert card.startswith("---\nlicense: other") and f"{len(expected_pairs)} preference pairs" in card
    assert "scripted" in card and "aloe-ray/trees-v2" in card and "Data quality" in card
    assert facts["dropped"]["dpo"] == dict(sorted(dropped.items()))
    assert facts["runs"][0]["trees_ok"] == 5 and facts["runs"][0]["personas"] == 5

    relative = run_export("--trees=r1", "--output=rel", cwd=tmp_path)  # a run root named without a folder
    assert relative.returncode == 0, relative.stderr[-3000:]
    assert len(load_from_disk(str(tmp_path / "rel" / "dpo"))["train"]) == len(expected_pairs)

    kept = run_export(f"--trees={out.root}", "--keep_truncated=true", f"--output={tmp_path / 'all'}")
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert len(load_from_disk(str(tmp_path / "all" / "dpo"))["train"]) == 5 * 3


def test_export_to_s3_and_bad_input(s3_bucket, s3_env, tmp_path):
    from aloe_ray.storage import S3Options

    out = write_run(f"s3://{s3_bucket}/aloe", "r2", S3Options())
    proc = run_export(f"--trees=s3://{s3_bucket}/aloe/r2", f"--output=s3://{s3_bucket}/exports/r2", env=s3_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).list_objects_v2(
        Bucket=s3_bucket, Prefix="exports/r2/")["Contents"]}
    assert {"exports/r2/README.md", "exports/r2/dpo/dataset_dict.json", "exports/r2/sft/train/dataset_info.json"} <= keys
    assert out.read("trees").num_rows == 5

    missing = run_export(f"--trees={tmp_path / 'nope'}")
    assert missing.returncode == 2 and "no trees table under" in missing.stderr
    unknown = run_export("--trees=x", "--keep_truncate=true")
    assert unknown.returncode == 2 and "did you mean 'keep_truncated'" in unknown.stderr


def test_training_rows_count_what_the_truncation_filter_drops(tmp_path):
    from aloe_ray.config import ConfigError, load_config
    from aloe_ray.config.train import TrainDPOConfig
    from aloe_ray.pipeline.train import TreeDataError, training_rows

    class _CutsAll(ScriptedEngine):
        async def chat(self, requests, affinity=None):
            return [Completion(c.text, "length" if not c.choice_probs else c.finish_reason, c.prompt_tokens,
                               c.completion_tokens, c.model, c.choice_probs) for c in await super().chat(requests, affinity)]

    out = RunOutput(str(tmp_path), "cut")
    [spec] = make_tree_specs("cut", [Persona.pair("He is 40 and fixes bikes.", "Terse.")])
    out.commit([asyncio.run(grow_tree(spec, roles_for(_CutsAll()), TreeShape(2, 2, "random")))])
    cfg = load_config(TrainDPOConfig, [f"--data.trees={out.root}"])
    dropped = Counter()
    with pytest.raises(TreeDataError, match=r"dropped: \{'chosen_truncated': 2\}.*--keep_truncated=true"):
        training_rows(cfg, "dpo", None, dropped)
    kept = training_rows(load_config(TrainDPOConfig, [f"--data.trees={out.root}", "--keep_truncated=true"]), "dpo", None)
    assert kept.num_rows == 2
    with pytest.raises(ConfigError):
        load_config(TrainDPOConfig, [f"--data.trees={out.root}", "--keep_truncated=maybe"])
