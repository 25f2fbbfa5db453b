"""GPU check: run on a machine with a CUDA GPU and vLLM installed (`pip install -e .[vllm]`).

Exercises the real GPU paths and prints what held:
  1. the vllm engine backend in-process (generation, per-request seeds, constrained judge);
  2. the tree job with every role on a vllm engine (ray.serve.llm's LLMServer, num_gpus=1), a few
     short trees;
  3. jobs/train_sft on those trees: Ray Train with use_gpu=True, LoRA, bf16, a few steps (DDP
     over nccl with 2 workers when 2+ GPUs are visible; a single rank otherwise);
  4. jobs/train_dpo from the SFT output, likewise;
  5. the DPO model's merged folder loads and generates in the vllm engine;
  6. the Serve app on ray.serve.llm (backend vllm) with the SFT model as base and the DPO LoRA
     adapter multiplexed, through real HTTP and the openai client: base and adapter answer, and
     a constrained judge answer returns a probability for both choices; a job engine attached to
     the app's engine by deployment handle (`serve_app`) gets a probability per choice too.

    python benchmarks/gpu_check.py [--model smollm2-135m] [--trees 4] [--steps 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--trees", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()

    import torch

    assert torch.cuda.is_available(), "no CUDA GPU visible"
    print("GPU:", torch.cuda.get_device_name(0))
    from aloe_ray.engines.base import ChatRequest, Sampling
    from aloe_ray.engines.models import resolve_model
    from aloe_ray.engines.vllm_engine import VLLMEngine

    started = time.monotonic()
    engine = VLLMEngine(resolve_model(args.model), model_name=args.model, gpu_memory_utilization=0.3)
    print(f"[1] vllm engine up in {time.monotonic() - started:.0f}s")

    async def probe():
        ask = lambda s: ChatRequest(({"role": "user", "content": "Name a river."},), Sampling(0.9, 0.95, 16, s))
        outs = await engine.chat([ask(1), ask(1), ask(2)] + [ask(10 + i) for i in range(61)])
        judge = await engine.chat([ChatRequest(({"role": "user", "content": "A or B?"},), choices=("A", "B"))])
        return outs, judge[0]

    t = time.monotonic()
    outs, judge = asyncio.run(probe())
    tokens = sum(o.completion_tokens for o in outs)
    print(f"[1] 64 requests: {tokens / (time.monotonic() - t):.0f} tok/s; same seed same text: {outs[0].text == outs[1].text}; "
          f"judge {judge.text} probs {judge.choice_probs}")

    from aloe_ray.config import GenerateTreesConfig, load_config
    from aloe_ray.pipeline.generate import run_generation

    out = tempfile.mkdtemp(prefix="aloe-gpu-")
    cfg = load_config(GenerateTreesConfig, [
        f"--output={out}", "--run_id=gpu-check", f"--num_trees={args.trees}", "--tree.max_turns=3",
        "--engines.default.backend=vllm", f"--engines.default.model={args.model}", "--engines.default.num_gpus=1",
        "--engines.default.gpu_memory_utilization=0.3",
    ])
    manifest = run_generation(cfg)
    c = manifest["counts"]
    print(f"[2] tree job on vllm: {c['trees_ok']}/{c['trees_requested']} trees ok, {c['nodes']} nodes, "
          f"{c['completion_tokens'] / manifest['timing']['grow_s']:.0f} tok/s")
    probs = judge.choice_probs or []
    servers = {r.get("server") for r in manifest["engines"]["default"]}
    held = {"trees": c["trees_ok"] == args.trees, "seeded": outs[0].text == outs[1].text,
            "trees_on_serve_llm": servers == {"AloeLLMServer"},
            "judge_probs_all_choices": len(probs) == 2 and all(p > 0 for p in probs) and abs(sum(probs) - 1) < 1e-3}
    engine = None  # free the in-process engine's GPU memory before training
    torch.cuda.empty_cache()

    from aloe_ray.config import load_config
    from aloe_ray.config.train import TrainDPOConfig, TrainSFTConfig
    from aloe_ray.pipeline.train import run_training

    gpu_train = [f"--output={out}", "--run_id=gpu-check", f"--data.trees={out}/gpu-check",
                 f"--model={args.model}", "--scaling.use_gpu=true",
                 f"--scaling.num_workers={min(torch.cuda.device_count(), 2)}",
                 f"--optim.max_steps={args.steps}", f"--optim.save_steps={args.steps}", "--optim.learning_rate=5e-4"]
    t = time.monotonic()
    sft = run_training(load_config(TrainSFTConfig, gpu_train), "sft")
    m = sft["metrics"]
    held["sft"] = m.get("loss") is not None and m["step"] == args.steps
    print(f"[3] SFT on GPU: {time.monotonic() - t:.0f}s, loss {m.get('first_loss')} -> {m.get('loss')}, "
          f"{m.get('train_tokens_per_second')} tok/s, model {sft['model']['merged']}")
    t = time.monotonic()
    dpo = run_training(load_config(TrainDPOConfig, [*gpu_train, f"--from_sft={out}/gpu-check"]), "dpo")
    m = dpo["metrics"]
    held["dpo"] = m.get("rewards/margins") is not None and m["step"] == args.steps
    print(f"[4] DPO on GPU: {time.monotonic() - t:.0f}s, loss {m.get('first_loss')} -> {m.get('loss')}, "
          f"reward margin {m.get('rewards/margins')}, accuracy {m.get('rewards/accuracies')}")

    tuned = VLLMEngine(dpo["model"]["merged"], model_name="dpo", gpu_memory_utilization=0.3)
    (reply,) = asyncio.run(tuned.chat([ChatRequest(({"role": "user", "content": "Hi! Any tips for a rainy day?"},),
                                                   Sampling(0.0, 1.0, 24, 0))]))
    held["vllm_loads_trained"] = bool(reply.text)
    print(f"[5] vllm on the DPO model: {reply.text!r}")
    tuned.engine.shutdown()
    del tuned
    torch.cuda.empty_cache()
    held.update(serve_llm_check(sft["model"]["merged"], dpo["model"].get("adapter")))
    print("held:", held)
    print("GPU CHECK", "PASSED" if all(held.values()) else "FAILED")


def serve_llm_check(base: str, adapter: str | None) -> dict:
    """[6] the vllm Serve app with the adapter, on loopback."""
    import os

    import ray
    from openai import OpenAI
    from ray import serve

    from serving.app import build_app

    if adapter is None:
        print("[6] no LoRA adapter was written: skipped")
        return {"serve_llm_lora": False}
    os.environ["ALOE_GPU_CHECK_KEY"] = "gpu-check"
    ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8123})
    started = time.monotonic()
    serve.run(build_app({"backend": "vllm", "model": base, "served_model_name": "sft", "num_gpus": 1,
                         "gpu_memory_utilization": 0.3, "api_key_env": "ALOE_GPU_CHECK_KEY",
                         "adapters": [{"name": "dpo", "path": adapter}]}), name="aloe", route_prefix="/")
    client = OpenAI(base_url="http://127.0.0.1:8123/v1", api_key="gpu-check", timeout=120)
    ask = [{"role": "user", "content": "Any tips for a rainy day?"}]
    replies = {m: client.chat.completions.create(model=m, messages=ask, max_tokens=24, temperature=0.0)
               .choices[0].message.content for m in ("sft", "sft:dpo")}
    judge = client.chat.completions.create(
        model="sft", messages=[{"role": "user", "content": "A or B?"}], max_tokens=1, logprobs=True, top_logprobs=2,
        extra_body={"structured_outputs": {"choice": ["A", "B"]}})
    top = judge.choices[0].logprobs.content[0].top_logprobs if judge.choices[0].logprobs else []
    print(f"[6] ray.serve.llm app up in {time.monotonic() - started:.0f}s; replies {replies}; "
          f"judge {judge.choices[0].message.content} logprobs {[(t.token, t.logprob) for t in top]}")
    from aloe_ray.config.engines import EngineConfig
    from aloe_ray.engines.base import ChatRequest
    from aloe_ray.engines.deployment import start_engines

    with start_engines({"judge": EngineConfig(backend="vllm", model="sft", serve_app="aloe")},
                       prefix="aloe-engine.gpu-check", namespace=ray.get_runtime_context().namespace) as engines:
        (attached,) = asyncio.run(engines["judge"].chat(
            [ChatRequest(({"role": "user", "content": "A or B?"},), choices=("A", "B"))], "gpu-check"))
    print(f"[6] job engine attached to the app: judge {attached.text} probs {attached.choice_probs}")
    serve.shutdown()
    probs = attached.choice_probs or []
    return {"serve_llm_lora": all(replies.values()),
            "serve_llm_judge_probs": {t.token for t in top} == {"A", "B"},
            "job_attaches_to_serve_llm": len(probs) == 2 and all(p > 0 for p in probs)}


if __name__ == "__main__":
    main()
