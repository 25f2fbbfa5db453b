"""Prompts of the ALOE benchmark (version `aloe-ray/eval-v1`) and the judge's score parser.

The user simulator is the tree job's (`simulator_messages`): the same persona role-play opens
and continues the conversation. The model under test sees only the conversation. The judge sees
the full persona and scores one reply 1-5 on the three ALOE criteria; the conversation comes
before the persona in its prompt, so an engine that keeps a long prompt's last tokens drops the
oldest turns first, never the persona or the instructions.
"""

from __future__ import annotations

import re

from aloe_ray.engines.base import Message
from aloe_ray.eval.metrics import SCORE_CHOICES
from aloe_ray.prompts.templates import PROMPT_VERSION as TREES_PROMPT_VERSION
from aloe_ray.prompts.templates import simulator_messages, transcript

EVAL_PROMPT_VERSION = f"aloe-ray/eval-v1+{TREES_PROMPT_VERSION.rsplit('/', 1)[-1]}"

_JUDGE = """You rate how well an AI assistant's reply is tailored to one particular user.

{context}

The assistant's reply to the user's last message:
{reply}

The user:
- Profile: {profile}
- Personality: {personality}

Rate the reply on these criteria together:
1. Is its conversational style tailored to the user's personality?
2. Is its content or topic relevant to the user's profile?
3. Is it human-like, engaging and concise?
Give a score from 1 (not tailored to this user at all) to 5 (tailored to this user very well). \
Answer with the score only: a single digit from 1 to 5."""


def judge_score_messages(profile: str, personality: str, conversation: list[Message], reply: str, *,
                         history: bool = True) -> tuple[Message, ...]:
    """The judge's chat. `conversation` ends with the user message `reply` answers; with
    `history=False` only that message is shown (what the reference implementation does)."""
    if not conversation or conversation[-1]["role"] != "user":
        raise ValueError("the judged conversation must end with the user's message")
    if history:
        context = f"Conversation so far:\n{transcript(conversation)}"
    else:
        context = f"The user's message:\n{conversation[-1]['content']}"
    body = _JUDGE.format(context=context, reply=reply, profile=profile, personality=personality)
    return ({"role": "user", "content": body},)


def model_messages(conversation: list[Message]) -> tuple[Message, ...]:
    """What the model under test sees: the conversation only (no persona, no system prompt)."""
    return tuple(conversation)


__all__ = ["EVAL_PROMPT_VERSION", "SCORE_CHOICES", "judge_score_messages", "model_messages", "parse_score",
           "simulator_messages"]

_NUMBER = r"(\d+(?:\.\d+)?)"
_SCALE = rf"\s*(?:/\s*{_NUMBER}|out\s+of\s+{_NUMBER})"
# A first line that is the score alone: '4', '4/5', '4.', '4 out of 5'.
_LEADING = re.compile(rf"\A\s*{_NUMBER}(?:{_SCALE})?\s*\.?\s*(?:\n|\Z)", re.IGNORECASE)
_LABELLED = re.compile(rf"\b(?:score|rating|rate|grade)\b\D{{0,20}}?(?<![-\d.]){_NUMBER}(?:{_SCALE})?", re.IGNORECASE)
_OUT_OF = re.compile(rf"(?<![-\d.]){_NUMBER}{_SCALE}", re.IGNORECASE)
_ANY = re.compile(rf"(?<![-\d.]){_NUMBER}(?:{_SCALE})?(?![\d.]*\d)")


def parse_score(reply: str) -> float | None:
    """The 1-5 score a judge's free-text reply gives, else None. In order of preference: a first
    line that is the score alone ('4', '4/5', then perhaps an explanation naming other numbers);
    the first labelled score ('Score: 4/5', 'Sure! I'd rate this reply a 4 out of 5 because...');
    the first 'N/5' or 'N out of 5'; else the one number the reply names ('**4**'). A score on
    another scale ('8/10'), out of range ('0', '6'), or a reply naming several different numbers
    with none of those forms ('3 or 4') does not parse: the caller retries, then records the score
    as missing with the raw reply, never a guess."""
    text = re.sub(r"[*_`#]", "", reply).strip()
    if not text:
        return None
    for pattern in (_LEADING, _LABELLED, _OUT_OF):
        found = pattern.search(text)
        if found:
            return _on_scale(*found.groups())
    values = set()
    for value, over_a, over_b in _ANY.findall(text):
        if (over_a or over_b) and float(over_a or over_b) != 5:
            return None
        values.add(float(value))
    return _on_scale(values.pop(), None, None) if len(values) == 1 else None


def _on_scale(value: str | float, over_a: str | None, over_b: str | None) -> float | None:
    scale = over_a or over_b
    if scale and float(scale) != 5:
        return None
    score = float(value)
    return score if 1 <= score <= 5 else None
