"""A deterministic scripted chat engine: a test fixture for tree logic, never a shipped backend.

It recognises each role by its prompt and answers in that role's format, deterministically from
the request's seed, so tree growth can be tested in milliseconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from aloe_ray.engines.base import ChatRequest, Completion


def role_of(req: ChatRequest) -> str:
    first = req.messages[0]["content"]
    if first.startswith("You are role-playing a human user"):
        return "simulator"
    if "extract what the" in first:
        return "inducer"
    if first.startswith("You decide which assistant reply"):
        return "judge"
    return "responder"


class ScriptedEngine:
    def __init__(self, model_name: str = "scripted", *, overrides: dict[str, Callable[[ChatRequest, int], str]] | None = None):
        self.model_name = model_name
        self.overrides = overrides or {}
        self.requests: list[ChatRequest] = []
        self.affinities: list[str | None] = []

    async def chat(self, requests: Sequence[ChatRequest], affinity: str | None = None) -> list[Completion]:
        out = []
        for req in requests:
            self.requests.append(req)
            self.affinities.append(affinity)
            role = role_of(req)
            rng = random.Random(req.sampling.seed)
            n_calls = sum(1 for r in self.requests if role_of(r) == role)
            if role in self.overrides:
                text = self.overrides[role](req, n_calls)
            elif role == "simulator":
                text = f"user message {rng.randrange(10**6)}"
            elif role == "inducer":
                text = f"PROFILE: fact {rng.randrange(100)}\nPERSONALITY: trait {rng.randrange(100)}"
            elif role == "judge":
                text = req.choices[rng.randrange(len(req.choices))] if req.choices else "A"
            else:
                personalized = "learned this about the user" in req.messages[0]["content"]
                text = f"{'personal' if personalized else 'plain'} reply {rng.randrange(10**6)}"
            probs = None
            if req.choices and role == "judge" and text in req.choices:
                probs = [1.0 if c == text else 0.0 for c in req.choices]
            out.append(Completion(text=text, finish_reason="choice" if probs else "stop", prompt_tokens=10,
                                  completion_tokens=5, model=self.model_name, choice_probs=probs))
        return out
