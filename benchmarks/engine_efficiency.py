"""The hf engine's throughput against static left-padded batched `model.generate`, one run.

32 realistic role prompts (benchmarks/role_prompts.py: the tree roles' real templates on the seed
personas, ~300-460 prompt tokens), 48 new tokens, greedy. The baseline prefills each batch of B
prompts together, left-padded, and decodes until all of them end; the engine gets all 32 at once
with max_batch_size B (continuous batching, per-prompt prefill). tok/s counts generated tokens up
to each reply's end (EOS excluded), for both. Target: engine >= 90% of static at the same B.

    PYTHONPATH=$PWD python benchmarks/engine_efficiency.py [--batch-sizes 16 32] [--new-tokens 48]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def static_generate(model, tokenizer, chats, batch: int, new_tokens: int, eos_ids: set[int]) -> tuple[float, int]:
    import torch

    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    started, generated = time.monotonic(), 0
    for i in range(0, len(chats), batch):
        prompts = [tokenizer.apply_chat_template(list(c), add_generation_prompt=True, tokenize=False)
                   for c in chats[i:i + batch]]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            generated += next((k for k, t in enumerate(row) if t in eos_ids), len(row))
    return time.monotonic() - started, generated


def engine_generate(engine, chats, new_tokens: int) -> tuple[float, int]:
    from aloe_ray.engines.base import ChatRequest, Sampling

    reqs = [ChatRequest(c, Sampling(0.0, 1.0, new_tokens, 0)) for c in chats]
    started = time.monotonic()
    out = asyncio.run(engine.chat(reqs))
    return time.monotonic() - started, sum(c.completion_tokens for c in out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=32)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from aloe_ray.engines.hf import HFEngine
    from aloe_ray.engines.models import resolve_model
    from role_prompts import role_prompts

    path = resolve_model("smollm2-135m")
    chats = role_prompts(args.prompts)
    engine = HFEngine(path, max_batch_size=max(args.batch_sizes), batch_wait_ms=20, prefix_cache_entries=0)
    model, tokenizer = engine.model, engine.tokenizer  # the same weights and threads for both
    engine_generate(engine, chats[:4], 8)  # warm-up
    static_generate(model, tokenizer, chats[:4], 4, 8, engine.eos_ids)
    print(f"engine efficiency: {len(chats)} role prompts, {args.new_tokens} new tokens, greedy, "
          f"{torch.get_num_threads()} torch threads")
    print(f"{'batch':>5}  {'static tok/s':>12}  {'engine tok/s':>12}  {'engine/static':>13}  tokens static/engine")
    for b in args.batch_sizes:
        s_wall, s_tok = static_generate(model, tokenizer, chats, b, args.new_tokens, engine.eos_ids)
        engine.max_batch_size = b
        e_wall, e_tok = engine_generate(engine, chats, args.new_tokens)
        print(f"{b:>5}  {s_tok / s_wall:>12.1f}  {e_tok / e_wall:>12.1f}  {(e_tok / e_wall) / (s_tok / s_wall):>12.0%}"
              f"  {s_tok}/{e_tok}", flush=True)


if __name__ == "__main__":
    main()
