"""SFT / DPO end to end: rows from trees, exported as a table; a Ray Train `TorchTrainer` around
TRL; checkpoints under the run root; the final model exported so every engine loads it.

What a run writes under `<output>/<run_id>/` (the same run root as the trees it may share):
  sft/ or dpo/                 the rows trained on (Parquet, our schema)
  checkpoints/<task>/          Ray Train's run: checkpoint_*/checkpoint/ (HF checkpoints with trainer_state.json)
  models/<task>/               a plain Hugging Face model folder (the adapter merged in)
  adapters/<task>/             the LoRA adapter (LoRA runs); one folder of adapters, as vLLM's
                               dynamic LoRA loading (ray.serve.llm) expects
  jobs/train_<task>/           config.yaml, manifest.json, metrics.json (per-step loss, rewards, tokens/s)
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable

import pyarrow as pa

from aloe_ray import storage
from aloe_ray.config import save_config
from aloe_ray.config.train import TrainDPOConfig, TrainSFTConfig
from aloe_ray.engines.models import check_model_spec
from aloe_ray.pipeline.generate import package_versions
from aloe_ray.pipeline.run_output import RunOutput
from aloe_ray.schema import DPO, SFT
from aloe_ray.storage import S3Options
from aloe_ray.train.datasets import NODE_COLUMNS, DpoFilters, TreeDataError, dpo_pairs, sft_examples

class TrainingFailed(RuntimeError):
    """Training did not finish (workers failed more often than scaling.max_failures allows)."""


PACKAGES = ("aloe-ray", "ray", "torch", "transformers", "trl", "peft", "accelerate", "datasets")


def s3_options(cfg) -> S3Options:
    return S3Options(endpoint_url=cfg.storage.s3_endpoint_url, region=cfg.storage.s3_region)


def absolute(uri: str) -> str:
    """Local paths made absolute: Ray workers do not share the driver's working directory."""
    if storage.is_local(uri):
        return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    return uri


def base_model(cfg) -> str:
    if isinstance(cfg, TrainDPOConfig) and cfg.from_sft:
        return absolute(storage.join(cfg.from_sft, "models", "sft"))
    if cfg.model.startswith((".", "/", "~", "file://")) or os.path.isdir(cfg.model):
        return absolute(cfg.model)
    return cfg.model


def training_rows(cfg, task: str, s3: S3Options, dropped: Counter | None = None) -> pa.Table:
    """The rows to train on, validated; raises TreeDataError with the reason when there are none.
    What the filters dropped (truncated replies, DPO filters) is counted in `dropped` by reason."""
    dropped = Counter() if dropped is None else dropped
    schema = SFT if task == "sft" else DPO
    if cfg.data.table:
        try:
            table = storage.read_parquet(cfg.data.table, s3)
        except FileNotFoundError:
            raise TreeDataError(f"data.table not found: {cfg.data.table}") from None
        if task == "dpo" and "source" not in table.column_names:  # exported before pairs recorded their source
            table = table.append_column("source", pa.array(["trees"] * table.num_rows, pa.string()))
        missing = set(schema.names) - set(table.column_names)
        if missing:
            raise TreeDataError(f"data.table {cfg.data.table} is not a {task} table: lacks {sorted(missing)}")
        table = table.select(schema.names).cast(schema)
    else:
        table = rows_from_trees(cfg.data.trees, task, cfg, s3, dropped)
    id_col = "example_id" if task == "sft" else "pair_id"
    table = table.sort_by(id_col)
    if cfg.data.max_examples:
        table = table.slice(0, cfg.data.max_examples)
    if table.num_rows == 0:
        why = f" (dropped: {dict(dropped)})" if dropped else ""
        raise TreeDataError(f"no {task} rows to train on from {cfg.data.trees or cfg.data.table}"
                            + (" after the filters" if task == "dpo" else "") + why
                            + ("; --keep_truncated=true keeps replies cut at max_tokens" if any(
                                "truncated" in k for k in dropped) else ""))
    return table


def rows_from_trees(trees: str, task: str, cfg, s3: S3Options, dropped: Counter) -> pa.Table:
    """SFT or DPO rows of one or more tree runs (comma-separated run roots), with `cfg`'s filters
    (loss_on; rejected, personalized_chosen_only, min_judge_margin; keep_truncated). Shared by
    the training jobs and the dataset export. Only committed trees count, one part's nodes at a
    time (`RunOutput.committed`); trees whose nodes are incomplete are counted in `dropped`."""
    rows: list[dict] = []
    for root in [r.strip() for r in trees.split(",") if r.strip()]:
        out = RunOutput.at(root, s3)
        if not storage.exists(out.table("trees"), s3):
            raise TreeDataError(f"no trees table under {root}: is it a tree run root (<output>/<run_id>)?")
        broken: list[str] = []
        for part in out.committed((), NODE_COLUMNS, broken=broken):
            nodes = part.nodes.to_pylist()
            if task == "sft":
                rows += sft_examples(nodes, loss_on=cfg.loss_on.value, keep_truncated=cfg.keep_truncated,
                                     dropped=dropped)
            else:
                rows += dpo_pairs(nodes, DpoFilters(cfg.personalized_chosen_only, cfg.min_judge_margin,
                                                    cfg.rejected.value, cfg.keep_truncated), dropped=dropped)
        if broken:
            dropped["tree_nodes_incomplete"] += len(broken)  # a rerun of the tree job grows them again
    return pa.Table.from_pylist(rows, schema=SFT if task == "sft" else DPO)


def load_tokenizer(model: str, s3: S3Options):
    """The tokenizer of a model spec, without downloading a remote model's weights."""
    from transformers import AutoTokenizer

    from aloe_ray.engines.models import resolve_model
    from aloe_ray.train.export import TOKENIZER_FILES

    if storage.is_local(model) or "://" not in model:
        return AutoTokenizer.from_pretrained(resolve_model(model, s3))
    import tempfile

    tmp = tempfile.mkdtemp(prefix="aloe-tokenizer-")
    for name in (*TOKENIZER_FILES, "config.json"):
        uri = storage.join(model, name)
        if storage.exists(uri, s3):
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(storage.read_bytes(uri, s3))
    return AutoTokenizer.from_pretrained(tmp)


def check_lengths(tokenizer, table: pa.Table, task: str, max_length: int, sample: int = 1000) -> dict:
    """Tokenize (a sample of) the rows as the workers will, before any worker starts: a chat
    template that cannot give per-turn masks fails here, and rows that `max_length` cuts are
    counted (their late turns are the ones ALOE measures)."""
    from aloe_ray.train.tokenize import tokenize_conversation

    rows = table.slice(0, sample).to_pylist()
    lengths, cut, dropped = [], 0, 0
    for r in rows:
        if task == "sft":
            out = tokenize_conversation(tokenizer, r["messages"], r["assistant_targets"], max_length=max_length)
            lengths.append(out["length"])
            cut += out["targets_cut"]
        else:
            prompt = len(tokenizer.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True,
                                                       return_dict=True)["input_ids"])
            longest = max(len(tokenizer.apply_chat_template(r["prompt"] + r[k], tokenize=True,
                                                             return_dict=True)["input_ids"]) for k in ("chosen", "rejected"))
            lengths.append(longest)
            dropped += prompt >= max_length
    over = sum(1 for n in lengths if n > max_length)
    return {"checked": len(rows), "max_length": max_length, "longest": max(lengths, default=0),
            "over_max_length": over, "targets_cut": cut, "pairs_dropped": dropped}


def run_training(cfg: TrainSFTConfig | TrainDPOConfig, task: str, log: Callable[[str], None] = print) -> dict:
    started = time.time()
    s3 = s3_options(cfg)
    model = base_model(cfg)
    if not (isinstance(cfg, TrainDPOConfig) and cfg.from_sft):
        check_model_spec(model)
    elif not storage.exists(storage.join(model, "config.json"), s3):
        raise TreeDataError(f"from_sft: no merged model at {model} (run jobs/train_sft.py first)")
    # Bad input fails here, before Ray starts or any model loads.
    dropped: Counter = Counter()
    table = training_rows(cfg, task, s3, dropped)
    if dropped:
        log(f"[aloe-ray] {task} rows: dropped " + ", ".join(f"{n} {why}" for why, n in sorted(dropped.items()))
            + ("" if cfg.keep_truncated else " (replies cut at max_tokens are never targets; --keep_truncated=true keeps them)"))
    root = absolute(storage.join(cfg.output, cfg.run_id))
    meta = storage.join(root, "jobs", f"train_{task}")
    storage.write_text(storage.join(meta, "config.yaml"), save_config(cfg), s3)
    table_uri = storage.join(root, task, "part-0.parquet")
    storage.write_parquet(table_uri, table, s3)
    preflight = check_lengths(load_tokenizer(model, s3), table, task, cfg.optim.max_length)
    if preflight["over_max_length"]:
        log(f"[aloe-ray] warning: {preflight['over_max_length']} of {preflight['checked']} checked rows exceed "
            f"optim.max_length={cfg.optim.max_length} (longest {preflight['longest']} tokens): "
            + (f"{preflight['targets_cut']} assistant turns lose their loss" if task == "sft" else
               f"{preflight['pairs_dropped']} pairs lose their whole reply (TRL drops them), the rest are cut")
            + "; raise optim.max_length to keep late turns")
    log(f"[aloe-ray] {task} run {cfg.run_id}: {table.num_rows} rows -> {storage.join(root, task)}; "
        f"model {model} ({'LoRA r=%d' % cfg.lora.r if cfg.lora.enabled else 'full fine-tuning'}), "
        f"{cfg.scaling.num_workers} worker(s){' with GPUs' if cfg.scaling.use_gpu else ' on CPU'}")

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from aloe_ray.train.export import export_model
    from aloe_ray.train.worker import train_loop

    if not ray.is_initialized():
        ray.init(**cfg.ray.init_kwargs())
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and storage.is_local(root) and not os.environ.get("ALOE_SHARED_FS"):
        raise TreeDataError(f"output {cfg.output} is a local path but the cluster has {len(nodes)} nodes: workers on "
                            "other nodes could not read the rows or share checkpoints. Use s3://... (or set "
                            "ALOE_SHARED_FS=1 if the path is on a filesystem every node mounts)")
    fs, path = storage.filesystem_for(storage.join(root, "checkpoints"), s3)
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": sc.gpus_per_worker} if sc.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=_loop_config(cfg, task, model, table_uri, s3),
        scaling_config=ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=task,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=sc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.optim.checkpoints_to_keep),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray Train's WorkerGroupError / ControllerError after max_failures
        raise TrainingFailed(f"training failed after {sc.max_failures} restart(s); rerun with the same "
                             f"run_id to resume from the last checkpoint under {storage.join(root, 'checkpoints', task)}:\n"
                             f"{exc}") from exc
    if result.checkpoint is None:
        raise TrainingFailed(f"training finished without a checkpoint (error: {result.error})")
    train_s = time.time() - started
    log(f"[aloe-ray] training done; exporting the model from {result.checkpoint.path}")
    export = ray.remote(num_cpus=min(sc.cpus_per_worker, 1))(export_model)
    written = ray.get(export.remote(result.checkpoint, base_model=model, lora=cfg.lora.enabled,
                                    merged_dest=storage.join(root, "models", task),
                                    adapter_dest=storage.join(root, "adapters", task), s3=s3))
    history = (written.pop("trainer_state") or {}).get("log_history", [])
    metrics = {"final": _final(history, result.metrics), "history": history}
    storage.write_text(storage.join(meta, "metrics.json"), json.dumps(metrics, indent=2), s3)
    manifest = {
        "run_id": cfg.run_id, "job": f"train_{task}", "output": root, "base_model": model,
        "rows": table.num_rows, "dropped": dict(sorted(dropped.items())), "keep_truncated": cfg.keep_truncated,
        "preflight": preflight, "model": written, "checkpoint": result.checkpoint.path,
        "metrics": metrics["final"],
        "timing": {"wall_s": time.time() - started, "train_s": train_s},
        "packages": package_versions(PACKAGES), "config": cfg.model_dump(mode="json"),
    }
    storage.write_text(storage.join(meta, "manifest.json"), json.dumps(manifest, indent=2, default=str), s3)
    log(f"[aloe-ray] finished {task} run {cfg.run_id}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics["final"].items()
                                                                  if isinstance(v, float)))
    log(f"[aloe-ray] model: {written['merged']}" + (f"  adapter: {written['adapter']}" if "adapter" in written else ""))
    return manifest


def _loop_config(cfg, task: str, model: str, table_uri: str, s3: S3Options) -> dict:
    o = cfg.optim
    loop = {
        "task": task, "model": model, "table": table_uri,
        "s3": {"endpoint_url": s3.endpoint_url, "region": s3.region},
        "use_gpu": cfg.scaling.use_gpu, "lora": cfg.lora.model_dump(),
        "learning_rate": cfg.learning_rate(), "num_epochs": o.num_epochs, "max_steps": o.max_steps,
        "per_device_batch_size": o.per_device_batch_size, "gradient_accumulation_steps": o.gradient_accumulation_steps,
        "max_length": o.max_length, "warmup_ratio": o.warmup_ratio, "weight_decay": o.weight_decay,
        "logging_steps": o.logging_steps, "save_steps": o.save_steps, "checkpoints_to_keep": o.checkpoints_to_keep,
        "seed": o.seed, "bf16": o.bf16, "gradient_checkpointing": o.gradient_checkpointing,
        "fault": os.environ.get("ALOE_TRAIN_FAULT"),
    }
    if task == "dpo":
        loop.update(beta=cfg.beta, loss_type=cfg.loss_type)
    return loop


def _final(history: list[dict], reported: dict | None) -> dict:
    final: dict = {}
    for entry in history:
        final.update(entry)
    final.update(reported or {})
    keep = ("loss", "train_loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected",
            "train_tokens_per_second", "num_input_tokens_seen", "epoch", "step", "train_runtime")
    out = {k: final[k] for k in keep if k in final}
    losses = [e["loss"] for e in history if "loss" in e]
    if losses:
        out["first_loss"] = float(losses[0])
    return out


def run_job(task: str, parse_config: Callable, argv: list[str] | None) -> int:
    """The body of jobs/train_{sft,dpo}.py: parse, train, map bad input to exit code 2."""
    import sys

    from aloe_ray.config import ConfigError
    from aloe_ray.engines.models import ModelNotFoundError
    from aloe_ray.storage import StorageError

    try:
        cfg = parse_config(argv)
        run_training(cfg, task)
    except ConfigError as exc:
        hint = _tree_runs_hint() if "data.trees" in str(exc) else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    except (TreeDataError, StorageError, ModelNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _tree_runs_hint(output: str = "./aloe-data") -> str:
    """Local tree runs the user may have meant (`./dev generate` writes them)."""
    from pathlib import Path

    runs = sorted((p.parent for p in Path(output).glob("*/trees")), key=lambda p: p.stat().st_mtime)
    if not runs:
        return "\n  (no tree runs under ./aloe-data yet: `./dev generate` grows some)"
    return "\n  tree runs found: " + ", ".join(f"--data.trees={p}" for p in runs[-3:])
