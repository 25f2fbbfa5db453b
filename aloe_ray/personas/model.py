"""A persona = one profile (facts) + one personality (traits). Ids are stable hashes of the text."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass


def text_id(text: str, kind: str) -> str:
    digest = hashlib.blake2b(" ".join(text.split()).encode(), digest_size=6).hexdigest()
    return f"{kind[:4]}-{digest}"


def persona_id(profile: str, personality: str) -> str:
    return "pers-" + hashlib.blake2b(
        f"{' '.join(profile.split())}\x00{' '.join(personality.split())}".encode(), digest_size=8
    ).hexdigest()


@dataclass(frozen=True)
class Persona:
    persona_id: str
    profile: str
    personality: str
    profile_id: str | None = None
    personality_id: str | None = None
    split: str | None = "train"
    source: str | None = None

    @classmethod
    def pair(cls, profile: str, personality: str, *, split: str | None = "train", source: str | None = None) -> Persona:
        return cls(
            persona_id=persona_id(profile, personality),
            profile=profile,
            personality=personality,
            profile_id=text_id(profile, "profile"),
            personality_id=text_id(personality, "personality"),
            split=split,
            source=source,
        )

    def to_row(self) -> dict:
        return asdict(self)
