"""The Ray Train worker loop: TRL's SFTTrainer or DPOTrainer (with PEFT LoRA or full fine-tuning)
wrapped with Ray's Transformers integration (report callback, trainer preparation, resume).

Runs inside each `TorchTrainer` worker; Ray has set up the torch process group (gloo on CPU,
nccl on GPU), which Hugging Face's Trainer picks up for DDP.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from transformers import TrainerCallback

TASKS = ("sft", "dpo")


def train_loop(config: dict) -> None:
    """`config` is `aloe_ray.pipeline.train._loop_config(...)`: plain values, picklable."""
    out_dir = tempfile.mkdtemp(prefix=f"aloe-{config['task']}-")
    try:
        _train(config, out_dir)
    finally:  # the Hugging Face checkpoints here were copied to Ray Train's storage already
        shutil.rmtree(out_dir, ignore_errors=True)


def _train(config: dict, out_dir: str) -> None:
    import ray.train
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aloe_ray.engines.models import resolve_model
    from aloe_ray.storage import S3Options, read_parquet

    task = config["task"]
    s3 = S3Options(**config["s3"])
    model_dir = resolve_model(config["model"], s3)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    use_gpu = config["use_gpu"]
    bf16 = config["bf16"] if config["bf16"] is not None else use_gpu
    # LoRA: the frozen base may sit in bf16 (PEFT keeps the adapter in fp32). Full fine-tuning
    # keeps fp32 master weights and lets bf16=True run the forward/backward in autocast: pure bf16
    # weights would round most updates at lr 1e-5 away.
    lora = config["lora"]["enabled"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 and lora else torch.float32)

    table = read_parquet(config["table"], s3)
    rows = table.to_pylist()
    peft_config = _peft_config(config["lora"]) if lora else None
    common = dict(
        output_dir=out_dir,
        learning_rate=config["learning_rate"],
        num_train_epochs=config["num_epochs"],
        max_steps=config["max_steps"],
        per_device_train_batch_size=config["per_device_batch_size"],
        gradient_accumulation_steps=config["gradient_accumulation_steps"],
        warmup_steps=config["warmup_ratio"],  # transformers 5: a float below 1 is a ratio
        weight_decay=config["weight_decay"],
        logging_steps=config["logging_steps"],
        save_strategy="steps",
        save_steps=config["save_steps"],
        save_total_limit=config["checkpoints_to_keep"],
        seed=config["seed"],
        bf16=bf16,
        gradient_checkpointing=config["gradient_checkpointing"],
        max_length=config["max_length"],
        use_cpu=not use_gpu,
        report_to="none",
        disable_tqdm=True,  # plain metric lines (loss, rewards...) in the worker logs
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
    )
    if task == "sft":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from aloe_ray.train.tokenize import tokenize_conversation

        data = Dataset.from_list([
            {k: v for k, v in tokenize_conversation(tokenizer, r["messages"], r["assistant_targets"],
                                                    max_length=config["max_length"]).items()
             if k in ("input_ids", "assistant_masks")}
            for r in rows
        ])
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=data, processing_class=tokenizer,
                             peft_config=peft_config)
    elif task == "dpo":
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        data = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
                                  for r in rows])
        args = DPOConfig(**common, beta=config["beta"], loss_type=[config["loss_type"]])
        # With LoRA the reference model is the base with the adapter disabled (ref_model=None);
        # for full fine-tuning TRL copies the starting model as the frozen reference.
        trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=data, processing_class=tokenizer,
                             peft_config=peft_config)
    else:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")

    if config.get("fault"):
        trainer.add_callback(_CrashOnce(config["fault"]))
    trainer.add_callback(RayTrainReportCallback())
    trainer = prepare_trainer(trainer)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # restarted after a crash, or a rerun of the same run: resume
        with checkpoint.as_directory() as ckpt:
            hf_ckpt = os.path.join(ckpt, RayTrainReportCallback.CHECKPOINT_NAME)
            print(f"[aloe-ray] resuming from the checkpoint at step {_global_step(hf_ckpt)} ({checkpoint.path})", flush=True)
            trainer.train(resume_from_checkpoint=hf_ckpt)
    else:
        trainer.train()


def _global_step(hf_checkpoint: str) -> int | None:
    import json

    try:
        with open(os.path.join(hf_checkpoint, "trainer_state.json")) as f:
            return json.load(f)["global_step"]
    except (OSError, KeyError, ValueError):
        return None


def _peft_config(lora: dict):
    from peft import LoraConfig

    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=lora["target_modules"], task_type="CAUSAL_LM")


class _CrashOnce(TrainerCallback):
    """Fault injection for recovery tests and drills (env `ALOE_TRAIN_FAULT=STEP:MARKER_FILE`):
    rank 0's process dies hard after optimizer step STEP, once (the marker file records it), the
    way a preempted node would; Ray Train then restarts the workers from the last checkpoint."""

    def __init__(self, spec: str) -> None:
        step, _, marker = spec.partition(":")
        self.step, self.marker = int(step), marker

    def on_step_end(self, args, state, control, **kwargs):
        import ray.train

        if (state.global_step == self.step and ray.train.get_context().get_world_rank() == 0
                and not os.path.exists(self.marker)):
            open(self.marker, "w").close()
            print(f"[aloe-ray] fault injection: worker exits at step {self.step}", flush=True)
            os._exit(1)
