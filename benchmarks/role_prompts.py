"""Realistic role prompts for engine benchmarks: the four tree roles' real templates
(aloe_ray/prompts/templates.py) on the seed personas, two turns into a conversation."""

from __future__ import annotations

from aloe_ray.engines.base import Message
from aloe_ray.personas.loaders import seed_personas
from aloe_ray.prompts.templates import inducer_messages, judge_messages, responder_messages, simulator_messages

_CONVERSATION = [
    {"role": "user", "content": "Hi! I've had a long week at work and I'm trying to plan something relaxing "
                                "for the weekend, but I never know where to start."},
    {"role": "assistant", "content": "That sounds tiring. What usually helps you unwind?"},
    {"role": "user", "content": "Cooking, and being outside. But I feel guilty if I skip my chores."},
]

_CANDIDATES = [
    "You could batch the chores into one focused hour on Saturday morning, then cook something new "
    "in the afternoon and take a long walk on Sunday, guilt-free.",
    "Rest is productive too. Try a slow breakfast, a market visit for ingredients, and leave the "
    "chores for a short list you tick off between other plans.",
]


def role_prompts(n: int = 32) -> list[tuple[Message, ...]]:
    """n chats, cycling simulator, personalized responder, inducer and judge over seed personas."""
    personas = seed_personas(per_profile=2, seed=0)
    chats = []
    for i in range(n):
        p = personas[i % len(personas)]
        kind = i % 4
        if kind == 0:
            chats.append(simulator_messages(p.profile, p.personality, _CONVERSATION))
        elif kind == 1:
            chats.append(responder_messages(_CONVERSATION, (p.profile, p.personality)))
        elif kind == 2:
            chats.append(inducer_messages(p.profile, p.personality, _CONVERSATION))
        else:
            chats.append(judge_messages(p.profile, p.personality, _CONVERSATION, _CANDIDATES))
    return chats
