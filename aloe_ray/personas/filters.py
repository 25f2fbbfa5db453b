"""Filters of generated pool candidates, before any embedding. Pure: no Ray, no torch.

Each check returns the reason a candidate is rejected, or None. Reasons are short fixed names,
counted per round in the stats table, so a weak generator's failure modes are visible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Phrases no description of a person contains, but a model slipping out of its task does.
_ROLE_LEAK = re.compile(
    r"\b(?:as an ai|an ai (?:language )?model|language model|i am an ai|i'm an ai|as a helpful assistant"
    r"|i (?:cannot|can't|can not) (?:help|provide|create|write|assist)|i'?m sorry|i apologi[sz]e|chatgpt|openai"
    r"|here (?:are|is) (?:the|some|a|\d+)|let me know|hope (?:this|these) help|feel free to)\b",
    re.IGNORECASE,
)
# Our own instructions repeated back (a small model's favourite failure), not a person.
_ECHO = re.compile(
    r"\b(?:(?:in|written in) the third person|8 to 10|\d+ examples?|the examples|example (?:profiles?|personalit\w+)"
    r"|new (?:user )?(?:profiles?|personalit\w+)|traits describing|objective facts|(?:user )?profile is a"
    r"|personality is a|facts only|traits only)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[A-Za-z']+")
# Frequent English function words: a persona description has several of them.
_ENGLISH = frozenset(
    "the a an and or of to in on at for with is are was has have he she they his her their them who "
    "works lives loves enjoys likes from by as but not very".split()
)


@dataclass(frozen=True)
class CandidateFilter:
    min_words: int = 20
    max_words: int = 160
    min_english_ratio: float = 0.2
    """Share of words that are common English function words (persona texts: ~0.3-0.5)."""
    min_distinct_trigrams: float = 0.7
    """Share of distinct word trigrams; below it the text repeats itself."""

    def reason(self, text: str) -> str | None:
        """Why `text` is rejected, or None if it passes. Checks run cheapest first."""
        words = text.split()
        if len(words) < self.min_words:
            return "too_short"
        if len(words) > self.max_words:
            return "too_long"
        if _ROLE_LEAK.search(text):
            return "role_leak"
        if _ECHO.search(text):
            return "instruction_echo"
        if not is_english(text, self.min_english_ratio):
            return "not_english"
        if distinct_trigram_ratio(text) < self.min_distinct_trigrams:
            return "repetitive"
        return None


def is_english(text: str, min_ratio: float = 0.2) -> bool:
    """Mostly Latin letters, and enough common English function words."""
    letters = [c for c in text if c.isalpha()]
    if not letters or sum(c.isascii() for c in letters) / len(letters) < 0.9:
        return False
    words = [w.lower() for w in _WORD.findall(text)]
    return bool(words) and sum(w in _ENGLISH for w in words) / len(words) >= min_ratio


def distinct_trigram_ratio(text: str) -> float:
    words = [w.lower() for w in _WORD.findall(text)]
    grams = list(zip(words, words[1:], words[2:]))
    return len(set(grams)) / len(grams) if grams else 1.0
