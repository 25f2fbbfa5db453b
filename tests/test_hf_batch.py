"""The hf engine's batch bookkeeping on small tensors (no model): padding, admission, trimming."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from aloe_ray.engines.hf_batch import DecodeBatch  # noqa: E402


def prompt(n: int, tag: float):
    """Two layers of KV for an n-token prompt; values tag * (1..n) so alignment is visible."""
    kv = (torch.arange(1, n + 1, dtype=torch.float32) * tag).view(1, 1, n, 1).expand(1, 2, n, 3).contiguous()
    return [(kv, kv + 100), (kv * 2, kv * 2 + 100)], torch.full((5,), tag), n


def test_rows_join_left_padded_and_shorter_rows_do_not_widen_the_batch():
    batch = DecodeBatch("cpu")
    batch.admit([("a", *prompt(3, 1.0)), ("b", *prompt(5, 2.0))])
    assert batch.width == 5 and batch.rows == ["a", "b"]
    assert batch.mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch.positions.tolist() == [3, 5]
    keys_before = batch.cache.layers[0].keys.clone()
    batch.admit([("c", *prompt(2, 3.0))])
    assert batch.width == 5 and batch.mask[2].tolist() == [0, 0, 0, 1, 1]
    assert torch.equal(batch.cache.layers[0].keys[:2], keys_before)  # rows already there untouched
    assert batch.logits[:, 0].tolist() == [1.0, 2.0, 3.0]


def test_a_longer_row_widens_everyone_on_the_left():
    batch = DecodeBatch("cpu")
    batch.admit([("a", *prompt(2, 1.0))])
    batch.admit([("b", *prompt(4, 2.0))])
    assert batch.width == 4 and batch.mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert batch.cache.layers[0].keys[0, 0, :, 0].tolist() == [0, 0, 1, 2]


def test_finished_rows_leave_and_the_padding_nobody_needs_is_trimmed():
    batch = DecodeBatch("cpu")
    batch.admit([("a", *prompt(3, 1.0)), ("long", *prompt(9, 2.0)), ("c", *prompt(2, 3.0))])
    batch.keep([0, 2])
    assert batch.rows == ["a", "c"] and batch.width == 3
    assert batch.mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    for layer in batch.cache.layers:
        assert layer.keys.shape[2] == layer.values.shape[2] == 3
    assert batch.cache.layers[0].keys[0, 0, :, 0].tolist() == [1, 2, 3]
    assert batch.cache.layers[1].values[1, 0, :, 0].tolist() == [0, 106, 112]  # left padding is zeros
    assert batch.positions.tolist() == [3, 2]
    batch.keep([])
    assert len(batch) == 0 and batch.width == 0 and batch.cache is None
