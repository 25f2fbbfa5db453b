"""Persona-pool generation: our own request wording and the parser of replies (version
`aloe-ray/personas-v2`). Pure: no Ray, no torch.

v2 (over v1): a personality is traits and conversational style only (no occupation or other
profile facts, no checklist of how an assistant should format answers); a profile is facts in
any mix, not every slot of a fixed template.

A request shows k pool members of one kind and asks for m new, different ones as a numbered list.
Replies are parsed leniently: numbered lists ('1.', '2)', '#3', '**4.**', 'Profile 5:', '### Profile
6', '7.She'), bullets, blank-line separated paragraphs or one sentence-ended item per line, with
stray preambles, titles ('1. Amara' over her description) and sign-offs dropped; bullets under a
numbered item ('   - Age: 34') are its facts, not items of their own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from aloe_ray.engines.base import Message

PERSONA_PROMPT_VERSION = "aloe-ray/personas-v2"


class PoolKind(StrEnum):
    profile = "profile"
    """Objective facts about a person's life (age, job, place, family, health, hobbies, plans)."""
    personality = "personality"
    """Traits and conversational style only."""


_WHAT = {
    PoolKind.profile: (
        "A user profile is a short paragraph of 8 to 10 objective facts about one person, written in the "
        "third person ('He is...', 'She is...' or 'They are...'). Pick whatever facts make this person "
        "distinct, such as age, work or studies, where they live, family, health, hobbies, money, plans or "
        "a current project; no person needs every kind. Facts only: no personality traits, feelings or "
        "ways of talking."
    ),
    PoolKind.personality: (
        "A personality is a short paragraph of 8 to 10 traits describing how one person thinks and "
        "talks in a conversation, written in the third person ('He is...', 'She is...' or 'They are...'): "
        "temperament, what they value, their humour, how they talk (chatty or terse, formal or casual), "
        "what irritates them, how they react to advice or to other people. Personality traits and "
        "conversational style only: no age, job, place, family or other facts about their life, and no "
        "list of how an assistant should format its answers (bullet points, headings, summaries)."
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
    PoolKind.personality: "temperament, values, humour, way of talking and tone",
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


# A list marker at the start of a line, optionally in markdown bold or after a markdown heading's
# hashes: '1.', '2)', '(3)', '#4', 'Profile 5:', 'Personality #6 -', '### Profile 7', and '8.She'
# (no space, but a letter follows). A bare number ('34 years old...', '3.5 million') is not one.
_NUMBERED = re.compile(
    r"^\s*(?:#{1,6}\s+)?(?:\*\*|__)?\s*"
    r"(?:(?:(?:new\s+)?(?:profile|personality|persona|user)\s*#?\s*\d{1,3}\s*[.):\-–]?"
    r"|#\s*\d{1,3}[.):]?|\(\d{1,3}\)|\d{1,3}\s*[.):])\s*(?:\*\*|__)?(?=\s|$)"
    r"|\d{1,3}[.)](?=[A-Za-z\"“]))\s*[:.\-–]?\s*",
    re.IGNORECASE,
)
_LABELLED = re.compile(r"^\s*(?:\*\*|__)?\s*(?:new\s+)?(?:profile|personality|persona)\s*(?:\*\*|__)?\s*[:\-–]\s*",
                       re.IGNORECASE)
_HEADING = re.compile(r"^\s*#{1,6}\s+(?=\S)")
"""A markdown heading without a number: its text is a title, not part of an item."""
_BULLET = re.compile(r"^\s*[-*•–·]\s+")
_PREAMBLE = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|here|absolutely|great|below|i\b|i'm|i've|these|the following"
    r"|let me know|hope (?:this|these)|feel free|note\b|in summary)",
    re.IGNORECASE,
)
_TITLE_WORDS = 8
"""An item's marker line with fewer words and no closing punctuation ('1. Amara', '**Profile 1:**')
may be a title: a paragraph after a blank line, or bullets, are then its body."""
_SENTENCE_END = re.compile(r"[.!?…\"”')]$")


def _marker(line: str) -> tuple[re.Match, str] | None:
    for kind, pattern in (("numbered", _NUMBERED), ("heading", _HEADING), ("bullet", _BULLET),
                          ("labelled", _LABELLED)):
        m = pattern.match(line)
        if m:
            return m, kind
    return None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


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


@dataclass
class _Item:
    kind: str
    indent: int
    title: str
    """The marker line's text, until a body shows whether it is the item or a title over it."""
    body: list[str]
    sub: bool = False
    """Bullets under it were taken as its body."""

    def is_title(self) -> bool:
        t = _clean(self.title)
        return (self.kind == "heading" or len(t.split()) < _TITLE_WORDS and not _SENTENCE_END.search(t)) \
            and not self.body

    def text(self) -> str:
        return " ".join([self.title, *self.body])


def _with_stop(text: str) -> str:
    t = text.rstrip()
    return t if not t or t[-1] in ".!?;:" else t + "."


def _parse_list(lines: list[str]) -> ParsedReply:
    items: list[_Item] = []
    dropped: list[str] = []
    current: _Item | None = None
    after_blank = False
    for line in lines:
        if not line.strip():
            after_blank = True
            continue
        found = _marker(line)
        m, kind = found if found else (None, None)
        if kind == "bullet" and current is not None and current.kind != "bullet" and (
                _indent(line) > current.indent or current.sub or current.is_title()):
            # '1. Amara' then '   - Age: 34': the bullets are the item's facts, not new items
            if current.body:
                current.body[-1] = _with_stop(current.body[-1])
            else:
                current.title = _with_stop(current.title)
            current.body.append(line[m.end():].strip())
            current.sub = True
        elif m:
            current = _Item(kind, _indent(line), line[m.end():].strip(), [])
            items.append(current)
        elif current is not None and not _looks_like_preamble(line) and (
                not after_blank or current.is_title() and not current.sub):
            if current.is_title() and (after_blank or current.kind == "heading"):
                if _clean(current.title):
                    dropped.append(_clean(current.title))  # '1. Amara', blank line, her description
                current.title = ""
            current.body.append(line.strip())  # the item's body, or an item wrapping onto the next line
        else:
            dropped.append(line.strip())  # a preamble, or what follows a blank line: a sign-off
            current = None
        after_blank = False
    out = []
    for item in items:
        text = _clean(item.text())
        if not text:
            continue
        if item.kind == "heading" and not item.body or _looks_like_preamble(text) and len(text.split()) < 12:
            dropped.append(text)
        else:
            out.append(text)
    return ParsedReply(out, dropped)


def _split_lines(lines: list[str]) -> list[str]:
    """A block whose every line is a whole sentence-ended item of its own ('She is...' one per line,
    no blank lines between them) is that many items; any other block is one wrapped paragraph."""
    if len(lines) > 1 and all(_SENTENCE_END.search(ln) and len(ln.split()) >= 5 for ln in lines) \
            and all(ln[0].isupper() or ln[0] in "\"“" for ln in lines):
        return lines
    return [" ".join(lines)]


def _parse_paragraphs(reply: str) -> ParsedReply:
    items, dropped = [], []
    for block in re.split(r"\n\s*\n", reply.strip()):
        lines = [ln.strip() for ln in block.split("\n") if ln.strip()]
        while len(lines) > 1 and _looks_like_preamble(lines[0]):  # 'Here are 20 new profiles:' glued on
            dropped.append(lines.pop(0))
        while len(lines) > 1 and _looks_like_preamble(lines[-1]):
            dropped.append(lines.pop())
        for p in (_clean(x) for x in _split_lines(lines)):
            if p:
                (dropped if _looks_like_preamble(p) else items).append(p)
    return ParsedReply(items, dropped)
