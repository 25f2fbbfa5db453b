"""SFT and DPO rows from trees grown on the scripted engine (a fixture for tree logic)."""

from __future__ import annotations

import pytest

from aloe_ray.train.datasets import DpoFilters, TreeDataError, dpo_pairs, sft_examples
from aloe_ray.trees import TreeShape
from test_trees import grow


def _tree(policy: str, turns: int = 4, candidates: int = 2, max_nodes: int = 64):
    result, _ = grow(TreeShape(turns, candidates, policy, max_nodes))
    return result.nodes


def _users_on_path(nodes):
    """User nodes along the continued path, in turn order."""
    by_parent = {}
    for n in nodes:
        by_parent.setdefault(n["parent_id"], []).append(n)
    path, user = [], by_parent[None][0]
    while user is not None:
        path.append(user)
        cont = [c for c in by_parent.get(user["node_id"], []) if c["continued"]]
        nxt = by_parent.get(cont[0]["node_id"], []) if cont else []
        user = nxt[0] if nxt else None
    return path


@pytest.mark.parametrize("policy", ["random", "chosen"])
def test_sft_one_conversation_per_tree_with_the_right_user_turns(policy):
    nodes = _tree(policy)
    [ex] = sft_examples(nodes)
    msgs = ex["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 4
    users = _users_on_path(nodes)
    assert [m["content"] for m in msgs[::2]] == [u["text"] for u in users]  # each turn's own user message
    assert len({m["content"] for m in msgs[::2]}) == 4  # the first user turn is not repeated
    by_text = {n["text"]: n for n in nodes if n["role"] == "assistant"}
    replies = [by_text[m["content"]] for m in msgs[1::2]]
    assert all(r["continued"] for r in replies[:-1])
    assert replies[-1]["label"] == "chosen"  # the leaf turn: nothing answers it, so the judge's choice
    assert ex["assistant_targets"] == [r["label"] == "chosen" for r in replies]
    assert ex["num_targets"] == sum(ex["assistant_targets"]) >= 1
    if policy == "chosen":
        assert all(ex["assistant_targets"])
    assert sft_examples(nodes, loss_on="continued")[0]["assistant_targets"] == [True] * 4


def test_random_policy_keeps_rejected_continuations_as_context_only():
    for run in range(20):  # find a tree whose path continued along a rejected reply
        result, _ = grow(TreeShape(4, 2, "random", 64), run_id=f"r{run}")
        ex = sft_examples(result.nodes)[0]
        if not all(ex["assistant_targets"]):
            break
    else:
        pytest.fail("no random tree continued along a rejected reply")
    by_text = {n["text"]: n for n in result.nodes if n["role"] == "assistant"}
    for msg, target in zip(ex["messages"][1::2], ex["assistant_targets"]):
        assert target == (by_text[msg["content"]]["label"] == "chosen")


def test_dpo_one_pair_per_turn_with_history_along_the_path():
    nodes = _tree("random")
    pairs = dpo_pairs(nodes)
    assert [p["turn"] for p in pairs] == [1, 2, 3, 4]
    sft = sft_examples(nodes, loss_on="continued")[0]["messages"]
    by_id = {n["node_id"]: n for n in nodes}
    for p in pairs:
        k = p["turn"]
        assert p["prompt"][:-1] == sft[: 2 * (k - 1)]  # history along the continued path
        assert p["prompt"][-1] == sft[2 * (k - 1)] and p["prompt"][-1]["role"] == "user"
        assert by_id[p["chosen_node_id"]]["label"] == "chosen" and by_id[p["rejected_node_id"]]["label"] == "rejected"
        assert p["chosen"] == [{"role": "assistant", "content": by_id[p["chosen_node_id"]]["text"]}]
        assert p["rejected"][0]["content"] == by_id[p["rejected_node_id"]]["text"]
        assert by_id[p["chosen_node_id"]]["parent_id"] == by_id[p["rejected_node_id"]]["parent_id"]
    assert len({p["pair_id"] for p in pairs}) == 4


def test_dpo_rejected_each_or_one_and_filters():
    nodes = _tree("chosen", turns=3, candidates=3)
    assert len(dpo_pairs(nodes)) == 3 * 2 and len(dpo_pairs(nodes, DpoFilters(rejected="one"))) == 3
    personalized = dpo_pairs(nodes, DpoFilters(personalized_chosen_only=True))
    assert all(p["chosen_personalized"] for p in personalized)
    assert len(personalized) == 2 * sum(
        1 for n in nodes if n["role"] == "assistant" and n["label"] == "chosen" and n["personalized"])
    # identical chosen and rejected text: the pair teaches nothing and is dropped
    users = [n for n in nodes if n["role"] == "user"]
    first = users[0]["node_id"]
    cands = [n for n in nodes if n.get("parent_id") == first and n["role"] == "assistant"]
    chosen = next(c for c in cands if c["label"] == "chosen")
    same = [{**n, "text": "  " + chosen["text"].upper()} if n["parent_id"] == first and n is not chosen
            and n["role"] == "assistant" else n for n in nodes]
    assert [p["turn"] for p in dpo_pairs(same)].count(1) == 0
    # judge margin: pairs without judge probabilities cannot show one, so a margin filter drops them
    no_probs = [{**n, "judge_probs": None} for n in nodes]
    assert dpo_pairs(no_probs, DpoFilters(min_judge_margin=0.2)) == []
    assert len(dpo_pairs(no_probs)) == 6
    with_probs = [{**n, "judge_probs": [0.9, 0.05, 0.05] if n["judge_choice"] == 0 else [0.4, 0.35, 0.25]}
                  if n["role"] == "user" else n for n in nodes]
    kept = dpo_pairs(with_probs, DpoFilters(min_judge_margin=0.5))
    assert kept and all(p["judge_margin"] >= 0.5 for p in kept)


def test_all_policy_yields_one_conversation_per_leaf_and_no_duplicate_pairs():
    nodes = _tree("all", turns=3, candidates=2, max_nodes=64)
    examples = sft_examples(nodes, loss_on="continued")
    assert len(examples) == 4  # 2 x 2 branches below turn 1 and 2, the leaf turn takes the chosen reply
    assert len({tuple(m["content"] for m in e["messages"]) for e in examples}) == 4
    pairs = dpo_pairs(nodes, DpoFilters(rejected="one"))
    assert len(pairs) == sum(1 for n in nodes if n["role"] == "user") == 7


def test_broken_tables_are_rejected_with_the_reason():
    nodes = _tree("random", turns=2)
    orphan = [n for n in nodes if n["turn"] == 2 and n["role"] == "user"][0]
    with pytest.raises(TreeDataError, match="not in the table"):
        sft_examples([n for n in nodes if n["node_id"] != orphan["parent_id"]])
    unlabeled = [{**n, "label": None} if n["role"] == "assistant" else n for n in nodes]
    with pytest.raises(TreeDataError, match="exactly 1"):
        dpo_pairs(unlabeled)
    with pytest.raises(ValueError, match="loss_on"):
        sft_examples(nodes, loss_on="everything")
