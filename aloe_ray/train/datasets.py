"""SFT and DPO rows from grown trees. Pure: no Ray, no torch.

Input is the `nodes` table as row dicts (see `aloe_ray.schema.NODES`). A tree's conversation is
recovered by following `continued` edges from its first user message.

- SFT: one conversation per continued root-to-leaf path (exactly one per tree under the `chosen`
  and `random` policies), in TRL's conversational format (`messages`), with the loss on its
  assistant turns (not ten copies of growing prefixes). User turns are each turn's own message.
  `loss_on="chosen"` (default) trains only on assistant turns the judge preferred; a rejected
  reply the conversation continued along (the `random` policy) stays as context, since the next
  user message answers it. At the last turn nothing answers the reply, so the chosen one is used.
  `loss_on="continued"` trains on every assistant turn of the path.
- DPO: one pair per judged turn (or one per rejected candidate): prompt = the history along the
  path up to and including that turn's user message, chosen = the judge-preferred reply,
  rejected = another candidate; TRL's conversational preference format.

A reply cut at max_tokens (`finish_reason == 'length'`) is never a training target unless asked
(`keep_truncated`): it carries no SFT loss (it stays as context where the conversation went on
from it) and makes no DPO pair as chosen or rejected. Whatever a filter drops is counted, by
reason, in the `dropped` Counter the caller passes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from aloe_ray.trees.spec import stable_id

Message = dict[str, str]


NODE_COLUMNS = ("run_id", "tree_id", "node_id", "parent_id", "path", "turn", "role", "text", "candidate_index",
                "personalized", "label", "continued", "judge_probs", "finish_reason")
"""The nodes columns SFT and DPO rows are made from (readers prune to these)."""


class TreeDataError(ValueError):
    """A nodes table that does not form valid trees (missing parents, no labels...)."""


@dataclass(frozen=True)
class DpoFilters:
    personalized_chosen_only: bool = False
    """Keep only turns where the judge preferred a personalized reply (the persona hint helped)."""
    min_judge_margin: float = 0.0
    """Keep only pairs whose judge probability of chosen minus rejected is at least this (pairs
    without judge probabilities pass only when this is 0)."""
    rejected: str = "each"
    """'each': one pair per rejected candidate; 'one': one pair per turn (the first rejected)."""
    keep_truncated: bool = False
    """Keep pairs whose chosen or rejected reply was cut at max_tokens."""


@dataclass
class _Tree:
    tree_id: str
    run_id: str
    roots: list[dict]
    candidates: dict[str, list[dict]]  # user node id -> its assistant candidates by index
    next_user: dict[str, list[dict]]  # assistant node id -> the user messages that answer it


def _trees(nodes: Iterable[dict]) -> list[_Tree]:
    by_tree: dict[str, list[dict]] = defaultdict(list)
    for n in nodes:
        by_tree[n["tree_id"]].append(n)
    trees = []
    for tree_id in sorted(by_tree):
        rows = by_tree[tree_id]
        ids = {n["node_id"] for n in rows}
        candidates: dict[str, list[dict]] = defaultdict(list)
        next_user: dict[str, list[dict]] = defaultdict(list)
        roots = []
        for n in rows:
            parent = n.get("parent_id")
            if parent is not None and parent not in ids:
                raise TreeDataError(f"tree {tree_id}: node {n['node_id']} has parent {parent}, which is not in the table")
            if n["role"] == "assistant":
                if parent is None:
                    raise TreeDataError(f"tree {tree_id}: assistant node {n['node_id']} has no parent")
                candidates[parent].append(n)
            elif parent is None:
                roots.append(n)
            else:
                next_user[parent].append(n)
        if len(roots) != 1:
            raise TreeDataError(f"tree {tree_id}: expected one first user message, found {len(roots)}")
        for cands in candidates.values():
            cands.sort(key=lambda c: c["candidate_index"])
        for users in next_user.values():
            users.sort(key=lambda u: u["path"] or "")
        trees.append(_Tree(tree_id, rows[0]["run_id"], roots, candidates, next_user))
    return trees


def _chosen(tree: _Tree, user: dict) -> dict:
    cands = tree.candidates.get(user["node_id"], [])
    chosen = [c for c in cands if c.get("label") == "chosen"]
    if len(cands) < 2 or len(chosen) != 1:
        raise TreeDataError(f"tree {tree.tree_id}: turn {user['turn']} has {len(cands)} candidates and "
                            f"{len(chosen)} chosen; expected >= 2 and exactly 1")
    return chosen[0]


def _paths(tree: _Tree) -> list[list[tuple[dict, dict, bool]]]:
    """Each continued root-to-leaf path as (user node, assistant node, is_leaf_turn) per turn."""
    out = []
    stack: list[tuple[dict, list]] = [(tree.roots[0], [])]
    while stack:
        user, path = stack.pop()
        cands = tree.candidates.get(user["node_id"], [])
        followed = [c for c in cands if c.get("continued") and tree.next_user.get(c["node_id"])]
        if not followed:  # the leaf turn: nothing answers this reply, so take the judge's choice
            out.append([*path, (user, _chosen(tree, user), True)])
            continue
        for cand in reversed(followed):
            for nxt in reversed(tree.next_user[cand["node_id"]]):
                stack.append((nxt, [*path, (user, cand, False)]))
    return out


def truncated(node: dict) -> bool:
    """The reply was cut at max_tokens."""
    return node.get("finish_reason") == "length"


def sft_examples(nodes: Iterable[dict], *, loss_on: str = "chosen", keep_truncated: bool = False,
                 dropped: Counter | None = None) -> list[dict]:
    """SFT rows: `messages` (user/assistant alternating) and `assistant_targets` (one bool per
    assistant message: whether it carries loss). A truncated reply loses its loss unless
    `keep_truncated` ('target_truncated'); paths with no target left are dropped ('no_target')."""
    if loss_on not in ("chosen", "continued"):
        raise ValueError(f"loss_on must be 'chosen' or 'continued', not {loss_on!r}")
    dropped = Counter() if dropped is None else dropped
    rows = []
    for tree in _trees(nodes):
        for path in _paths(tree):
            messages: list[Message] = []
            targets: list[bool] = []
            for user, reply, _leaf in path:
                messages += [{"role": "user", "content": user["text"]}, {"role": "assistant", "content": reply["text"]}]
                target = loss_on == "continued" or reply.get("label") == "chosen"
                if target and truncated(reply) and not keep_truncated:
                    dropped["target_truncated"] += 1
                    target = False
                targets.append(target)
            if not any(targets):
                dropped["no_target"] += 1
                continue
            leaf = path[-1][1]["node_id"]
            rows.append({
                "run_id": tree.run_id, "tree_id": tree.tree_id, "example_id": stable_id(tree.tree_id, "sft", leaf),
                "messages": messages, "assistant_targets": targets,
                "num_turns": len(path), "num_targets": sum(targets),
            })
    return rows


def dpo_pairs(nodes: Iterable[dict], filters: DpoFilters = DpoFilters(), *,
              dropped: Counter | None = None) -> list[dict]:
    """DPO rows: `prompt` (history up to and including the user message), `chosen` and
    `rejected` (one assistant message each), plus provenance. Candidate pairs a filter drops are
    counted in `dropped` by reason: personalized_not_chosen, chosen_truncated, rejected_truncated,
    identical_texts, judge_margin_below_min."""
    if filters.rejected not in ("each", "one"):
        raise ValueError(f"rejected must be 'each' or 'one', not {filters.rejected!r}")
    dropped = Counter() if dropped is None else dropped
    rows = []
    for tree in _trees(nodes):
        seen: set[str] = set()
        for path in _paths(tree):
            history: list[Message] = []
            for user, reply, _leaf in path:
                prompt = [*history, {"role": "user", "content": user["text"]}]
                history = [*prompt, {"role": "assistant", "content": reply["text"]}]
                if user["node_id"] in seen:  # a turn shared by several paths of an 'all' tree
                    continue
                seen.add(user["node_id"])
                rows.extend(_turn_pairs(tree, user, prompt, filters, dropped))
    return rows


def _turn_pairs(tree: _Tree, user: dict, prompt: list[Message], f: DpoFilters, dropped: Counter) -> list[dict]:
    chosen = _chosen(tree, user)
    probs = user.get("judge_probs")
    out = []
    for rej in tree.candidates[user["node_id"]]:
        if rej is chosen:
            continue
        margin = None
        if probs is not None and len(probs) > max(chosen["candidate_index"], rej["candidate_index"]):
            margin = float(probs[chosen["candidate_index"]]) - float(probs[rej["candidate_index"]])
        reason = _drop_reason(chosen, rej, margin, f)
        if reason:
            dropped[reason] += 1
            continue
        out.append({
            "run_id": tree.run_id, "tree_id": tree.tree_id,
            "pair_id": stable_id(tree.tree_id, "dpo", chosen["node_id"], rej["node_id"]),
            "turn": user["turn"], "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen["text"]}],
            "rejected": [{"role": "assistant", "content": rej["text"]}],
            "chosen_node_id": chosen["node_id"], "rejected_node_id": rej["node_id"],
            "chosen_personalized": bool(chosen.get("personalized")), "judge_margin": margin,
            "source": "trees",
        })
        if f.rejected == "one":
            break
    return out


def _drop_reason(chosen: dict, rejected: dict, margin: float | None, f: DpoFilters) -> str | None:
    """Why a (chosen, rejected) pair is not trained on, the first reason that applies; None: kept."""
    if f.personalized_chosen_only and not chosen.get("personalized"):
        return "personalized_not_chosen"
    if not f.keep_truncated and truncated(chosen):
        return "chosen_truncated"
    if not f.keep_truncated and truncated(rejected):
        return "rejected_truncated"
    if _same(rejected["text"], chosen["text"]):
        return "identical_texts"
    if f.min_judge_margin > 0 and (margin is None or margin < f.min_judge_margin):
        return "judge_margin_below_min"
    return None


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()
