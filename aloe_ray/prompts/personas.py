"""Persona-pool generation: our own request wording and the parser of replies (version
`aloe-ray/personas-v1`). Pure: no Ray, no torch.

A request shows k pool members of one kind and asks for m new, different ones as a numbered list.
Replies are parsed leniently: numbered lists ('1.', '2)', '#3', '**4.**', 'Profile 5:'), bullets,
or blank-line separated paragraphs, with stray preambles and sign-offs dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from aloe_ray.engines.base import Message

PERSONA_PROMPT_VERSION = "aloe-ray/personas-v1"


class PoolKind(StrEnum):
    profile = "profile"
    """Objective facts about a person's life (age, job, place, family, health, hobbies, plans)."""
    personality = "personality"
    """Traits and conversational style only."""


_WHAT = {
    PoolKind.profile: (
        "A user profile is a short paragraph of 8 to 10 objective facts about one person, written in the "
        "third person ('He is...', 'She is...' or 'They are...'): age, occupation, where they live, family "
        "situation, education, health or diet, hobbies or pets, and something they are working on right "
        "now. Facts only: no personality traits, feelings or ways of talking."
    ),
    PoolKind.personality: (
        "A personality is a short paragraph of 8 to 10 traits describing how one person thinks and "
        "talks, written in the third person ('He is...', 'She is...' or 'They are...'): temperament, "
        "what they value, how they like answers (length, tone, structure), what irritates them, how they "
        "react to advice. Traits only: no age, job, place, family or other facts about their life."
    ),
}

_REQUEST = """{what}

Here are {k} examples:
{examples}

Write {m} new {plural}. Each must describe a different person from the examples and from each \
other: vary {vary}. Write each as one paragraph of about 60 words. Number them 1 to {m}, one per \
line, and write nothing else."""

_VARY = {
    PoolKind.profile: "age, gender, country, occupation, family situation, health and hobbies",
    PoolKind.personality: "temperament, values, preferred answer style and tone",
}


def generation_messages(kind: PoolKind | str, examples: Sequence[str], m: int) -> tuple[Message, ...]:
    """The chat of one generation request: k examples of `kind`, asking for m new ones."""
    kind = PoolKind(kind)
    listed = "\n".join(f"{i}. {text}" for i, text in enumerate(examples, start=1))
    body = _REQUEST.format(what=_WHAT[kind], k=len(examples), examples=listed, m=m,
                           plural=f"{kind.value}s" if kind == PoolKind.profile else "personalities",
                           vary=_VARY[kind])
    return ({"role": "user", "content": body},)


@dataclass(frozen=True)
class ParsedReply:
    items: list[str]
    """The candidate texts, in order, cleaned (markers and decoration removed, spaces collapsed)."""
    dropped: list[str]
    """Text that was not an item: preambles, headings, sign-offs."""


# A list marker at the start of a line, optionally in markdown bold: '1.', '2)', '(3)', '#4',
# 'Profile 5:', 'Personality #6 -'. A bare number ('34 years old...') is not a marker.
_NUMBERED = re.compile(
    r"^\s*(?:\*\*|__)?\s*(?:(?:new\s+)?(?:profile|personality|persona|user)\s*#?\s*\d{1,3}\s*[.):\-–]?"
    r"|#\s*\d{1,3}[.):]?|\(\d{1,3}\)|\d{1,3}\s*[.):])\s*(?:\*\*|__)?(?=\s|$)\s*[:.\-–]?\s*",
    re.IGNORECASE,
)
_LABELLED = re.compile(r"^\s*(?:\*\*|__)?\s*(?:new\s+)?(?:profile|personality|persona)\s*(?:\*\*|__)?\s*[:\-–]\s*",
                       re.IGNORECASE)
_BULLET = re.compile(r"^\s*[-*•–·]\s+")
_PREAMBLE = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|here|absolutely|great|below|i\b|i'm|i've|these|the following"
    r"|let me know|hope (?:this|these)|feel free|note\b|in summary)",
    re.IGNORECASE,
)


def _marker(line: str) -> re.Match | None:
    return _NUMBERED.match(line) or _BULLET.match(line) or _LABELLED.match(line)


def _clean(text: str) -> str:
    text = " ".join(text.split())
    text = re.sub(r"(\*\*|__)", "", text)
    text = _LABELLED.sub("", text)  # 'Profile: She is...' inside a numbered item
    return text.strip().strip('"“”').strip()


def _looks_like_preamble(text: str) -> bool:
    """A line that introduces or closes the list rather than being an item."""
    t = text.strip()
    return t.endswith(":") or bool(_PREAMBLE.match(t)) and len(t.split()) < 25


def parse_generated(reply: str) -> ParsedReply:
    """Split a generation reply into candidate texts (see module docstring). Never raises."""
    lines = reply.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if any(_marker(line) for line in lines):
        return _parse_list(lines)
    return _parse_paragraphs(reply)


def _parse_list(lines: list[str]) -> ParsedReply:
    items: list[list[str]] = []
    dropped: list[str] = []
    current: list[str] | None = None
    for line in lines:
        if not line.strip():
            current = None  # what follows a blank line is a new item or a sign-off, not a wrap
            continue
        m = _marker(line)
        if m:
            current = [line[m.end():]]
            items.append(current)
        elif current is not None and not _looks_like_preamble(line):
            current.append(line)  # an item that wraps onto the next line
        else:
            dropped.append(line.strip())
    cleaned = [_clean(" ".join(parts)) for parts in items]
    out = []
    for text in cleaned:
        if not text:
            continue
        (dropped if _looks_like_preamble(text) and len(text.split()) < 12 else out).append(text)
    return ParsedReply(out, dropped)


def _parse_paragraphs(reply: str) -> ParsedReply:
    paragraphs = [_clean(p) for p in re.split(r"\n\s*\n", reply.strip())]
    items, dropped = [], []
    for p in paragraphs:
        if not p:
            continue
        (dropped if _looks_like_preamble(p) else items).append(p)
    return ParsedReply(items, dropped)
