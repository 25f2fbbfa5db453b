"""Parsers of model replies. Each returns None when the reply does not parse; callers retry and
then record the raw reply, never guess a label."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NONE = {"", "none", "nothing", "n/a", "na", "unknown", "nothing yet", "not revealed", "-"}


@dataclass(frozen=True)
class InducedPersona:
    profile: str
    personality: str


_SECTION = re.compile(r"^\W*(profile|personality)\W*:\s*(.*)$", re.IGNORECASE)


def parse_induced(reply: str) -> InducedPersona | None:
    """Parse 'PROFILE: ...' / 'PERSONALITY: ...' sections (any case, markdown decoration allowed,
    values may continue on following lines). Both sections must be present."""
    found: dict[str, list[str]] = {}
    current = None
    for line in reply.splitlines():
        m = _SECTION.match(line.strip())
        if m:
            current = m.group(1).lower()
            if current in found:  # a repeated section: the reply is rambling, keep the first
                current = None
                continue
            found[current] = [m.group(2).strip()]
        elif current and line.strip():
            found[current].append(line.strip())
    if set(found) != {"profile", "personality"}:
        return None

    def clean(parts: list[str]) -> str:
        text = "; ".join(p for p in (part.lstrip("-*• ").strip() for part in parts) if p)
        return "" if text.lower().strip(" .") in _NONE else text

    return InducedPersona(profile=clean(found["profile"]), personality=clean(found["personality"]))


def parse_choice(reply: str, choices: tuple[str, ...]) -> int | None:
    """Index of the one choice a free-text verdict names ('B', 'B.', '**B**', 'Reply B is better'),
    else None. A reply naming several choices, or none, does not parse; a leading article
    ('A lot depends...') is not read as a verdict."""
    text = reply.strip()
    if text in choices:
        return choices.index(text)
    alternatives = "|".join(re.escape(c) for c in choices)
    lead = re.match(rf"^[\W_]*({alternatives})(?:[.,:;)!*\]]|\s*$)", text)
    if lead:
        return choices.index(lead.group(1))
    named = {m.upper() for m in re.findall(
        rf"\b(?:reply|response|option|answer|candidate)\s*[:#]?\s*({alternatives})\b", text, re.IGNORECASE)}
    upper = [c.upper() for c in choices]
    if len(named) == 1:
        return upper.index(named.pop())
    return None


_STAGE_DIRECTION = re.compile(
    r"^[ \t]*\*[^*\n]{1,200}\*"  # at the start of a line
    r"|(?<=[.!?…:;,])[ \t]*\*[^*\n]{1,200}\*(?=\s*(?:$|[A-Z\"“(]))"  # between sentences
    r"|[ \t]*\*[^*\n]{1,200}\*[ \t]*$",  # at the end of a line
    re.MULTILINE,
)
"""`*smiles*`, `*leans back*`: role-play actions, stripped from a simulated user's message (as the
reference implementation does) where they stand on their own: at the start or end of a line or
between sentences. An emphasised word inside a sentence ('I *don't* want that') is unwrapped,
not removed, and markdown bold (`**word**`) is unwrapped first."""
_EMPHASIS = re.compile(r"\*([^*\n]{1,200})\*")
_ROLE_PREFIX = re.compile(r"^\s*(?:\*\*|__)?\s*(?:user|human|me|you|customer|client)\s*(?:\*\*|__)?\s*:\s*",
                          re.IGNORECASE)
_OTHER_SIDE = re.compile(r"^\s*(?:\*\*|__)?\s*(?:assistant|ai|ai assistant|chatbot|bot|system)\s*(?:\*\*|__)?\s*:",
                         re.IGNORECASE | re.MULTILINE)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»"}


def clean_user_message(reply: str) -> str:
    """A simulated user's message as a user would send it: stage directions (`*smiles*`), a role
    label in front ('User:', '**Me:**'), the assistant's side if the model wrote it too ('...
    Assistant: ...' from there on) and quotes around the whole message are removed; '' when
    nothing is left (the caller retries)."""
    text = _OTHER_SIDE.split(reply, maxsplit=1)[0]
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = _STAGE_DIRECTION.sub(" ", text)
    text = _EMPHASIS.sub(r"\1", text)
    previous = None
    while previous != text:  # 'User: "hi"' -> 'hi'
        previous = text
        text = _ROLE_PREFIX.sub("", text.strip())
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]] \
                and text[0] not in text[1:-1]:
            text = text[1:-1]
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text).strip()
    return "" if not re.search(r"\w", text) else text
