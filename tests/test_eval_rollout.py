"""ALOE rollout logic, prompts and the score parser on deterministic scripted engines (milliseconds)."""

from __future__ import annotations

import asyncio

import pytest

from aloe_ray.engines.base import ChatRequest, Completion, Sampling
from aloe_ray.eval.rollout import EvalRoles, JudgeMode, RoleBinding, make_rollout_specs, roll_out
from aloe_ray.personas.loaders import seed_personas
from aloe_ray.prompts.eval import judge_score_messages, parse_score
from scripted_engine import ScriptedEngine


@pytest.mark.parametrize("reply, score", [
    ("4", 4.0), ("Score: 4/5", 4.0), ("**4**", 4.0), ("4/5", 4.0), ("Sure! **Score: 2**", 2.0),
    ("I'd rate it 3 out of 5.", 3.0), ("Rating: 3.5", 3.5), ("Score: 4. It is short (1 sentence).", 4.0),
    ("5\n", 5.0), ("1", 1.0),
    ("6", None), ("0", None), ("Score: 8/10", None), ("3 or 4", None), ("five", None), ("", None),
    ("1. Style: 4\n2. Content: 3", None), ("The reply fits well.", None), ("-2", None), ("Score: -3", None),
    # a leading bare score wins over the numbers of an explanation after it
    ("4\n\nExplanation: the reply has 2 sentences and earns 3 points", 4.0), ("4.\nIt names 2 hobbies.", 4.0),
    ("4/5\nStyle 3, content 5", 4.0), ("6\nIt is great", None), ("8/10\nGood", None),
    # else the first labelled score, else the first N/5
    ("Sure! I'd rate this reply a 4 out of 5 because it fits 2 of 3 criteria", 4.0),
    ("Score: 3/5. Style would be 5 on its own.", 3.0), ("Score: 3\nRating: 5", 3.0),
    ("The reply deserves 2/5: it ignores 3 facts.", 2.0), ("Overall 3 out of 5, style 4 out of 5", 3.0),
    ("Its 3 sentences are fine: 7/10", None),
])
def test_parse_score(reply, score):
    assert parse_score(reply) == score


def persona():
    return seed_personas(per_profile=1, seed=0, split="benchmark")[0]


class Recorder(ScriptedEngine):
    """A scripted engine whose every reply comes from `answer(request, n)` (n: 1-based call count)."""

    def __init__(self, name, answer, probs=None):
        super().__init__(name)
        self.answer, self.probs = answer, probs

    async def chat(self, requests, affinity=None):
        out = []
        for req in requests:
            self.requests.append(req)
            self.affinities.append(affinity)
            text = self.answer(req, len(self.requests))
            probs = self.probs(req, len(self.requests)) if self.probs else None
            out.append(Completion(text=text, finish_reason="choice" if probs else "stop", prompt_tokens=7,
                                  completion_tokens=3, model=self.model_name, choice_probs=probs))
        return out


def roles(simulator, model, judge, judge_attempts=3):
    return EvalRoles(RoleBinding(simulator, Sampling(0.9, 0.95, 48)), RoleBinding(model, Sampling(0.7, 0.95, 72)),
                     RoleBinding(judge, Sampling(0.0, 0.95, 8), judge_attempts))


def run(engines, turns=3, judge=JudgeMode(), spec=None):
    spec = spec or make_rollout_specs("r", "base", [persona()])[0]
    return asyncio.run(roll_out(spec, roles(*engines), judge, turns))


def test_rollout_turns_scores_and_what_each_role_sees():
    sim = ScriptedEngine("sim")
    model = Recorder("mut", lambda req, n: f"reply {n}")
    judge = Recorder("judge", lambda req, n: "5", probs=lambda req, n: [0.0, 0.0, 0.5, 0.5, 0.0])
    result = run((sim, model, judge), turns=3)
    assert result.rollout["status"] == "ok" and result.rollout["turns"] == 3
    assert [t["turn"] for t in result.turns] == [1, 2, 3]
    assert [t["reply"] for t in result.turns] == ["reply 1", "reply 2", "reply 3"]
    assert all(t["score"] == pytest.approx(3.5) for t in result.turns)  # expected score, not the argmax "5"
    assert all(t["score_probs"] == [0.0, 0.0, 0.5, 0.5, 0.0] and t["judge_raw"] == "5" for t in result.turns)
    assert result.rollout["mean_score"] == pytest.approx(3.5) and result.rollout["scores_missing"] == 0
    p = persona()
    # the simulator opens; the model under test never sees the persona, only the conversation
    assert len(sim.requests) == 3 and p.profile in sim.requests[0].messages[0]["content"]
    for i, req in enumerate(model.requests):
        assert all(p.profile not in m["content"] and p.personality not in m["content"] for m in req.messages)
        assert [m["role"] for m in req.messages] == ["user", "assistant"] * i + ["user"]
        assert req.messages[-1]["content"] == result.turns[i]["user_message"]
    # the judge sees the persona, asks for a constrained 1..5 answer
    assert all(r.choices == ("1", "2", "3", "4", "5") and p.personality in r.messages[0]["content"]
               for r in judge.requests)
    # one conversation, one affinity key: its growing prefix can stay on one replica
    assert set(model.affinities) == {result.rollout["rollout_id"]}


def test_judge_history_on_and_off_shows_in_the_prompt():
    sim = ScriptedEngine("sim")
    for history in (True, False):
        judge = Recorder("judge", lambda req, n: "4")
        result = run((sim, Recorder("mut", lambda req, n: f"reply {n}"), judge), turns=3,
                     judge=JudgeMode(history=history, scoring="sampled"))
        last = judge.requests[-1].messages[0]["content"]
        first_user = result.turns[0]["user_message"]
        assert result.turns[2]["user_message"] in last and "reply 3" in last
        if history:
            assert "Conversation so far" in last and first_user in last and "reply 1" in last
        else:
            assert "Conversation so far" not in last and first_user not in last and "reply 1" not in last
        assert all(t["judge_history"] is history for t in result.turns)


def test_unparseable_scores_are_retried_then_recorded_missing_with_the_raw_reply():
    # sampled scoring: turn 1 parses on the 2nd try; turn 2 never parses (3 tries); turn 3 at once
    answers = iter(["great reply!", "Score: 4/5", "hmm", "8/10", "I like it", "2"])
    judge = Recorder("judge", lambda req, n: next(answers))
    result = run((ScriptedEngine("sim"), Recorder("mut", lambda req, n: "ok"), judge), turns=3,
                 judge=JudgeMode(scoring="sampled"))
    assert result.rollout["status"] == "ok"
    t1, t2, t3 = result.turns
    assert (t1["score"], t1["judge_attempts"], t1["judge_raw"]) == (4.0, 2, "Score: 4/5")
    assert (t2["score"], t2["judge_attempts"], t2["judge_raw"]) == (None, 3, "I like it")
    assert (t3["score"], t3["judge_attempts"]) == (2.0, 1)
    assert result.rollout["scores_missing"] == 1 and result.rollout["mean_score"] == pytest.approx(3.0)
    # each retry is a new request with its own seed; a greedy judge retries with temperature
    seeds = [r.sampling.seed for r in judge.requests]
    assert len(set(seeds)) == len(seeds)
    assert judge.requests[0].sampling.temperature == 0.0 and judge.requests[1].sampling.temperature > 0


def test_expected_scoring_without_probabilities_uses_the_answer_and_a_crashing_judge_never_fails_the_run():
    judge = Recorder("judge", lambda req, n: "3")  # an endpoint that gives no logprobs
    result = run((ScriptedEngine("sim"), Recorder("mut", lambda req, n: "ok"), judge), turns=2)
    assert [t["score"] for t in result.turns] == [3.0, 3.0] and result.turns[0]["score_probs"] is None

    class Down:
        model_name = "down"

        async def chat(self, requests, affinity=None):
            raise ConnectionError("judge endpoint unreachable")

    result = run((ScriptedEngine("sim"), Recorder("mut", lambda req, n: "ok"), Down()), turns=2)
    assert result.rollout["status"] == "ok" and result.rollout["scores_missing"] == 2
    assert all(t["score"] is None and "unreachable" in t["judge_error"] for t in result.turns)


def test_a_judge_whose_last_attempt_raises_keeps_the_earlier_raw_reply_and_the_error():
    class Flaky(Recorder):
        async def chat(self, requests, affinity=None):
            out = await super().chat(requests, affinity)
            if len(self.requests) % 3 == 0:  # every score's third (last) attempt raises
                raise TimeoutError("judge timed out")
            return out

    judge = Flaky("judge", lambda req, n: ["no idea", "still thinking"][(n - 1) % 3 % 2])
    result = run((ScriptedEngine("sim"), Recorder("mut", lambda req, n: "ok"), judge), turns=1,
                 judge=JudgeMode(scoring="sampled"))
    (t,) = result.turns
    assert result.rollout["status"] == "ok" and t["score"] is None and t["judge_attempts"] == 3
    assert t["judge_raw"] == "still thinking"  # the last reply that came back, not lost to the error
    assert "TimeoutError: judge timed out" in t["judge_error"]
    # a score accepted after a failed attempt carries no error
    judge = Recorder("judge", lambda req, n: "4")
    judge.chat = _failing_first(judge.chat)
    (t,) = run((ScriptedEngine("sim"), Recorder("mut", lambda req, n: "ok"), judge), turns=1,
               judge=JudgeMode(scoring="sampled")).turns
    assert (t["score"], t["judge_attempts"], t["judge_raw"], t["judge_error"]) == (4.0, 2, "4", None)


def _failing_first(chat):
    calls = []

    async def wrapped(requests, affinity=None):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("first call fails")
        return await chat(requests, affinity)

    return wrapped


def test_a_failed_rollout_keeps_the_turns_it_completed():
    model = Recorder("mut", lambda req, n: "fine" if n <= 2 else " ")  # turn 3 never gets a reply
    result = run((ScriptedEngine("sim"), model, Recorder("j", lambda r, n: "4")), turns=4)
    assert result.rollout["status"] == "failed" and "turn 3" in result.rollout["failure_reason"]
    assert [t["turn"] for t in result.turns] == [1, 2] and result.rollout["turns"] == 2
    assert all(t["score"] == 4.0 and t["rollout_id"] == result.rollout["rollout_id"] for t in result.turns)


def test_model_under_test_that_never_answers_fails_the_rollout_with_a_reason():
    result = run((ScriptedEngine("sim"), Recorder("mut", lambda req, n: "   "), Recorder("j", lambda r, n: "4")))
    assert result.rollout["status"] == "failed" and result.turns == []
    assert "model under test reply unusable at turn 1 after 3 attempts" in result.rollout["failure_reason"]


def test_rollouts_are_deterministic_per_persona_and_seed():
    personas = seed_personas(per_profile=2, seed=0, split="benchmark")[:2]
    a = make_rollout_specs("r", "base", personas)
    assert a == make_rollout_specs("r", "base", personas)
    assert len({s.rollout_id for s in a}) == 2
    assert {s.rollout_id for s in a}.isdisjoint(s.rollout_id for s in make_rollout_specs("r", "dpo", personas))
    engines = lambda: (ScriptedEngine("sim"), ScriptedEngine("mut"), Recorder("j", lambda r, n: "4"))  # noqa: E731
    first, second = run(engines(), spec=a[0]), run(engines(), spec=a[0])
    strip = lambda rows: [{k: v for k, v in r.items() if "latency" not in k} for r in rows]  # noqa: E731
    assert strip(first.turns) == strip(second.turns)


def test_judge_prompt_needs_the_user_message_last():
    with pytest.raises(ValueError, match="end with the user's message"):
        judge_score_messages("p", "q", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "x")
    msgs = judge_score_messages("PROFILE-X", "PERS-Y", [{"role": "user", "content": "hi"}], "REPLY-Z")
    body = msgs[0]["content"]
    # conversation and reply first, persona and instructions last: a left-truncated prompt keeps them
    assert body.index("REPLY-Z") < body.index("PROFILE-X") < body.index("single digit from 1 to 5")
    assert isinstance(ChatRequest(msgs), ChatRequest)
