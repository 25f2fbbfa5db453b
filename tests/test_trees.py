"""Tree growth logic on a scripted engine (fixture): invariants, policies, failures, identity."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from aloe_ray.engines.base import Sampling
from aloe_ray.personas.model import Persona
from aloe_ray.prompts import PROMPT_VERSION
from aloe_ray.trees import RoleBinding, TreeRoles, TreeShape, grow_tree, make_tree_specs
from scripted_engine import ScriptedEngine, role_of

PERSONA = Persona.pair("She is 34, a nurse in Lagos with two sons.", "She is blunt and wants short answers.")


def roles_for(engine, max_attempts: int = 3) -> TreeRoles:
    b = RoleBinding(engine, Sampling(0.7, 0.95, 32), max_attempts)
    return TreeRoles(b, b, b, b)


def grow(shape: TreeShape, engine=None, run_id: str = "run", persona: Persona = PERSONA):
    engine = engine or ScriptedEngine()
    spec = make_tree_specs(run_id, [persona])[0]
    return asyncio.run(grow_tree(spec, roles_for(engine), shape)), engine


def check_invariants(result, shape: TreeShape) -> None:
    nodes = result.nodes
    by_id = {n["node_id"]: n for n in nodes}
    assert len(by_id) == len(nodes), "node ids are unique"
    for n in nodes:
        assert n["prompt_version"] == PROMPT_VERSION
        if n["role"] == "user":
            parent = by_id.get(n["parent_id"]) if n["parent_id"] else None
            if n["turn"] == 1:
                assert n["parent_id"] is None
            else:
                assert parent is not None and parent["role"] == "assistant" and parent["continued"]
                assert parent["turn"] == n["turn"] - 1
            kids = [c for c in nodes if c["parent_id"] == n["node_id"]]
            assert sorted(c["candidate_index"] for c in kids) == list(range(shape.num_candidates))
            assert Counter(c["label"] for c in kids) == {"chosen": 1, "rejected": shape.num_candidates - 1}
            chosen = next(c for c in kids if c["label"] == "chosen")
            assert chosen["candidate_index"] == n["judge_choice"]
            assert all(c["personalized"] == (c["candidate_index"] % 2 == 0) for c in kids)
        else:
            assert by_id[n["parent_id"]]["role"] == "user"


@pytest.mark.parametrize("policy", ["chosen", "random"])
def test_single_path_policies_grow_a_spine_with_dead_end_siblings(policy):
    shape = TreeShape(max_turns=5, num_candidates=3, policy=policy)
    result, _ = grow(shape)
    assert result.tree["status"] == "ok", result.tree["failure_reason"]
    assert result.tree["turns"] == 5 and result.tree["num_pairs"] == 5
    assert len(result.nodes) == 5 * (1 + 3)
    check_invariants(result, shape)
    for turn in range(1, 6):
        continued = [n for n in result.nodes if n["turn"] == turn and n["role"] == "assistant" and n["continued"]]
        assert len(continued) == 1
        if policy == "chosen":
            assert continued[0]["label"] == "chosen"


def test_random_policy_does_not_always_follow_the_chosen_reply():
    followed_chosen = []
    for i in range(6):
        result, _ = grow(TreeShape(max_turns=6, policy="random"), run_id=f"r{i}")
        for n in result.nodes:
            if n["role"] == "assistant" and n["continued"]:
                followed_chosen.append(n["label"] == "chosen")
    assert 0 < sum(followed_chosen) < len(followed_chosen)


def test_all_policy_branches_within_the_node_budget():
    shape = TreeShape(max_turns=4, num_candidates=2, policy="all", max_nodes=20)
    result, _ = grow(shape)
    assert result.tree["status"] == "ok"
    assert len(result.nodes) <= 20
    check_invariants(result, shape)
    users_per_turn = Counter(n["turn"] for n in result.nodes if n["role"] == "user")
    assert users_per_turn[1] == 1 and users_per_turn[2] == 2 and users_per_turn[3] == 3  # budget cut at 3rd
    leaves_marked = [n for n in result.nodes if n["role"] == "assistant" and n["continued"]]
    for n in leaves_marked:
        if n["turn"] < result.tree["turns"]:
            assert any(c["parent_id"] == n["node_id"] for c in result.nodes), "continued nodes have a child"


def test_identity_and_seeds_are_deterministic():
    a, _ = grow(TreeShape(max_turns=3))
    b, _ = grow(TreeShape(max_turns=3))
    strip = lambda nodes: [{k: v for k, v in n.items() if k != "latency_s"} for n in nodes]
    assert strip(a.nodes) == strip(b.nodes)
    c, _ = grow(TreeShape(max_turns=3), run_id="other-run")
    assert c.tree["tree_id"] != a.tree["tree_id"]
    assert {n["node_id"] for n in c.nodes}.isdisjoint(n["node_id"] for n in a.nodes)


def test_roles_see_the_right_conversation():
    shape = TreeShape(max_turns=3, policy="chosen")
    result, engine = grow(shape)
    sims = [r for r in engine.requests if role_of(r) == "simulator"]
    user_msgs = [n["text"] for n in result.nodes if n["role"] == "user"]
    # turn 3's simulator request: its own earlier messages as 'assistant', the replies as 'user'
    last = sims[-1].messages
    assert [m["content"] for m in last if m["role"] == "assistant"] == user_msgs[:2]
    assert PERSONA.profile in last[0]["content"] and PERSONA.personality in last[0]["content"]
    # responders see distinct user turns (not the first one repeated), ending with the latest
    responder = [r for r in engine.requests if role_of(r) == "responder"][-1]
    assert [m["content"] for m in responder.messages if m["role"] == "user"] == user_msgs
    # the judge sees the persona and the history; the affinity key is the tree id
    judge = [r for r in engine.requests if role_of(r) == "judge"][-1]
    assert user_msgs[0] in judge.messages[0]["content"] and judge.choices == ("A", "B")
    assert set(engine.affinities) == {result.tree["tree_id"]}
    # the personalized responder gets the induced persona as hint, the plain one does not
    induced = next(n for n in result.nodes if n["role"] == "user" and n["turn"] == 3)
    personalized = [r for r in engine.requests if role_of(r) == "responder"
                    and induced["induced_profile"] in r.messages[0]["content"]]
    assert len(personalized) == 1


def test_unparseable_judge_is_retried_then_fails_the_tree_with_the_raw_reply():
    engine = ScriptedEngine(overrides={"judge": lambda req, n: "Both are lovely."})
    # free-text judging: no constrained choice probabilities, so the parser decides
    result, _ = grow(TreeShape(max_turns=2), engine=engine)
    assert result.tree["status"] == "failed"
    assert "judge reply unusable" in result.tree["failure_reason"] and "Both are lovely." in result.tree["failure_reason"]
    assert result.nodes == []
    assert sum(1 for r in engine.requests if role_of(r) == "judge") == 3


def test_judge_parses_after_a_retry():
    engine = ScriptedEngine(overrides={"judge": lambda req, n: "hmm" if n == 1 else "Reply B."})
    result, _ = grow(TreeShape(max_turns=1, policy="chosen"), engine=engine)
    assert result.tree["status"] == "ok"
    user = next(n for n in result.nodes if n["role"] == "user")
    assert user["judge_choice"] == 1 and user["judge_raw"] == "Reply B."


def test_unparseable_inducer_is_recorded_not_invented():
    engine = ScriptedEngine(overrides={"inducer": lambda req, n: "She seems nice."})
    result, _ = grow(TreeShape(max_turns=2), engine=engine)
    assert result.tree["status"] == "ok"
    users = [n for n in result.nodes if n["role"] == "user"]
    assert all(u["induced_ok"] is False and u["induced_profile"] is None for u in users)
    assert all(u["induced_raw"] == "She seems nice." for u in users)


def test_engine_errors_are_retried_then_recorded():
    class Flaky(ScriptedEngine):
        def __init__(self, failures):
            super().__init__()
            self.failures = failures

        async def chat(self, requests, affinity=None):
            if self.failures:
                self.failures -= 1
                raise ConnectionError("replica went away")
            return await super().chat(requests, affinity)

    ok, _ = grow(TreeShape(max_turns=1), engine=Flaky(2))
    assert ok.tree["status"] == "ok"
    dead, _ = grow(TreeShape(max_turns=1), engine=Flaky(10**6))
    assert dead.tree["status"] == "failed"
    assert "ConnectionError: replica went away" in dead.tree["failure_reason"]


def test_specs_are_stable_and_limited():
    personas = [PERSONA, Persona.pair("He is 70, a retired farmer.", "He tells long stories.")]
    specs = make_tree_specs("r", personas, samples_per_persona=2)
    assert [s.sample_index for s in specs] == [0, 1, 0, 1]
    assert len({s.tree_id for s in specs}) == 4 and len({s.seed for s in specs}) == 4
    assert make_tree_specs("r", personas, samples_per_persona=2, limit=3) == specs[:3]
    assert make_tree_specs("r", personas, samples_per_persona=2) == specs


def test_a_plan_is_matched_against_done_trees_by_their_64_bit_hashes():
    import numpy as np

    from aloe_ray.trees.spec import PLAN_CHUNK, TreePlan, tree_hashes

    plan = TreePlan("r", tuple(Persona(f"p{i}", "x", "y") for i in range(700)), 200, 3)  # 140,000: chunks
    assert len(plan) > 2 * PLAN_CHUNK
    picked = [5, 0, PLAN_CHUNK - 1, PLAN_CHUNK, len(plan) - 1, 77_777]
    done = tree_hashes([plan.tree_id(i) for i in picked] + ["tree-not-a-hex-id", "t1"])  # unsorted, strays
    mask = plan.done_mask(done)
    assert mask.dtype == bool and mask.shape == (len(plan),)
    assert sorted(np.flatnonzero(mask).tolist()) == sorted(picked)
    assert not plan.done_mask(done[:0]).any()
    assert tree_hashes(["tree-00000000000000ff"]).tolist() == [255]
