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
    # engines of one process share one CPU thread budget and run one forward pass at a time
    assert cached._forward_lock is plain._forward_lock


def test_engines_in_one_process_share_the_cpu_threads(engine, bundled_model_path):
    import torch

    from aloe_ray.engines.hf import HFEngine

    threads = torch.get_num_threads()
    other = HFEngine(bundled_model_path, max_batch_size=2, torch_threads=threads + 7)
    assert torch.get_num_threads() == threads and other._forward_lock is engine._forward_lock

    async def both():
        return await asyncio.gather(engine.chat([greedy("Name a bird.", 6)]), other.chat([greedy("Name a bird.", 6)]))

    a, b = asyncio.run(both())
    assert a[0].text == b[0].text  # same weights, greedy: interleaved steps do not disturb each other


def greedy(text: str, max_tokens: int = 24, stop=(), system: str | None = None) -> ChatRequest:
    messages = ({"role": "system", "content": system},) if system else ()
    return ChatRequest(messages=(*messages, {"role": "user", "content": text}),
                       sampling=Sampling(temperature=0.0, max_tokens=max_tokens, stop=tuple(stop)))


def test_stop_strings_cut_the_reply(engine):
    (full,) = asyncio.run(engine.chat([greedy("Describe a forest in two sentences.")]))
    words = full.text.split()
    assert len(words) > 4, full.text
    stop = words[3]
    (cut,) = asyncio.run(engine.chat([greedy("Describe a forest in two sentences.", stop=[stop, "#never#"])]))
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert full.text.startswith(cut.text) and len(cut.text) < full.text.index(stop) + 1
    assert cut.completion_tokens < full.completion_tokens


def test_stream_yields_deltas_that_add_up_to_the_reply(engine):
    async def streamed():
        items = [item async for item in engine.stream(greedy("Tell me about the moon.", max_tokens=20))]
        return items[:-1], items[-1]

    deltas, final = asyncio.run(streamed())
    (whole,) = asyncio.run(engine.chat([greedy("Tell me about the moon.", max_tokens=20)]))
    assert all(isinstance(d, str) and d for d in deltas) and len(deltas) > 3
    assert "".join(deltas) == final.text == whole.text
    assert final.completion_tokens == whole.completion_tokens


def test_batch_shrinks_to_its_longest_live_row(engine):
    long_prompt = "Here is some context. " * 60

    async def run():
        short = engine.stream(greedy("Hi.", max_tokens=30))
        first = await short.__anext__()  # the short row is decoding
        long = asyncio.ensure_future(engine.chat([greedy(long_prompt, max_tokens=2)]))
        widths = []
        async for item in short:
            if long.done():
                widths.append(engine.stats.batch_width)
        return first, (await long)[0], item, widths

    _, long, short, widths = asyncio.run(run())
    assert long.prompt_tokens > 200 and widths
    assert max(widths) <= short.prompt_tokens + short.completion_tokens  # the long row's padding went


def test_a_cancelled_request_stops_decoding(engine):
    before = engine.stats.as_dict()

    async def run():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.chat([greedy("Write a long story about ships.", max_tokens=400)]), 0.5)
        for _ in range(200):  # bounded wait for the worker's next step
            if engine.stats.running == 0:
                break
            await asyncio.sleep(0.05)

    asyncio.run(run())
    after = engine.stats.as_dict()
    assert after["cancelled"] == before["cancelled"] + 1 and after["running"] == 0
    assert after["generated_tokens"] - before["generated_tokens"] < 400


def test_a_closed_stream_stops_decoding(engine):
    before = engine.stats.as_dict()

    async def run():
        stream = engine.stream(greedy("Write a long story about trains.", max_tokens=400))
        await stream.__anext__()
        await stream.aclose()
        for _ in range(200):
            if engine.stats.running == 0:
                break
            await asyncio.sleep(0.05)

    asyncio.run(run())
    assert engine.stats.as_dict()["cancelled"] == before["cancelled"] + 1


def test_too_long_prompt_drops_old_turns_and_keeps_the_system_prompt(engine, monkeypatch):
    from aloe_ray.engines.base import PromptTooLong

    system = {"role": "system", "content": "You are a pirate."}
    turns = tuple({"role": ("user", "assistant")[i % 2], "content": f"Message {i}: " + "words " * 40}
                  for i in range(7))
    req = ChatRequest(messages=(system, *turns), sampling=Sampling(0.0, 1.0, 4, 0))
    full = len(engine._render(req.messages))
    monkeypatch.setattr(engine, "max_input_tokens", full - 10)
    kept = engine.tokenizer.decode(engine._encode(req))
    assert "You are a pirate." in kept and "Message 0:" not in kept and "Message 6:" in kept
    (c,) = asyncio.run(engine.chat([req]))
    assert c.prompt_tokens <= full - 10
    monkeypatch.setattr(engine, "max_input_tokens", 30)
    with pytest.raises(PromptTooLong, match="input limit of 30"):
        asyncio.run(engine.chat([req]))
    monkeypatch.undo()
    assert asyncio.run(engine.chat([greedy("Still alive?", max_tokens=2)]))[0].completion_tokens > 0
