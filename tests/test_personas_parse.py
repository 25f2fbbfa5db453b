"""Persona generation prompts, the reply parser and the candidate filters (pure, milliseconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aloe_ray.personas.filters import CandidateFilter, distinct_trigram_ratio, is_english
from aloe_ray.personas.rounds import Reply, candidates_from_replies
from aloe_ray.prompts.personas import PERSONA_PROMPT_VERSION, generation_messages, parse_generated

P1 = "She is 34 and works as a night nurse in Lagos."
P2 = "He is 52 and runs a hardware shop in Curitiba."
P3 = "They are 27 and study biology in Bangalore."


@pytest.mark.parametrize("reply", [
    f"1. {P1}\n2. {P2}\n3. {P3}",
    f"1) {P1}\n2) {P2}\n3) {P3}",
    f"**1.** {P1}\n**2.** {P2}\n**3.** {P3}",
    f"#1 {P1}\n#2 {P2}\n#3 {P3}",
    f"(1) {P1}\n(2) {P2}\n(3) {P3}",
    f"Profile 1: {P1}\nProfile 2: {P2}\nProfile 3: {P3}",
    f"1. **Profile:** {P1}\n2. **Profile:** {P2}\n3. **Profile:** {P3}",
    f"- {P1}\n* {P2}\n• {P3}",
    f"{P1}\n\n{P2}\n\n{P3}",
    f"Sure! Here are 3 new profiles:\n\n1. {P1}\n2. {P2}\n3. {P3}\n\nI hope these help!",
    f"Here are some new profiles:\n\n{P1}\n\n{P2}\n\n{P3}\n\nLet me know if you need more.",
    f"1.\n{P1}\n2.\n{P2}\n3.\n{P3}",
    f'1. "{P1}"\n2. "{P2}"\n3. "{P3}"',
])
def test_parser_formats(reply):
    assert parse_generated(reply).items == [P1, P2, P3]


def test_parser_wrapped_items_preamble_and_signoff_are_separated():
    reply = f"Okay, here you go:\n1. {P1[:20]}\n   {P1[20:]}\n2. {P2}\n\nThese should cover a good range."
    parsed = parse_generated(reply)
    assert parsed.items == [" ".join(P1.split()), P2]
    assert parsed.dropped == ["Okay, here you go:", "These should cover a good range."]


def test_parser_does_not_take_a_leading_number_for_a_marker():
    assert parse_generated("34 years old, she works as a nurse.").items == ["34 years old, she works as a nurse."]
    assert parse_generated("3.5 million people live in her city.").items == ["3.5 million people live in her city."]


BODY = "She is 34 and works as a night nurse in Lagos; she is married, has two sons and sings in a choir."


@pytest.mark.parametrize("reply, items, dropped", [
    # a title on the marker line, the description after a blank line
    (f"1. Amara\n\n{BODY}\n\n2. Bola\n\n{P2}", [BODY, P2], ["Amara", "Bola"]),
    (f"**Profile 1:**\n\n{BODY}\n\n**Profile 2:**\n\n{P2}", [BODY, P2], []),
    # markdown headings over each item
    (f"### Profile 1\n{BODY}\n\n### Profile 2\n{P2}", [BODY, P2], []),
    (f"## Amara\n{BODY}\n\n## Bola\n{P2}", [BODY, P2], ["Amara", "Bola"]),
    # no space after the number
    (f"1.{P1}\n2.{P2}\n3.{P3}", [P1, P2, P3], []),
    # unmarked items one per line, no blank lines between them
    (f"{P1}\n{P2}\n{P3}", [P1, P2, P3], []),
    # a preamble glued on by a single newline
    (f"Here are 20 new profiles:\n1. {P1}\n2. {P2}", [P1, P2], ["Here are 20 new profiles:"]),
    (f"Here are 20 new profiles:\n{P1}\n\n{P2}", [P1, P2], ["Here are 20 new profiles:"]),
    (f"Here are 20 new profiles:\n{BODY}\n\n{P2}", [BODY, P2], ["Here are 20 new profiles:"]),
])
def test_parser_titles_headings_and_glued_lines(reply, items, dropped):
    parsed = parse_generated(reply)
    assert parsed.items == items and parsed.dropped == dropped


@pytest.mark.parametrize("indent", ["   ", ""])
def test_parser_nested_bullets_are_the_items_facts(indent):
    reply = (f"1. Amara\n{indent}- Age: 34\n{indent}- Occupation: night nurse in Lagos\n{indent}- Family: married, two sons\n"
             f"2. Bola\n{indent}- Age: 52\n{indent}- Occupation: runs a hardware shop")
    assert parse_generated(reply).items == [
        "Amara. Age: 34. Occupation: night nurse in Lagos. Family: married, two sons",
        "Bola. Age: 52. Occupation: runs a hardware shop"]


def test_parser_keeps_wrapped_paragraphs_whole():
    # hard-wrapped lines that do not all end a sentence are one item, not several
    wrapped = "She is 34 and works as a night nurse\nin Lagos. She is married and has two sons.\nShe sings in a choir."
    assert parse_generated(wrapped).items == [" ".join(wrapped.split())]
    # a short but whole item followed by a sign-off keeps the item
    assert parse_generated(f"1. {P1}\n\nThanks for asking!").items == [P1]


@pytest.mark.parametrize("reply", ["", "   \n\n ", "Here are the profiles:"])
def test_parser_empty_or_preamble_only(reply):
    assert parse_generated(reply).items == []


def test_truncated_last_item_and_failed_requests():
    long = "She is 40 and works as a teacher in a village school; she has two daughters, grows beans and keeps goats."
    replies = [Reply(1, 11, f"1. {long}\n2. {long.replace('40', '41')}\n3. She is 38 and", "length"),
               Reply(0, 10, f"1. {long.replace('40', '50')}", "stop"),
               Reply(2, 12, None, "error", error="EngineError: boom")]
    cands = candidates_from_replies(replies, CandidateFilter(min_words=5))
    assert [(c.request_index, c.reason) for c in cands] == [(0, None), (1, None), (1, None), (1, "truncated")]
    assert cands[0].seed == 10


FILTER = CandidateFilter(min_words=8, max_words=40)
GOOD = "She is 61 and works as a ferry captain in Bergen; she is widowed, has a grown son and keeps bees."


@pytest.mark.parametrize("text, reason", [
    (GOOD, None),
    ("She is 61 and a captain.", "too_short"),
    (" ".join([GOOD] * 3), "too_long"),
    ("As an AI language model, I cannot invent personal details about real people, but here is one.", "role_leak"),
    ("I'm sorry, but I can't help create profiles of people with their family details and health.", "role_leak"),
    ("Here are some examples of profiles that you could use for your dataset of many people.", "role_leak"),
    ("There are 8 to 10 traits describing how one person thinks and talks, written in the third person.",
     "instruction_echo"),
    ("This is a new personality, mixing traits from the example personalities with a unique tone.",
     "instruction_echo"),
    ("Elle a 61 ans, elle est capitaine de ferry à Bergen, veuve, mère d'un fils adulte, apicultrice.", "not_english"),
    ("Она капитан парома в Бергене, вдова, у неё взрослый сын и она держит пчёл дома.", "not_english"),
    ("she likes dogs she likes dogs she likes dogs she likes dogs she likes dogs", "repetitive"),
    # ordinary facts that only look like our instructions or an assistant's words are kept
    ("He is 38 and works 8 to 10 hour shifts as a welder in Alberta; he is married with three kids.", None),
    ("She is 29 and works as a product manager at OpenAI in San Francisco; she is single and runs.", None),
    ("He is 45 and is a language model researcher at a university in Toronto; he has two daughters.", None),
    ("They feel free to interrupt, ask for sources, and say 'I'm sorry' when they get something wrong.", None),
    ("Impatient, blunt, skeptical; wants bullet points, hates small talk and hedging, rarely says thanks.",
     None),
    # an assistant speaking for itself is still a leak
    ("I am an AI language model and do not have a family, a job or hobbies of my own to describe here.",
     "role_leak"),
    ("I'm just a language model, so these traits are invented: calm, patient, curious and warm.", "role_leak"),
    ("As an assistant I will describe a person who is calm, patient and curious about the world.", "role_leak"),
    # seen from the bundled model in the embedded default run
    ("As I am a helpful AI team, I'm here to assist you in creating perfect and colorful profiles today.",
     "role_leak"),
    ("Here's a list of 5 more profile ideas to keep your story from becoming too overwhelming for you.",
     "role_leak"),
    ("This is the first example: personality: love and loyalty, this is the second one: kind and warm.",
     "instruction_echo"),
    # terse lists in another language or gibberish are still not English
    ("Ungeduldig, direkt, skeptisch; will Stichpunkte, hasst Smalltalk, bedankt sich selten, mag Zahlen.",
     "not_english"),
    ("Impatient, brusque, sceptique; veut des listes, déteste les bavardages, remercie rarement, préfère.",
     "not_english"),
    ("Xqzt, blorf, mmmrrk; zzpt vlkrn, qwrtz plmk, sdfgh jklq, xcvbn mnbv, wrtq plkj, brrrt.", "not_english"),
    ("Терпеливый, спокойный, любопытный; любит списки, не любит болтовню, редко благодарит.", "not_english"),
])
def test_filters(text, reason):
    assert FILTER.reason(text) == reason


def test_filter_helpers():
    assert is_english(GOOD) and not is_english("Ich bin 61 Jahre alt und arbeite als Kapitänin in Bergen.")
    assert distinct_trigram_ratio(GOOD) == 1.0 and distinct_trigram_ratio("a b a b a b a b") < 0.5
    # a profession that merely contains a leak-list word is not a leak
    assert FILTER.reason("He is 45 and works as a dental assistant in Leeds; he is married with three kids.") is None


def test_prompts_are_versioned_and_kind_specific():
    prof = generation_messages("profile", [P1, P2], 7)[0]["content"]
    pers = generation_messages("personality", ["They are blunt."], 4)[0]["content"]
    assert "Here are 2 examples:\n1. " + P1 + "\n2. " + P2 in prof and "Write 7 new profiles" in prof
    assert "Facts only" in prof and "conversational style only" in pers and "Write 4 new personalities" in pers
    assert "no person needs every kind" in prof and "how an assistant should format" in pers
    assert PERSONA_PROMPT_VERSION == "aloe-ray/personas-v2"
    with pytest.raises(ValueError):
        generation_messages("hobby", [P1], 3)


def test_pure_core_imports_neither_ray_nor_torch():
    code = ("import sys; import aloe_ray.prompts.personas, aloe_ray.personas.filters, aloe_ray.personas.dedup, "
            "aloe_ray.personas.rounds, aloe_ray.personas.splits; "
            "print(sorted(m for m in ('ray', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_seed_personalities_follow_the_personality_rule():
    """Traits and conversational style only: no profile facts, not a formatting checklist."""
    from aloe_ray.personas.filters import CandidateFilter, personality_violation
    from aloe_ray.personas.seeds import SEED_PERSONALITIES

    assert [personality_violation(p) for p in SEED_PERSONALITIES] == [None] * len(SEED_PERSONALITIES)
    check = CandidateFilter(min_words=5, personality=True)
    assert check.reason("She is a 34-year-old nurse who is blunt, impatient and warm with her patients.") == "profile_fact"
    assert check.reason("He wants bullet points. He wants clear headings. He wants a summary at the end. "
                        "He is calm.") == "format_checklist"
    assert check.reason("He is calm and dry, jokes a lot, hates being lectured and talks in short bursts.") is None
    assert CandidateFilter(min_words=5).reason("He wants bullet points. He wants headings. He likes tables.") is None
