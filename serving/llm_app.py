"""The GPU app (backend vllm): ray.serve.llm's LLMServer and OpenAI ingress, behind our guard.

ray.serve.llm brings the engine (placement group per replica, LoRA multiplexing, autoscaling,
health checks); we add what the CPU app promises too: bearer auth and request limits
(serving/guard.py, the same checks as the CPU app), LoRA enabled at the adapters' rank, and
max_model_len from the args. The engine deployment is the one every vllm job engine is
(engines/serve_llm.py: AloeLLMServer, named EngineServer), so a job attaches to this app's
engine with `serve_app` as it does to the CPU app's.

Logical resources, on purpose: each engine replica's placement group is one bundle of
num_cpus CPUs (+ num_gpus GPUs) that the LLMServer replica actor shares (it asks for nothing
of its own; ray.serve.llm would otherwise add 1 CPU to the bundle), and the ingress asks for no
CPU: it only relays requests, like Serve's proxy. So a 2-CPU machine runs one num_cpus=1
replica with room to spare, instead of the ingress waiting forever beside the engine's group.
"""

from __future__ import annotations

from aloe_ray.config.engines import EngineConfig
from serving.config import ServeArgs
from serving.guard import GuardMiddleware, RequestLimits


def adapter_folder(args: ServeArgs) -> str | None:
    """The one folder ray.serve.llm loads adapters from (<folder>/<name>); checked before anything loads."""
    if not args.adapters:
        return None
    roots = {a.path.rstrip("/").rsplit("/", 1)[0] for a in args.adapters}
    if len(roots) != 1:
        raise ValueError("vllm backend: all adapters must sit in one folder (ray.serve.llm loads them from it)")
    misnamed = [a.name for a in args.adapters if a.path.rstrip("/").rsplit("/", 1)[-1] != a.name]
    if misnamed:
        raise ValueError(f"vllm backend: ray.serve.llm loads adapter NAME from <folder>/NAME; rename "
                         f"{misnamed} to their folder names (e.g. 'dpo' for <run>/adapters/dpo)")
    return roots.pop()


def llm_engine(args: ServeArgs) -> tuple[EngineConfig, dict]:
    """The engine of the app, as every vllm engine is hosted (engines/serve_llm.py), and the
    rest of its LLMConfig: the served name, the adapters' folder and rank, and autoscaling
    between min_replicas (0: scale to zero) and max_replicas."""
    from serving.app import deployment_options, engine_config

    lora_root = adapter_folder(args)
    serve_options = {k: v for k, v in deployment_options(args).items()
                     if k in ("autoscaling_config", "max_ongoing_requests")}
    return engine_config(args), {"model_id": args.name, "lora_root": lora_root, "max_loras": len(args.adapters),
                                 "max_lora_rank": args.max_lora_rank, "serve_options": serve_options}


def build_llm_app(args: ServeArgs):
    adapter_folder(args)  # bad layouts fail here, with or without vLLM
    try:
        from ray import serve
        from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
        from ray.llm._internal.serve.core.ingress.ingress import init as openai_fastapi_app
        from ray.serve.llm import LLMConfig
        from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

        from aloe_ray.engines.serve_llm import llm_config_kwargs, llm_engine_app
    except ImportError as exc:
        raise RuntimeError(f"backend 'vllm' needs vLLM installed (pip install 'aloe-ray[vllm]'): {exc}") from exc

    cfg, config_kwargs = llm_engine(args)
    config = LLMConfig(**llm_config_kwargs(cfg, **config_kwargs))
    limits = RequestLimits.of(args).as_dict()

    class GuardedOpenAiIngress(OpenAiIngress):
        """ray.serve.llm's OpenAI ingress; refuses to start where the key is not set, as the CPU app does."""

        def __init__(self, *a, limits: dict, **kw) -> None:
            from serving.guard import Guard

            Guard(RequestLimits(**limits))
            super().__init__(*a, **kw)

    # ray.serve.llm's FastAPI app (its OpenAI error handling), with the guard outermost
    app = openai_fastapi_app()
    app.add_middleware(GuardMiddleware, limits=limits)
    ingress = make_fastapi_ingress(GuardedOpenAiIngress, app=app)
    options = OpenAiIngress.get_deployment_options([config])
    options["ray_actor_options"] = {"num_cpus": 0}
    lora_root = config_kwargs["lora_root"]
    return serve.deployment(ingress, **options).bind(
        llm_deployments={config.model_id: llm_engine_app(cfg, **config_kwargs)},
        model_cards={config.model_id: to_model_metadata(config.model_id, config)},
        lora_paths={config.model_id: lora_root} if lora_root else {},
        limits=limits,
    )
