"""Prompt templates of every model role and the parsers of their replies. Pure functions.

`PROMPT_VERSION` is recorded on every row written; change it whenever a template changes.
"""

from aloe_ray.prompts.templates import (
    PROMPT_VERSION,
    candidate_letters,
    inducer_messages,
    judge_messages,
    responder_messages,
    simulator_messages,
)
from aloe_ray.prompts.parsers import InducedPersona, clean_user_message, parse_choice, parse_induced

__all__ = [
    "PROMPT_VERSION",
    "InducedPersona",
    "candidate_letters",
    "clean_user_message",
    "inducer_messages",
    "judge_messages",
    "parse_choice",
    "parse_induced",
    "responder_messages",
    "simulator_messages",
]
