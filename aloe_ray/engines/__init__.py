"""Chat engines: one async interface (`ChatEngine`) and its backends (hf, vllm, openai)."""

from aloe_ray.engines.base import ChatEngine, ChatRequest, Completion, EngineError, Message, Sampling

__all__ = ["ChatEngine", "ChatRequest", "Completion", "EngineError", "Message", "Sampling"]
