"""Per-turn loss masks on the bundled model's real tokenizer and chat template."""

from __future__ import annotations

import pytest

from aloe_ray.train.tokenize import TemplateError, tokenize_conversation

CONVERSATION = [
    {"role": "user", "content": "Hi, I bake bread."},
    {"role": "assistant", "content": "Lovely! Sourdough?"},
    {"role": "user", "content": "Rye, mostly."},
    {"role": "assistant", "content": "Rye is tricky but rewarding."},
]


@pytest.fixture(scope="module")
def tokenizer(bundled_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model_path)


def _masked_text(tokenizer, out) -> str:
    return tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])


def test_only_target_replies_carry_loss_end_of_turn_included(tokenizer):
    both = tokenize_conversation(tokenizer, CONVERSATION, [True, True], max_length=4096)
    text = _masked_text(tokenizer, both)
    assert "Lovely! Sourdough?" in text and "Rye is tricky but rewarding." in text
    assert "bake bread" not in text and "Rye, mostly" not in text and "assistant" not in text
    assert text.count("<|im_end|>") == 2  # the model learns to stop
    second = tokenize_conversation(tokenizer, CONVERSATION, [False, True], max_length=4096)
    assert "Sourdough" not in _masked_text(tokenizer, second) and "Rye is tricky" in _masked_text(tokenizer, second)
    assert second["input_ids"] == both["input_ids"] and second["targets_cut"] == 0


def test_truncation_is_counted(tokenizer):
    full = tokenize_conversation(tokenizer, CONVERSATION, [True, True], max_length=4096)
    cut = tokenize_conversation(tokenizer, CONVERSATION, [True, True], max_length=full["length"] - 3)
    assert len(cut["input_ids"]) == len(cut["assistant_masks"]) == full["length"] - 3
    assert cut["targets_cut"] == 1 and cut["length"] == full["length"]


def test_templates_whose_prefixes_do_not_line_up_are_refused(tokenizer):
    import copy

    odd = copy.deepcopy(tokenizer)
    # the generation prompt opens a different header than a rendered assistant message
    odd.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<bot>{% endif %}")
    with pytest.raises(TemplateError, match="prefix"):
        tokenize_conversation(odd, CONVERSATION, [True, True], max_length=4096)
    with pytest.raises(ValueError, match="2 assistant messages"):
        tokenize_conversation(tokenizer, CONVERSATION, [True], max_length=4096)
