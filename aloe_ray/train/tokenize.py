"""Tokenize SFT conversations with a loss mask per assistant turn.

TRL's `assistant_only_loss` needs `{% generation %}` markers in the chat template, which many
templates (SmolLM2's among them) lack and TRL cannot patch in. Instead we render the conversation
prefix by prefix: the tokens an assistant message adds after the generation prompt are its
tokens. That works for any template that renders a prefix of a conversation as a prefix of the
whole (ChatML, Llama 3, ...), and is checked. The rows carry `input_ids` and `assistant_masks`,
which TRL's SFTTrainer turns into labels.
"""

from __future__ import annotations

from collections.abc import Sequence


class TemplateError(ValueError):
    """The chat template does not render conversation prefixes as prefixes of the whole."""


def _ids(tokenizer, messages, *, add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=add_generation_prompt,
                                        return_dict=True)
    return list(out["input_ids"])


def tokenize_conversation(tokenizer, messages: Sequence[dict], targets: Sequence[bool], *,
                          max_length: int) -> dict:
    """`input_ids` of the whole conversation and `assistant_masks` (1 on the tokens of assistant
    messages whose target flag is set, end-of-turn token included), truncated to `max_length`."""
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if len(assistants) != len(targets):
        raise ValueError(f"{len(targets)} target flags for {len(assistants)} assistant messages")
    full = _ids(tokenizer, messages, add_generation_prompt=False)
    mask = [0] * len(full)
    for i, target in zip(assistants, targets):
        prompt = _ids(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        # The reply's tokens are what rendering it adds after the generation prompt: that needs the
        # prompt (history + assistant header) to be a prefix of the rendered reply, and that to be a
        # prefix of the whole conversation.
        if upto[: len(prompt)] != prompt or full[: len(upto)] != upto:
            raise TemplateError("the chat template does not render a conversation's prefix as a prefix of the "
                                "whole; per-turn loss masks cannot be derived for this model")
        if target:
            mask[len(prompt):len(upto)] = [1] * (len(upto) - len(prompt))
    return {"input_ids": full[:max_length], "assistant_masks": mask[:max_length],
            "length": len(full), "targets_cut": _targets_cut(mask, max_length)}


def _targets_cut(mask: list[int], max_length: int) -> int:
    """Assistant targets (runs of 1s) that lose tokens to truncation at `max_length`."""
    runs, inside = [], False
    for i, bit in enumerate(mask):
        if bit and not inside:
            runs.append([i, i])
        if bit:
            runs[-1][1] = i
        inside = bool(bit)
    return sum(1 for _, end in runs if end >= max_length)
