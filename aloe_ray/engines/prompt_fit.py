"""The one rule for a chat longer than an engine's input limit. Pure.

System messages always stay. The oldest other messages are dropped, one at a time, until the
rendered prompt fits; after each drop, messages that would now open the conversation as the
assistant are dropped too (chat templates expect a user turn first). The last message is never
dropped: if the system messages plus the last message still do not fit, the chat is refused with
PromptTooLong rather than cut mid-message (so the system prompt is never truncated).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aloe_ray.engines.base import Message, PromptTooLong


def fit_messages(messages: Sequence[Message], count_tokens: Callable[[Sequence[Message]], int],
                 limit: int) -> tuple[tuple[Message, ...], int]:
    """(the messages that fit, their token count); see the module docstring for the rule."""
    kept = list(messages)
    n = count_tokens(kept)
    while n > limit:
        droppable = [i for i, m in enumerate(kept[:-1]) if m["role"] != "system"]
        if not droppable:
            raise PromptTooLong(f"prompt of {n} tokens exceeds the input limit of {limit} tokens even with "
                                f"only the system messages and the last message kept")
        del kept[droppable[0]]
        while True:  # no assistant turn may open what is left
            rest = [i for i, m in enumerate(kept[:-1]) if m["role"] != "system"]
            if not rest or kept[rest[0]]["role"] != "assistant":
                break
            del kept[rest[0]]
        n = count_tokens(kept)
    return tuple(kept), n
