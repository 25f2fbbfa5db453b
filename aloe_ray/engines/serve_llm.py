"""vllm engines through ray.serve.llm: how a vllm engine is hosted, for the jobs and the GPU
Serve app alike (serving/llm_app.py).

ray.serve.llm's `LLMServer` hosts vLLM: the replica's placement group (one bundle per GPU for
tensor parallelism, packed on one node), engine start-up and shutdown, health checks, LoRA
multiplexing for the OpenAI routes, autoscaling by Serve. `AloeLLMServer` is that server plus
the call the jobs make by deployment handle (`complete`, the same call and client as the hf
deployment, engines/deployment.py): it runs the vllm backend's requests
(engines/vllm_engine.py: one probability per choice, the message-level prompt rule, token counts,
deadlines) on the server's own vLLM engine, so a job's calls mean what they mean on hf. The
server's OpenAI methods stay as ray.serve.llm wrote them.

The model is resolved inside the replica by our own resolver (the bundled model, a local folder,
or an s3:// prefix fetched with the job's S3 options), as the hf deployment does.
"""

from __future__ import annotations

from aloe_ray.config.engines import EngineConfig
from aloe_ray.engines.base import Completion, EngineError
from aloe_ray.engines.deployment import ENGINE_DEPLOYMENT, EngineCall, ReplicaCounters, deployment_options
from aloe_ray.engines.vllm_engine import REPLY_ROOM
from aloe_ray.storage import S3Options

try:
    from ray.serve.llm import LLMServer
except ImportError:  # a Ray without its LLM extras: the vllm backend says so when it is used
    LLMServer = object


def llm_config_kwargs(cfg: EngineConfig, *, model_id: str | None = None, lora_root: str | None = None,
                      max_loras: int = 0, max_lora_rank: int = 64, serve_options: dict | None = None) -> dict:
    """LLMConfig's arguments for one vllm engine. The model source is the config's model as
    written; AloeLLMServer replaces it with the folder it resolves in the replica.
    `serve_options`: replicas or autoscaling other than the config's (the Serve app's)."""
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if cfg.num_gpus else "float32")
    engine_kwargs = {
        "dtype": dtype,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "max_model_len": cfg.max_model_len or cfg.max_input_tokens + REPLY_ROOM,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "enable_prefix_caching": cfg.enable_prefix_caching,
    }
    if lora_root:
        engine_kwargs |= {"enable_lora": True, "max_lora_rank": max_lora_rank, "max_loras": max_loras}
    # The replica actor asks for nothing of its own: its CPUs are the first bundle's (ray.serve.llm
    # would otherwise add 1 CPU there), and each further GPU of tensor parallelism is a bundle.
    gpus = [{"GPU": 1}] * cfg.tensor_parallel_size if cfg.num_gpus else [{}]
    bundles = [{"CPU": cfg.num_cpus, **gpus[0]}] + gpus[1:]
    if serve_options is None:
        serve_options = {k: v for k, v in deployment_options(cfg).items()
                         if k in ("num_replicas", "autoscaling_config", "max_ongoing_requests")}
    return {
        "model_loading_config": {"model_id": model_id or cfg.model, "model_source": cfg.model},
        "lora_config": {"dynamic_lora_loading_path": lora_root, "max_num_adapters_per_replica": max_loras}
        if lora_root else None,
        "deployment_config": serve_options | {"ray_actor_options": {"num_cpus": 0}},
        "placement_group_config": {"bundles": bundles, "strategy": "STRICT_PACK"},
        "engine_kwargs": engine_kwargs,
        "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}},
    }


PREFIX_ROUTER = "ray.serve.llm.request_router:PrefixCacheAffinityRouter"


def llm_server_options(cfg: EngineConfig, name: str = ENGINE_DEPLOYMENT) -> dict:
    """Serve options of the AloeLLMServer deployment beyond LLMConfig's: its name (by default the
    one every engine deployment has, so a job attaches to either kind alike), health checks, and
    ray.serve.llm's prefix-aware router: a call goes to the replica whose past prompts share the
    longest prefix with its text (an OpenAI request's messages, or a job call's conversation:
    EngineCall.messages), so a tree's turns and a chat's turns meet their prefix cache."""
    from ray.serve.config import RequestRouterConfig

    opts = deployment_options(cfg)
    keep = ("health_check_period_s", "health_check_timeout_s", "graceful_shutdown_timeout_s",
            "max_constructor_retry_count")
    return {"name": name, "request_router_config": RequestRouterConfig(request_router_class=PREFIX_ROUTER),
            **{k: opts[k] for k in keep}}


def llm_engine_app(cfg: EngineConfig, s3: S3Options | None = None, board: tuple[str, str] | None = None,
                   name: str = ENGINE_DEPLOYMENT, **config_kwargs):
    """The Serve application of one vllm engine: an AloeLLMServer deployment, no ingress."""
    try:
        from ray.serve.llm import LLMConfig, build_llm_deployment
    except ImportError as exc:
        raise EngineError(f"backend 'vllm' needs Ray's LLM extras and vLLM (pip install 'aloe-ray[vllm]'): "
                          f"{exc}") from exc
    kwargs = llm_config_kwargs(cfg, **config_kwargs)
    return build_llm_deployment(LLMConfig(**kwargs), deployment_cls=AloeLLMServer,
                                override_serve_options=llm_server_options(cfg, name),
                                bind_kwargs={"cfg": cfg, "config_kwargs": kwargs, "s3": s3, "board": board})


class AloeLLMServer(ReplicaCounters, LLMServer):
    """ray.serve.llm's LLMServer, plus `complete` (the jobs' call) and the replica's counters."""

    async def __init__(self, llm_config, *, cfg: EngineConfig, config_kwargs: dict, s3: S3Options | None = None,
                       board: tuple[str, str] | None = None):
        """`llm_config` is the one the deployment was built with; the server runs the same
        config with the model folder resolved here (LLMConfig caches what it derives from its
        model source, so it is built afresh)."""
        from ray.serve.llm import LLMConfig

        from aloe_ray.engines.models import resolve_model
        from aloe_ray.engines.vllm_engine import VLLMEngine

        path = resolve_model(cfg.model, s3)
        loading = {**config_kwargs["model_loading_config"], "model_source": path}
        await LLMServer.__init__(self, LLMConfig(**{**config_kwargs, "model_loading_config": loading}))
        client = self.engine._engine_client  # ray.serve.llm's vLLM engine client, started above
        self.backend = VLLMEngine(path, model_name=loading["model_id"], engine_client=client,
                                  max_input_tokens=cfg.max_input_tokens,
                                  max_model_len=client.model_config.max_model_len, timeout_s=cfg.timeout_s)
        self.init_counters({None: self.backend}, board)

    async def complete(self, call: EngineCall) -> list[Completion]:
        if call.adapter is not None:
            raise EngineError(f"a vllm job engine serves no adapters (asked for '{call.adapter}'); "
                              f"the Serve app serves them over its OpenAI routes")
        completions = await self.backend.chat(call.requests, call.affinity)
        self._served(completions)
        return completions
