"""OpenAI chat-completions wire format: request validation and response/error bodies. Pure."""

from __future__ import annotations

import math
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value):
        if isinstance(value, list):  # said here, before the str-or-list union hides the reason
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                if kind != "text":
                    raise ValueError(f"only text content parts are supported, got type '{kind}'")
        return value

    def as_message(self) -> dict[str, str]:
        """The engine's message: text parts joined into one string."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class StructuredOutputs(BaseModel):
    """vLLM's extension for constrained output; here only `choice`: the reply is one of these strings."""
    model_config = ConfigDict(extra="forbid")
    choice: list[str] = Field(min_length=2, max_length=64)

    @field_validator("choice")
    @classmethod
    def _non_empty(cls, value):
        if any(not c for c in value):
            raise ValueError("choices must be non-empty strings")
        return value


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=1)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    structured_outputs: StructuredOutputs | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _logprobs_of_choices_only(self):
        if self.structured_outputs is not None and self.stream:
            raise ValueError("structured_outputs: not supported with stream")
        if (self.logprobs or self.top_logprobs) and self.structured_outputs is None:
            raise ValueError("logprobs: this server returns logprobs only for structured_outputs.choice requests")
        return self

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value):
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def choice_logprobs(choices: tuple[str, ...], probs: list[float], top: int | None) -> dict:
    """A constrained answer's logprobs: one step, the chosen string, and the `top` most likely
    choices, each with its log probability under the constraint (the probabilities sum to 1)."""
    ranked = sorted(zip(choices, probs), key=lambda cp: -cp[1])

    def entry(choice: str, p: float) -> dict:
        return {"token": choice, "logprob": math.log(p) if p > 0 else -9999.0, "bytes": list(choice.encode())}

    return {"content": [{**entry(*ranked[0]), "top_logprobs": [entry(c, p) for c, p in ranked[:top or 0]]}],
            "refusal": None}


def completion_body(model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
                    logprobs: dict | None = None) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish(finish_reason), "logprobs": logprobs}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


class ChunkWriter:
    """The chunks of one streamed reply: role, content deltas, finish, then (when asked for with
    stream_options.include_usage) a usage chunk with no choices; with it, every chunk carries
    `usage: null` as OpenAI's do."""

    def __init__(self, model: str, include_usage: bool = False) -> None:
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model
        self.include_usage = include_usage

    def _chunk(self, choices: list, usage_: dict | None = None) -> dict:
        out = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": choices}
        if self.include_usage:
            out["usage"] = usage_
        return out

    def delta(self, delta: dict, finish_reason: str | None = None) -> dict:
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}])

    def role(self) -> dict:
        return self.delta({"role": "assistant", "content": ""})

    def content(self, text: str) -> dict:
        return self.delta({"content": text})

    def finish(self, reason: str) -> dict:
        return self.delta({}, finish(reason))

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict:
        return self._chunk([], usage(prompt_tokens, completion_tokens))


def finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"
