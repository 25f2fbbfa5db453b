"""Our own prompt wording for the four tree-growth roles (version `aloe-ray/trees-v2`).

v2 (over v1) carries the method's instructions: the simulator chats with the assistant as one
chats with a friend, not a search box; responders answer in concise, human-like language of at
most about three sentences. Rows record the version, so v1 runs stay readable as they are.

A conversation is a list of {"role": "user"|"assistant", "content"} turns in the assistant's
point of view. The simulator sees it with roles swapped (it plays the user); the judge and the
inducer see it as a transcript, so they judge and extract with the full history in view.
"""

from __future__ import annotations

import string

from aloe_ray.engines.base import Message

PROMPT_VERSION = "aloe-ray/trees-v2"

_SIMULATOR = """You are role-playing a human user who is chatting with an AI assistant.
Who you are:
- Profile (facts about your life): {profile}
- Personality (how you think and talk): {personality}
Ignore any pronouns in these descriptions that do not fit you.

How to play:
- Chat with the assistant the way you would chat with a friend, not the way you would type into
  a search box: share news, opinions or worries, react to what it said, joke, ask follow-up
  questions. Do not always ask for advice or information.
- Reveal only a little about yourself per message, naturally; never recite your profile.
- Talk the way this person talks (their personality decides tone, length and wording).
- Write only your own next message, in the first person: no name or role label in front of it,
  no stage directions such as *smiles*, no quotation marks around it, nothing the assistant says.
- Keep it short: one to three sentences.
- Never say that you are an AI, a simulator or playing a role."""

_OPENING = "(Start the conversation: write your first message to the assistant.)"

_INDUCER = """You read a conversation between a user and an AI assistant and extract what the \
user has revealed about themselves so far.

For reference only, here is who the user really is. Use it to recognise facts correctly, but report \
ONLY what the user's own messages below actually show or strongly imply; leave out everything else.
- Profile: {profile}
- Personality: {personality}

Conversation so far:
{transcript}

Answer in exactly this format, with 'none' where nothing is revealed yet:
PROFILE: <revealed facts about the user's life, separated by semicolons>
PERSONALITY: <revealed traits and conversational preferences, separated by semicolons>"""

_RESPONDER_STYLE = ("Answer in concise, human-like language, as a person would in a chat: at most about "
                   "three sentences, no lists or headings unless asked.")

_RESPONDER_PERSONALIZED = """You are a helpful AI assistant. From the conversation so far you \
have learned this about the user:
- About their life: {profile}
- About how they like to talk: {personality}
Fit the content and the style of your reply to this person, without saying that you know these \
things. """ + _RESPONDER_STYLE

_RESPONDER_PLAIN = "You are a helpful AI assistant. " + _RESPONDER_STYLE

_JUDGE = """You decide which assistant reply a particular user would prefer.

The user:
- Profile: {profile}
- Personality: {personality}

Conversation so far:
{transcript}

Candidate replies to the user's last message:
{candidates}

Which reply would this user prefer, given their profile and personality (content that fits their \
life, a style that fits how they talk, natural and concise)? Answer with a single letter: {letters}."""


def candidate_letters(n: int) -> tuple[str, ...]:
    return tuple(string.ascii_uppercase[:n])


TRANSCRIPT_MAX_CHARS = 6000
"""A transcript shown inside one message (to the judge, the inducer, the benchmark judge) keeps its
latest turns within about this many characters (~1,500 tokens), so the prompt fits an engine's
input limit however long the conversation; the persona and the instructions are never cut."""


def transcript(conversation: list[Message], max_chars: int = TRANSCRIPT_MAX_CHARS) -> str:
    """The conversation as 'User: ...' / 'Assistant: ...' lines; the oldest turns beyond
    `max_chars` are left out (and said to be), the last message always stays."""
    names = {"user": "User", "assistant": "Assistant"}
    lines = [f"{names[m['role']]}: {m['content']}" for m in conversation]
    kept, size = [], 0
    for line in reversed(lines):
        if kept and size + len(line) + 1 > max_chars:
            break
        kept.append(line)
        size += len(line) + 1
    omitted = len(lines) - len(kept)
    head = [f"(the first {omitted} messages are left out)"] if omitted else []
    return "\n".join(head + kept[::-1]) or "(empty)"


def simulator_messages(profile: str, personality: str, conversation: list[Message]) -> tuple[Message, ...]:
    """The user simulator's chat: its persona as system prompt, the conversation with roles swapped."""
    swapped = {"user": "assistant", "assistant": "user"}
    msgs: list[Message] = [{"role": "system", "content": _SIMULATOR.format(profile=profile, personality=personality)}]
    msgs.append({"role": "user", "content": _OPENING})
    msgs.extend({"role": swapped[m["role"]], "content": m["content"]} for m in conversation)
    return tuple(msgs)


def inducer_messages(profile: str, personality: str, conversation: list[Message]) -> tuple[Message, ...]:
    body = _INDUCER.format(profile=profile, personality=personality, transcript=transcript(conversation))
    return ({"role": "user", "content": body},)


def responder_messages(conversation: list[Message], hint: tuple[str, str] | None) -> tuple[Message, ...]:
    """A responder's chat; `hint` = induced (profile, personality) for the personalized responder."""
    if hint is None:
        system = _RESPONDER_PLAIN
    else:
        system = _RESPONDER_PERSONALIZED.format(profile=hint[0] or "nothing yet", personality=hint[1] or "nothing yet")
    return ({"role": "system", "content": system}, *conversation)


def judge_messages(profile: str, personality: str, conversation: list[Message],
                   candidates: list[str]) -> tuple[Message, ...]:
    letters = candidate_letters(len(candidates))
    listed = "\n\n".join(f"Reply {letter}: {text}" for letter, text in zip(letters, candidates))
    body = _JUDGE.format(profile=profile, personality=personality, transcript=transcript(conversation),
                         candidates=listed, letters=" or ".join(letters))
    return ({"role": "user", "content": body},)
