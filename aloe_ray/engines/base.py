"""The chat-engine interface every model role uses. Pure: no Ray, no torch.

An engine takes a batch of chats with per-request sampling (seed included) and returns one
completion per chat. A request with `choices` asks for a constrained answer: the engine returns
the most probable choice as text and, where the backend can tell, a probability per choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 96
    seed: int | None = None
    stop: tuple[str, ...] = ()
    """Strings that end the reply: it is cut before the first one found (finish_reason 'stop')."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    sampling: Sampling = field(default_factory=Sampling)
    choices: tuple[str, ...] | None = None
    """If set, the reply must be one of these strings (e.g. judge letters or scores)."""

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError("a chat request needs at least one message")
        for m in self.messages:
            if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
                raise ValueError(f"malformed chat message: {m!r}")
        if self.choices is not None and len(self.choices) < 2:
            raise ValueError("choices needs at least two options")


@dataclass
class Completion:
    text: str
    finish_reason: str
    """'stop' (end of message), 'length' (hit max_tokens) or 'choice' (constrained answer)."""
    prompt_tokens: int
    """Tokens of the prompt as sent, after any fitting to the input limit (prompt_fit.py)."""
    completion_tokens: int
    """Tokens generated for the reply, the same count on every backend: the end-of-sequence
    (or other stop) token that ended it is not counted; the tokens of a stop string are (the
    string is cut from the text, not from the count); a constrained answer counts 1."""
    model: str = ""
    choice_probs: list[float] | None = None
    """For requests with choices: probability of each choice, in order, when the backend knows."""


@runtime_checkable
class ChatEngine(Protocol):
    """What tree growth, persona generation and evaluation call."""

    model_name: str

    async def chat(self, requests: Sequence[ChatRequest], affinity: str | None = None) -> list[Completion]:
        """One completion per request, in order. `affinity` groups requests of one conversation so
        a pooled engine can send them to the same replica (prefix cache)."""
        ...


class PromptTooLong(ValueError):
    """A chat that does not fit the engine's input limit even with only its system messages and
    its last message left (see prompt_fit.fit_messages for the rule)."""


class EngineError(RuntimeError):
    """An engine call that failed after its retries."""


class EngineTimeout(EngineError, TimeoutError):
    """A request that did not finish within the engine's timeout; the engine stopped working on
    it (nothing keeps decoding for a caller that has given up)."""
