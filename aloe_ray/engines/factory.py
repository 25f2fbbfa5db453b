"""Build an in-process engine from its config (inside engine replicas, engines/deployment.py, and by tests)."""

from __future__ import annotations

from aloe_ray.config.engines import EngineBackend, EngineConfig
from aloe_ray.engines.base import ChatEngine
from aloe_ray.engines.models import check_model_spec, resolve_model
from aloe_ray.storage import S3Options


def build_engine(cfg: EngineConfig, s3: S3Options | None = None) -> ChatEngine:
    if cfg.backend == EngineBackend.openai:
        from aloe_ray.engines.openai_api import OpenAIEngine

        return OpenAIEngine(cfg.base_url or "", cfg.model, api_key_env=cfg.api_key_env,
                            timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
                            max_concurrency=cfg.max_concurrency)
    path = resolve_model(cfg.model, s3)
    if cfg.backend == EngineBackend.vllm:
        from aloe_ray.engines.vllm_engine import VLLMEngine

        return VLLMEngine(path, model_name=cfg.model, dtype=cfg.dtype,
                          tensor_parallel_size=cfg.tensor_parallel_size,
                          gpu_memory_utilization=cfg.gpu_memory_utilization,
                          max_input_tokens=cfg.max_input_tokens, max_model_len=cfg.max_model_len,
                          enable_prefix_caching=cfg.enable_prefix_caching, timeout_s=cfg.timeout_s)
    from aloe_ray.engines.hf import HFEngine

    return HFEngine(path, model_name=cfg.model, device=cfg.device, dtype=cfg.dtype,
                    max_batch_size=cfg.max_batch_size, batch_wait_ms=cfg.batch_wait_ms,
                    max_input_tokens=cfg.max_input_tokens, torch_threads=cfg.torch_threads,
                    prefix_cache_entries=cfg.prefix_cache_entries, timeout_s=cfg.timeout_s)


def check_engine(cfg: EngineConfig) -> None:
    """Fail fast, before Ray starts, on an engine whose model cannot resolve on this machine
    (an openai endpoint or an attached Serve app brings its own)."""
    if cfg.backend != EngineBackend.openai and not cfg.serve_app:
        check_model_spec(cfg.model)
