"""Pure pieces of the hf engine: stop strings and streamable text, the prompt-too-long rule."""

from __future__ import annotations

import pytest

from aloe_ray.engines.base import PromptTooLong, Sampling
from aloe_ray.engines.prompt_fit import fit_messages
from aloe_ray.engines.reply_text import ReplyText


def chars(tokens: list[int]) -> str:
    return "".join(chr(t) for t in tokens)


def feed(text: str, stop=()) -> tuple[ReplyText, list[str]]:
    reply, deltas, tokens = ReplyText(chars, stop), [], []
    for ch in text:
        tokens.append(ord(ch))
        if reply.update(tokens):
            break
        deltas.append(reply.delta())
    deltas.append(reply.delta(final=True))
    return reply, deltas


def test_deltas_add_up_to_the_stripped_reply():
    reply, deltas = feed("  Hello there, friend.  \n")
    assert reply.text() == "Hello there, friend." == "".join(deltas)
    assert len([d for d in deltas if d]) > 3  # it streamed, not one piece at the end


def test_stop_string_cuts_the_reply_and_is_never_streamed():
    reply, deltas = feed("one two END three", stop=("END", "never"))
    assert reply.stopped and reply.text() == "one two" == "".join(deltas)
    assert not any("E" in d for d in deltas)


def test_text_that_may_start_a_stop_string_is_held_back():
    reply = ReplyText(chars, ("<|stop|>",))
    tokens = [ord(c) for c in "answer <|st"]
    assert not reply.update(tokens)
    assert reply.delta() == "answer"
    tokens += [ord(c) for c in "ar"]  # not the stop string after all
    reply.update(tokens)
    assert reply.delta() == " <|star"


def test_incomplete_utf8_is_held_back():
    reply = ReplyText(lambda t: "caf\ufffd" if len(t) == 1 else "café", ())
    reply.update([1])
    assert reply.delta() == "caf"
    reply.update([1, 2])
    assert reply.delta(final=True) == "é"


def test_sampling_takes_one_stop_string_or_several():
    assert Sampling(stop="x").stop == ("x",)
    with pytest.raises(ValueError, match="non-empty"):
        Sampling(stop=("",))


def words(messages) -> int:
    return sum(len(m["content"].split()) for m in messages)


SYSTEM = {"role": "system", "content": "be kind always"}


def chat(*contents):
    return [SYSTEM, *({"role": ("user", "assistant")[i % 2], "content": c} for i, c in enumerate(contents))]


def test_fit_keeps_everything_that_fits():
    msgs = chat("a b", "c d", "e f")
    assert fit_messages(msgs, words, 100) == (tuple(msgs), 9)


def test_fit_drops_oldest_turns_never_the_system_prompt():
    msgs = chat("one two three", "four five", "six seven", "eight nine", "ten")
    kept, n = fit_messages(msgs, words, 8)
    assert kept[0] == SYSTEM and kept[-1]["content"] == "ten" and n <= 8
    assert kept[1]["role"] == "user"  # never opens with the assistant
    assert [m["content"] for m in kept] == ["be kind always", "six seven", "eight nine", "ten"]


def test_fit_refuses_what_cannot_fit_without_cutting_a_message():
    with pytest.raises(PromptTooLong, match="input limit of 4 tokens"):
        fit_messages(chat("a", "b", "c d e f"), words, 4)
