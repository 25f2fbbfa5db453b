"""The hf backend on the bundled model: real generation, seeds, dynamic batching, choices."""

from __future__ import annotations

import asyncio

import pytest

from aloe_ray.engines.base import ChatRequest, Sampling


@pytest.fixture(scope="module")
def engine(bundled_model_path):
    from aloe_ray.engines.hf import HFEngine

    return HFEngine(bundled_model_path, model_name="smollm2-135m", max_batch_size=8, batch_wait_ms=50)


def ask(text: str, seed: int | None = 1, max_tokens: int = 12, temperature: float = 0.8) -> ChatRequest:
    return ChatRequest(messages=({"role": "user", "content": text},),
                       sampling=Sampling(temperature=temperature, max_tokens=max_tokens, seed=seed))


def test_generates_well_formed_completions(engine):
    (c,) = asyncio.run(engine.chat([ask("Name a fruit.", max_tokens=8)]))
    assert c.text and c.model == "smollm2-135m"
    assert 0 < c.completion_tokens <= 8 and c.prompt_tokens > 5
    assert c.finish_reason in ("stop", "length")
    if c.finish_reason == "length":
        assert c.completion_tokens == 8


def test_seeded_output_does_not_depend_on_batch_mates(engine):
    alone = asyncio.run(engine.chat([ask("Tell me about rivers.")]))[0]
    crowd = asyncio.run(engine.chat([ask("Tell me about rivers.")] + [ask(f"Count to {i}.", seed=i) for i in range(5)]))
    assert crowd[0].text == alone.text
    varied = asyncio.run(engine.chat([ask("Tell me about rivers.", seed=s, temperature=1.2) for s in (2, 3, 4)]))
    assert len({c.text for c in varied}) > 1


def test_concurrent_callers_share_forward_passes(engine):
    before = dict(engine.stats.as_dict())

    async def many():
        return await asyncio.gather(*(engine.chat([ask(f"Say hi #{i}", seed=i, max_tokens=4)]) for i in range(8)))

    results = asyncio.run(many())
    after = engine.stats.as_dict()
    assert len(results) == 8 and all(r[0].text for r in results)
    batches = after["batches"] - before["batches"]
    assert batches < 8, f"8 concurrent requests ran in {batches} batches"


def test_choices_are_constrained_with_probabilities(engine):
    req = ChatRequest(messages=({"role": "user", "content": "Is the sky blue? Answer A for yes, B for no."},),
                      choices=("A", "B"))
    (c,) = asyncio.run(engine.chat([req]))
    assert c.text in ("A", "B") and c.finish_reason == "choice"
    assert c.choice_probs is not None and abs(sum(c.choice_probs) - 1) < 1e-4
    assert c.text == ("A", "B")[c.choice_probs.index(max(c.choice_probs))]
    scores = ChatRequest(messages=({"role": "user", "content": "Rate 1-5."},), choices=tuple("12345"))
    (s,) = asyncio.run(engine.chat([scores]))
    assert len(s.choice_probs) == 5 and s.text in "12345"


def test_bad_requests_fail_clearly():
    with pytest.raises(ValueError, match="malformed chat message"):
        ChatRequest(messages=({"role": "robot", "content": "x"},))
    with pytest.raises(ValueError, match="at least two options"):
        ChatRequest(messages=({"role": "user", "content": "x"},), choices=("A",))


def test_prefix_cache_resumes_a_conversation_with_the_same_output(bundled_model_path):
    from aloe_ray.engines.hf import HFEngine

    cached = HFEngine(bundled_model_path, max_batch_size=4, prefix_cache_entries=8)
    plain = HFEngine(bundled_model_path, max_batch_size=4, prefix_cache_entries=0)
    turn1 = ({"role": "system", "content": "You are terse."}, {"role": "user", "content": "I keep bees in Oslo."})
    turn2 = (*turn1, {"role": "assistant", "content": "Nice, bees are great."},
             {"role": "user", "content": "What should I plant for them?"})
    reqs = [ChatRequest(turn1, Sampling(0.0, 1.0, 10, 0)), ChatRequest(turn2, Sampling(0.0, 1.0, 10, 0))]

    async def conversation(engine):
        return [(await engine.chat([r], affinity="conv-1"))[0] for r in reqs]

    with_cache, without = asyncio.run(conversation(cached)), asyncio.run(conversation(plain))
    assert [c.text for c in with_cache] == [c.text for c in without]
    assert cached.prefix_cache.hits_tokens >= with_cache[0].prompt_tokens - 1
    assert cached.stats.as_dict()["prefix_cache_hit_rate"] > 0.3
    assert plain.prefix_cache.hits_tokens == 0
