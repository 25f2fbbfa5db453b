"""Labels carry no artefact of the pipeline: the judge's display order, the simulator's cleaning,
truncated replies kept out of training rows, and the quality report's figures (scripted engine,
a fixture for tree logic)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import pytest

from aloe_ray.engines.base import Completion
from aloe_ray.personas.model import Persona
from aloe_ray.prompts import clean_user_message
from aloe_ray.train.datasets import DpoFilters, dpo_pairs, sft_examples
from aloe_ray.trees import TreeShape, grow_tree, make_tree_specs
from aloe_ray.trees.grow import by_candidate, judge_display_order
from aloe_ray.trees.quality import QualityCounts, quality_markdown, warnings
from scripted_engine import ScriptedEngine
from test_trees import roles_for


def _grow_many(engine, n_trees: int, turns: int = 5, candidates: int = 2):
    personas = [Persona.pair(f"profile {i}", f"personality {i}") for i in range(n_trees)]
    specs = make_tree_specs("trust", personas)
    shape = TreeShape(max_turns=turns, num_candidates=candidates, policy="random")

    async def all_trees():
        return await asyncio.gather(*(grow_tree(s, roles_for(engine), shape) for s in specs))

    return asyncio.run(all_trees())


def _first_letter_judge(req, _n):
    return "A"


def test_display_order_is_a_seeded_permutation_mapped_back():
    orders = {judge_display_order(7, f"u{t}", 3) for t in range(1, 40)}
    assert all(sorted(o) == [0, 1, 2] for o in orders) and len(orders) > 1
    assert judge_display_order(7, "u1", 3) == judge_display_order(7, "u1", 3)
    # shown as (B, C, A) = candidates (1, 2, 0): position probabilities re-indexed by candidate
    assert by_candidate([0.7, 0.2, 0.1], (1, 2, 0)) == [0.1, 0.7, 0.2]
    assert by_candidate(None, (0, 1)) is None


def test_a_judge_that_always_says_A_no_longer_labels_the_personalized_reply():
    results = _grow_many(ScriptedEngine(overrides={"judge": _first_letter_judge}), 40)
    users = [n for r in results for n in r.nodes if n["role"] == "user"]
    chosen = [n for r in results for n in r.nodes if n.get("label") == "chosen"]
    assert len(users) == 200 and len(chosen) == 200
    share = sum(c["personalized"] for c in chosen) / len(chosen)
    assert 0.35 < share < 0.65, share  # was 1.0 with the personalized reply always shown first
    for u in users:  # the judge's letter A names the candidate shown first
        assert u["judge_choice"] == u["judge_order"][0]
        assert sorted(u["judge_order"]) == [0, 1]
    summary = QualityCounts().add([n for r in results for n in r.nodes]).summary()
    assert summary["chosen_position_share"]["A"] == 1.0
    assert any("display position A" in w for w in warnings(summary))


def test_the_judge_prompt_shows_candidates_in_the_recorded_order():
    engine = ScriptedEngine()
    [result] = _grow_many(engine, 1, turns=4, candidates=3)
    judge_prompts = [r.messages[0]["content"] for r in engine.requests if r.choices]
    for user, prompt in zip([n for n in result.nodes if n["role"] == "user"], judge_prompts):
        cands = sorted((n for n in result.nodes if n["parent_id"] == user["node_id"]),
                       key=lambda c: c["candidate_index"])
        shown = re.findall(r"Reply ([A-C]): (.*)", prompt)
        assert [t for _, t in shown] == [cands[i]["text"] for i in user["judge_order"]]
        # the scripted judge's probabilities (1 on its letter) come back on the chosen candidate
        assert user["judge_probs"][user["judge_choice"]] == 1.0


@pytest.mark.parametrize("raw, clean", [
    ("*smiles* Hi there! *waves*", "Hi there!"),
    ('User: "I just got back from a run."', "I just got back from a run."),
    ("**Me:** hey whats up", "hey whats up"),
    ("I love my garden.\nAssistant: That sounds lovely!", "I love my garden."),
    ("I **really** like cats", "I really like cats"),
    ("I *don't* want that, it is *not* what I meant", "I don't want that, it is not what I meant"),
    ("*sighs* ok, fine. *rolls eyes* Whatever.", "ok, fine. Whatever."),
    ("ok *shrugs*", "ok"),
    ("“Not sure, maybe.”", "Not sure, maybe."),
    ('She said "hi" and "bye"', 'She said "hi" and "bye"'),
    ("*nods*", ""),
    ("User:", ""),
    ("Assistant: How can I help you today?", ""),
])
def test_simulator_output_is_cleaned_to_a_users_message(raw, clean):
    assert clean_user_message(raw) == clean


def test_cleaning_keeps_the_raw_text_and_an_empty_message_is_retried_then_recorded():
    replies = iter(["*sighs deeply*", "User: *smiles* I finally finished my thesis!"])
    engine = ScriptedEngine(overrides={"simulator": lambda req, n: next(replies, "ok then")})
    [result] = _grow_many(engine, 1, turns=1)
    [user] = [n for n in result.nodes if n["role"] == "user"]
    assert user["text"] == "I finally finished my thesis!"
    assert user["text_raw"] == "User: *smiles* I finally finished my thesis!"
    assert user["attempts"] == 2

    empty = ScriptedEngine(overrides={"simulator": lambda req, n: "*stares*"})
    [failed] = _grow_many(empty, 1, turns=1)
    assert failed.tree["status"] == "failed" and "simulator reply unusable" in failed.tree["failure_reason"]


def test_truncated_replies_are_never_training_targets_unless_kept():
    [result] = _grow_many(_wrap_cut(ScriptedEngine()), 1, turns=4)  # odd candidates (plain) are cut
    nodes = result.nodes
    cut = {n["node_id"] for n in nodes if n["finish_reason"] == "length"}
    assert cut and all(n["personalized"] is False for n in nodes if n["node_id"] in cut)

    dropped = Counter()
    pairs = dpo_pairs(nodes, dropped=dropped)
    assert pairs == []  # every pair has a cut plain reply on one side
    chosen_plain = sum(1 for n in nodes if n.get("label") == "chosen" and not n["personalized"])
    assert dropped == {"chosen_truncated": chosen_plain, "rejected_truncated": 4 - chosen_plain}
    assert len(dpo_pairs(nodes, DpoFilters(keep_truncated=True))) == 4

    dropped = Counter()
    rows = sft_examples(nodes, loss_on="continued", dropped=dropped)
    on_path = [n for n in nodes if n["role"] == "assistant"
               and (n["continued"] if n["turn"] < 4 else n["label"] == "chosen")]
    plain_on_path = sum(not n["personalized"] for n in on_path)
    assert dropped["target_truncated"] == plain_on_path
    if plain_on_path == len(on_path):
        assert rows == [] and dropped["no_target"] == 1
    else:
        [row] = rows
        assert row["assistant_targets"] == [bool(n["personalized"]) for n in on_path]  # a cut reply has no loss
    kept = sft_examples(nodes, loss_on="continued", keep_truncated=True)
    assert all(kept[0]["assistant_targets"])


def test_quality_figures_match_a_hand_count():
    engine = ScriptedEngine(overrides={
        "simulator": lambda req, n: "How can I help you today?" if n % 2 else f"my news {n}",
        "inducer": lambda req, n: "PROFILE: x\nPERSONALITY: y" if n % 4 else "no idea",
    })
    results = _grow_many(_wrap_cut(engine), 6, turns=3)
    nodes = [n for r in results for n in r.nodes]
    s = QualityCounts().add(nodes[: len(nodes) // 2]).merge(QualityCounts().add(nodes[len(nodes) // 2:])).summary()
    users = [n for n in nodes if n["role"] == "user"]
    assistants = [n for n in nodes if n["role"] == "assistant"]
    assert s["trees"] == 6 and s["user_messages"] == len(users) == 18 and s["judged_turns"] == 18
    assert s["inducer_parse_rate"] == sum(bool(u["induced_ok"]) for u in users) / 18
    assert s["assistant_like_user_share"] == sum("How can I help" in u["text"] for u in users) / 18
    assert s["cut_share"]["responder"] == sum(a["finish_reason"] == "length" for a in assistants) / len(assistants)
    assert s["cut_share"]["simulator"] == 0 and s["cut_share"]["judge"] == 0
    chosen = [a for a in assistants if a["label"] == "chosen"]
    assert s["personalized_chosen_rate"] == sum(a["personalized"] for a in chosen) / 18
    first = Counter(u["judge_order"].index(u["judge_choice"]) for u in users)
    assert s["chosen_position_share"] == {"A": first[0] / 18, "B": first[1] / 18}
    assert sum(s["judge_margin_histogram"]["counts"]) == 18  # scripted probabilities: margin 1 each
    assert s["judge_margin_histogram"]["counts"][-1] == 18
    assert s["dpo_pairs_default_filters"] == len(dpo_pairs(nodes))
    assert s["dpo_dropped"]
    md = quality_markdown(s, warnings(s))
    assert "## Warnings" in md and "read like an assistant" in md


def _wrap_cut(engine):
    """Cut every plain reply (odd candidates), keep the engine's overrides."""

    class Wrapped:
        model_name = engine.model_name

        async def chat(self, requests, affinity=None):
            out = await engine.chat(requests, affinity)
            return [Completion(c.text, "length", c.prompt_tokens, c.completion_tokens, c.model, c.choice_probs)
                    if c.text.startswith("plain") else c for c in out]

    return Wrapped()



def test_a_prompt_too_long_is_not_retried_and_an_optional_role_survives_it():
    from aloe_ray.engines.base import PromptTooLong

    class TooLong(ScriptedEngine):
        def __init__(self, role):
            super().__init__()
            self.role, self.calls = role, 0

        async def chat(self, requests, affinity=None):
            from scripted_engine import role_of

            if role_of(requests[0]) == self.role:
                self.calls += 1
                raise PromptTooLong("prompt of 4000 tokens exceeds the input limit of 2048 tokens")
            return await super().chat(requests, affinity)

    inducer = TooLong("inducer")
    [ok] = _grow_many(inducer, 1, turns=2)
    assert ok.tree["status"] == "ok" and inducer.calls == 2  # once per turn, no retries
    users = [n for n in ok.nodes if n["role"] == "user"]
    assert all(u["induced_ok"] is False and "PromptTooLong" in u["induced_raw"] for u in users)
    judge = TooLong("judge")
    [failed] = _grow_many(judge, 1, turns=2)
    assert failed.tree["status"] == "failed" and judge.calls == 1
    assert "after 1 attempt(s): PromptTooLong" in failed.tree["failure_reason"]


def test_a_long_transcript_keeps_its_latest_turns_within_the_budget():
    from aloe_ray.prompts.templates import TRANSCRIPT_MAX_CHARS, transcript

    conversation = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "x" * 400}
                    for i in range(40)]
    text = transcript(conversation)
    assert len(text) <= TRANSCRIPT_MAX_CHARS + 100
    assert text.startswith("(the first ") and "message 39" in text and "message 0 " not in text
    assert transcript(conversation[:2]) == "\n".join(f"{r}: {m['content']}" for r, m in
                                                     zip(("User", "Assistant"), conversation[:2]))
