"""Turn the final training checkpoint into folders that load everywhere.

`<run root>/adapters/<task>/` (LoRA runs): the PEFT adapter and tokenizer, for serving adapters
by name; `<run root>/models/<task>/`: a plain Hugging Face model folder (adapter merged into the base,
or the fully fine-tuned weights without optimizer state) that the hf and vllm engines and the
serving app load by path.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from aloe_ray import storage
from aloe_ray.storage import S3Options

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "tokenizer.model")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def export_model(checkpoint, *, base_model: str, lora: bool, merged_dest: str, adapter_dest: str,
                 s3: S3Options) -> dict:
    """Write the adapter (LoRA) and the merged model from a Ray Train checkpoint made by
    `RayTrainReportCallback`; returns the written URIs. Runs as a Ray task next to the data."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aloe_ray.engines.models import resolve_model

    written = {}
    with checkpoint.as_directory() as ckpt_root, tempfile.TemporaryDirectory(prefix="aloe-export-") as tmp:
        ckpt = Path(ckpt_root) / "checkpoint"
        merged = Path(tmp) / "merged"
        tokenizer = AutoTokenizer.from_pretrained(ckpt)
        if lora:
            adapter = Path(tmp) / "adapter"
            adapter.mkdir()
            for name in (*ADAPTER_FILES, *TOKENIZER_FILES):
                if (ckpt / name).exists():
                    shutil.copy2(ckpt / name, adapter / name)
            if not (adapter / "adapter_config.json").exists():
                raise FileNotFoundError(f"no adapter_config.json in the final checkpoint {ckpt}")
            cfg = json.loads((adapter / "adapter_config.json").read_text())
            cfg["base_model_name_or_path"] = base_model  # the spec, not this machine's cache path
            (adapter / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
            from peft import PeftModel

            # Merge in the base's own dtype: an 8B bf16 base stays a 16 GB folder, not 32 GB.
            base = AutoModelForCausalLM.from_pretrained(resolve_model(base_model, s3), dtype="auto")
            model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
            written["adapter"] = adapter_dest
            upload_dir(adapter, written["adapter"], s3)
        else:
            model = AutoModelForCausalLM.from_pretrained(ckpt, dtype="auto")
        model.save_pretrained(merged)
        tokenizer.save_pretrained(merged)
        written["merged"] = merged_dest
        upload_dir(merged, written["merged"], s3)
        state = ckpt / "trainer_state.json"
        written["trainer_state"] = json.loads(state.read_text()) if state.exists() else None
    return written


def upload_dir(local: Path, uri: str, s3: S3Options) -> None:
    """Copy a folder to a local path or s3:// prefix, replacing what was there. Local targets are
    swapped in by rename, so readers never see half a model."""
    import pyarrow.fs as pafs

    fs, path = storage.filesystem_for(uri, s3)
    if isinstance(fs, pafs.LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        shutil.copytree(local, staging, dirs_exist_ok=True)
        old = target.with_name(f".{target.name}-old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        return
    fs.delete_dir_contents(path, missing_dir_ok=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
