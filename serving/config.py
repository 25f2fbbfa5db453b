"""Arguments of the Serve application (`args:` in a Serve config / RayService serveConfigV2)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from aloe_ray.config.base import StrictModel


class ServeBackend(StrEnum):
    hf = "hf"
    """Our own deployment around the hf engine (CPU, or small GPU models)."""
    vllm = "vllm"
    """ray.serve.llm (vLLM) with LoRA multiplexing (GPU)."""


class Adapter(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
    """Model name clients request to get this adapter."""
    path: str
    """LoRA adapter folder (local or s3://), as written by the training jobs."""


class ServeArgs(StrictModel):
    model: str = "smollm2-135m"
    """Base model: 'smollm2-135m', a Hugging Face folder or an s3:// prefix."""
    served_model_name: str | None = None
    """Name clients use for the base model; default: `model`."""
    backend: ServeBackend = ServeBackend.hf
    """hf (CPU default) or vllm (GPU, ray.serve.llm)."""
    adapters: list[Adapter] = Field(default_factory=list)
    """LoRA adapters served next to the base model, selected by the request's model name."""
    api_key_env: str | None = None
    """Environment variable holding the bearer token clients must send; unset: no auth."""
    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs per replica."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs per replica."""
    min_replicas: int = Field(default=1, ge=0)
    """Autoscaling: fewest replicas."""
    max_replicas: int = Field(default=1, ge=1)
    """Autoscaling: most replicas."""
    target_ongoing_requests: float = Field(default=16, gt=0)
    """Autoscaling: requests in flight per replica the autoscaler aims for."""
    max_ongoing_requests: int = Field(default=64, ge=1)
    """Requests one replica accepts at once (they share forward passes)."""
    max_batch_size: int = Field(default=16, ge=1)
    """hf: most requests decoded together."""
    max_tokens_limit: int = Field(default=512, ge=1)
    """Largest max_tokens a request may ask for."""
    default_max_tokens: int = Field(default=128, ge=1)
    """max_tokens when a request gives none."""
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    """Larger request bodies get 413."""
    request_timeout_s: float = Field(default=120.0, gt=0)
    """A request taking longer gets 504."""

    @model_validator(mode="after")
    def _check(self) -> ServeArgs:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens exceeds max_tokens_limit")
        names = [self.name, *(a.name for a in self.adapters)]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return self

    @property
    def name(self) -> str:
        return self.served_model_name or self.model
