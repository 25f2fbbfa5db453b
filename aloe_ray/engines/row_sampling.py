"""Per-row sampling for the hf engine: each request samples with its own seeded generator, so
its tokens do not depend on which other requests share its batch."""

from __future__ import annotations

from aloe_ray.engines.base import Sampling


def row_generator(seed: int | None):
    import torch

    g = torch.Generator()
    g.manual_seed(seed if seed is not None else torch.seed())
    return g


_TOP_K_FIRST = 1024


def sample_token(logits, sampling: Sampling, generator) -> int:
    """Temperature + nucleus (top_p) sampling with the row's own generator (greedy rows are taken
    by one argmax over the batch). The nucleus is searched among the top 1024 tokens first
    (cheaper than sorting the vocabulary), falling back to the full sort when they hold less than
    top_p of the mass: same result either way."""
    import torch

    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=generator))
    top, order = torch.topk(probs, min(_TOP_K_FIRST, probs.shape[-1]))
    if float(top.sum()) < sampling.top_p:
        top, order = torch.sort(probs, descending=True)
    outside = torch.cumsum(top, dim=-1) - top > sampling.top_p
    top = top.masked_fill(outside, 0.0)
    return int(order[torch.multinomial(top, 1, generator=generator)])
