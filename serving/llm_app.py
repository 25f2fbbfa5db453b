"""The GPU app (backend vllm): ray.serve.llm's LLMServer and OpenAI ingress, behind our guard.

ray.serve.llm brings the engine (placement group per replica, LoRA multiplexing, autoscaling,
health checks); we add what the CPU app promises too: bearer auth and request limits
(serving/guard.py, the same checks as the CPU app), LoRA enabled at the adapters' rank, and
max_model_len from the args.

Logical resources, on purpose: each engine replica's placement group is one bundle of
num_cpus CPUs (+ num_gpus GPUs) that the LLMServer replica actor shares (it asks for nothing
of its own; ray.serve.llm would otherwise add 1 CPU to the bundle), and the ingress asks for no
CPU: it only relays requests, like Serve's proxy. So a 2-CPU machine runs one num_cpus=1
replica with room to spare, instead of the ingress waiting forever beside the engine's group.
"""

from __future__ import annotations

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


def llm_config_kwargs(args: ServeArgs) -> dict:
    """LLMConfig's arguments for the served base model (and its adapters)."""
    from aloe_ray import storage
    from aloe_ray.engines.models import resolve_model

    lora_root = adapter_folder(args)
    source = resolve_model(args.model) if storage.is_local(args.model) else {"bucket_uri": args.model}
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if args.num_gpus else "float32")
    engine_kwargs = {"enable_prefix_caching": True, "max_model_len": args.max_model_len, "dtype": dtype,
                     "gpu_memory_utilization": args.gpu_memory_utilization}
    if lora_root:
        engine_kwargs |= {"enable_lora": True, "max_lora_rank": args.max_lora_rank, "max_loras": len(args.adapters)}
    bundle = {"CPU": args.num_cpus} | ({"GPU": args.num_gpus} if args.num_gpus else {})
    from serving.app import deployment_options

    deployment = {k: v for k, v in deployment_options(args).items() if k != "ray_actor_options"}
    return {
        "model_loading_config": {"model_id": args.name, "model_source": source},
        "lora_config": {"dynamic_lora_loading_path": lora_root, "max_num_adapters_per_replica": len(args.adapters)}
        if lora_root else None,
        "deployment_config": deployment | {"ray_actor_options": {"num_cpus": 0}},
        "placement_group_config": {"bundles": [bundle]},
        "engine_kwargs": engine_kwargs,
        "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}},
    }


def build_llm_app(args: ServeArgs):
    adapter_folder(args)  # bad layouts fail here, with or without vLLM
    try:
        from ray import serve
        from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
        from ray.llm._internal.serve.core.ingress.ingress import init as openai_fastapi_app
        from ray.serve.llm import LLMConfig, build_llm_deployment
        from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
    except ImportError as exc:
        raise RuntimeError(f"backend 'vllm' needs vLLM installed (pip install 'aloe-ray[vllm]'): {exc}") from exc

    config = LLMConfig(**llm_config_kwargs(args))
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
    lora_root = adapter_folder(args)
    return serve.deployment(ingress, **options).bind(
        llm_deployments={config.model_id: build_llm_deployment(config)},
        model_cards={config.model_id: to_model_metadata(config.model_id, config)},
        lora_paths={config.model_id: lora_root} if lora_root else {},
        limits=limits,
    )
