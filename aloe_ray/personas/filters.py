"""Filters of generated pool candidates, before any embedding. Pure: no Ray, no torch.

Each check returns the reason a candidate is rejected, or None. Reasons are short fixed names,
counted per round in the stats table, so a weak generator's failure modes are visible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# An assistant speaking for itself (first person) or to the requester, which a third-person
# description of a person never does. Words that merely name the field ('a product manager at
# OpenAI', 'a language model researcher', 'a dental assistant') are not leaks.
_ROLE_LEAK = re.compile(
    r"\b(?:as an? (?:ai|language model|(?:helpful |virtual )?assistant)"
    r"|i(?: am|'m) (?:an ai|a (?:large )?language model|an? (?:ai |virtual )?assistant|just an? )"
    r"|i (?:cannot|can't|can not|am unable to|won't) (?:help|provide|create|write|assist|generate|fulfil|comply|invent)"
    r"|i(?: am|'m) here to (?:help|assist)|(?:help|assist) you (?:in |with )?(?:creat|writ)|helpful ai"
    r"|here(?: are|'s| is) (?:the|some|a|\d+) (?:list of |new |more |example |sample |\d+ )*"
    r"(?:profiles?|personalit|personas?|examples?|descriptions?|ideas?)"
    r"|let me know if|hope (?:this|these) helps?)",
    re.IGNORECASE,
)
# Our own instructions repeated back (a small model's favourite failure), not a person. Only the
# wording of our request: numbers ('8 to 10 hour shifts', '3 examples of her work') are facts.
_ECHO = re.compile(
    r"\b(?:(?:in|written in) the third person|the examples|example (?:profiles?|personalit\w+)"
    r"|the (?:first|second|third|fourth|fifth|next|last|\w+th) example"
    r"|new (?:user )?(?:profiles?|personalit\w+)|traits describing|objective facts|(?:user )?profile is a"
    r"|personality is a|facts only|traits only|conversational style only)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[A-Za-z']+")
# Frequent English function words: a persona description has several of them.
_ENGLISH = frozenset(
    "the a an and or of to in on at for with is are was has have he she they his her their them who "
    "works lives loves enjoys likes from by as but not very".split()
)
# A terse trait list ('Impatient, blunt, skeptical; wants bullet points') has few function words;
# it passes on words that describe how a person talks and what they want instead.
_TRAIT_WORDS = frozenset(
    "wants want needs prefers prefer likes dislikes hates values expects asks answers replies reply "
    "answer advice tone talk talks small short long direct blunt warm cold polite formal casual "
    "friendly patient impatient calm anxious curious skeptical sceptical sarcastic shy quiet loud "
    "funny serious honest kind gentle rude careful cautious confident proud stubborn lazy organised "
    "organized detail detailed quick slow simple plain clear concise brief chatty reserved emotional "
    "practical logical analytical optimistic pessimistic cheerful grumpy moody nervous relaxed "
    "easily often rarely never always sometimes over about no little lots much more less points "
    "bullet lists facts numbers details jokes humour humor stories examples questions thanks hedging "
    "lectures lecturing reassurance praise criticism feedback opinions people others things".split()
)
_LIST_SEPARATORS = re.compile(r"[,;]")

# What a personality must not be: an assistant-format checklist ('wants bullet points, headings and
# a summary at the end') or a profile in disguise (a job, an age, a family). Our own rule, applied
# to generated personalities and, by a test, to the built-in seeds.
_FORMATTING = re.compile(
    r"\b(?:bullet(?:ed)?(?: points?)?|(?:numbered |bulleted )?lists?|numbered|headings?|headers|bold|markdown"
    r"|format(?:ting|ted)?|structured|tables?|walls? of text|scroll\w*|summar(?:y|ies)|tl;?dr|step[- ]by[- ]step"
    r"|numbered steps|word count)\b",
    re.IGNORECASE,
)
_PROFILE_FACT = re.compile(
    r"\b(?:\d{1,3}[- ]years?[- ]old|aged \d+|works? (?:as|at|for)|employed (?:as|at|by)|lives? in|living in"
    r"|married|divorced|widowed|husband|wife|daughters?|grandchildren|(?:his|her|their|has|two|three) (?:sons|kids|children)"
    r"|degree in|graduated|retired|by profession|occupation)\b",
    re.IGNORECASE,
)
MAX_FORMATTING_SHARE = 0.5
"""A personality whose sentences are at least this often about answer formatting is a checklist."""


def formatting_share(text: str) -> float:
    """Share of a text's sentences that are about the format of answers (lists, headings...)."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
    return sum(bool(_FORMATTING.search(s)) for s in sentences) / len(sentences) if sentences else 0.0


def personality_violation(text: str) -> str | None:
    """Why `text` is not a personality (traits and conversational style only), or None."""
    if _PROFILE_FACT.search(text):
        return "profile_fact"
    if formatting_share(text) >= MAX_FORMATTING_SHARE:
        return "format_checklist"
    return None


def _pronounceable(word: str) -> bool:
    w = word.lower().strip("'")
    return bool(re.search(r"[aeiouy]", w)) and not re.search(r"[^aeiouy']{5,}|(.)\1\1", w) and len(w) <= 20


@dataclass(frozen=True)
class CandidateFilter:
    min_words: int = 20
    max_words: int = 160
    min_english_ratio: float = 0.2
    """Share of words that are common English function words (persona texts: ~0.3-0.5)."""
    min_distinct_trigrams: float = 0.7
    """Share of distinct word trigrams; below it the text repeats itself."""
    personality: bool = False
    """Also apply the personality rule (`personality_violation`): no profile facts, no format checklist."""

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
        if self.personality:
            return personality_violation(text)
        return None


def is_english(text: str, min_ratio: float = 0.2) -> bool:
    """Mostly Latin letters, and enough common English function words; or, for a terse list of
    traits (several commas or semicolons), enough English trait words and no gibberish."""
    letters = [c for c in text if c.isalpha()]
    if not letters or sum(c.isascii() for c in letters) / len(letters) < 0.9:
        return False
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        return False
    if sum(w in _ENGLISH for w in words) / len(words) >= min_ratio:
        return True
    if len(_LIST_SEPARATORS.findall(text)) < 3:
        return False
    known = sum(w in _ENGLISH or w in _TRAIT_WORDS for w in words) / len(words)
    return known >= min_ratio and sum(map(_pronounceable, words)) / len(words) >= 0.9


def distinct_trigram_ratio(text: str) -> float:
    words = [w.lower() for w in _WORD.findall(text)]
    grams = list(zip(words, words[1:], words[2:]))
    return len(set(grams)) / len(grams) if grams else 1.0
