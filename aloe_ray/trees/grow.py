"""Grow one conversation tree. Pure logic: the engines are passed in.

Invariants of a grown tree:
- turn k (1-based) has one user node and `num_candidates` assistant nodes, children of it;
- a user node's parent is the assistant node the conversation continued along (none at turn 1);
- exactly one candidate per judged turn is labelled 'chosen', the rest 'rejected';
- the judge sees the candidates in a seeded random order (`judge_order`: the candidate index shown
  at each display position), so a judge's position bias is not a label; its verdict and
  probabilities are mapped back to candidate indices;
- a simulated user's message is cleaned (`clean_user_message`); the raw reply is kept (`text_raw`);
- every node id, and every request seed, derives from (tree id, path in tree, role, attempt).
A tree either grows completely (status 'ok') or fails with a reason; a failed tree yields no nodes.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aloe_ray.engines.base import ChatEngine, ChatRequest, Completion, Message, PromptTooLong, Sampling
from aloe_ray.prompts import (
    PROMPT_VERSION,
    candidate_letters,
    clean_user_message,
    inducer_messages,
    judge_messages,
    parse_choice,
    parse_induced,
    responder_messages,
    simulator_messages,
)
from aloe_ray.trees.spec import TreeShape, TreeSpec, derive_seed, stable_id


@dataclass(frozen=True)
class RoleBinding:
    engine: ChatEngine
    sampling: Sampling
    max_attempts: int = 3


@dataclass(frozen=True)
class TreeRoles:
    simulator: RoleBinding
    inducer: RoleBinding
    responder: RoleBinding
    judge: RoleBinding

    def models(self) -> dict[str, str]:
        return {r: getattr(self, r).engine.model_name for r in ("simulator", "inducer", "responder", "judge")}


@dataclass
class TreeResult:
    tree: dict[str, Any]
    nodes: list[dict[str, Any]]


class TreeFailure(Exception):
    """The tree cannot be grown; the message is recorded as its failure reason."""


@dataclass
class _Call:
    completion: Completion
    value: Any
    seed: int
    latency_s: float
    attempts: int


@dataclass
class _Path:
    """An open conversation: where the next user message goes."""

    conversation: list[Message]
    parent_id: str | None
    path: str
    parent_row: dict | None = None


@dataclass
class _Counters:
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    pairs: int = 0
    turns: int = 0
    nodes: list[dict] = field(default_factory=list)


async def grow_tree(spec: TreeSpec, roles: TreeRoles, shape: TreeShape,
                    on_turn: Callable[[int], None] | None = None) -> TreeResult:
    """Grow one tree. `on_turn(k)` is called when turn k is complete (for progress reporting)."""
    growth = _Growth(spec, roles, shape, on_turn)
    started = time.monotonic()
    status, reason = "ok", None
    try:
        await growth.run()
    except TreeFailure as exc:
        status, reason = "failed", str(exc)[:2000]
    except Exception as exc:  # noqa: BLE001 - a bug or an unexpected reply: this tree fails, the run goes on
        status, reason = "failed", f"unexpected {type(exc).__name__} while growing: {str(exc)[:1800]}"
    c = growth.counters
    nodes = c.nodes if status == "ok" else []
    return TreeResult(tree=_tree_row(spec, shape, roles.models(), status, reason, c, len(nodes),
                                     time.monotonic() - started), nodes=nodes)


def lost_tree(spec: TreeSpec, shape: TreeShape, models: dict[str, str], reason: str) -> TreeResult:
    """The record of a tree whose growth never returned (its grower died under it every time):
    failed with `reason`, no nodes, nothing counted."""
    return TreeResult(tree=_tree_row(spec, shape, models, "failed", reason, _Counters(), 0, 0.0), nodes=[])


def _tree_row(spec: TreeSpec, shape: TreeShape, models: dict[str, str], status: str, reason: str | None,
              c: _Counters, num_nodes: int, latency_s: float) -> dict[str, Any]:
    return {
        "run_id": spec.run_id,
        "tree_id": spec.tree_id,
        "persona_id": spec.persona.persona_id,
        "profile": spec.persona.profile,
        "personality": spec.persona.personality,
        "sample_index": spec.sample_index,
        "status": status,
        "failure_reason": reason,
        "policy": shape.policy,
        "turns": c.turns,
        "num_nodes": num_nodes,
        "num_pairs": c.pairs if status == "ok" else 0,
        "llm_calls": c.llm_calls,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "latency_s": latency_s,
        "seed": spec.seed,
        "models": json.dumps(models, sort_keys=True),
        "prompt_version": PROMPT_VERSION,
        "finished_at": datetime.now(timezone.utc),
    }


class _Growth:
    def __init__(self, spec: TreeSpec, roles: TreeRoles, shape: TreeShape,
                 on_turn: Callable[[int], None] | None = None) -> None:
        self.spec, self.roles, self.shape, self.on_turn = spec, roles, shape, on_turn
        self.persona = spec.persona
        self.counters = _Counters()

    async def run(self) -> None:
        frontier = [_Path(conversation=[], parent_id=None, path="")]
        for turn in range(1, self.shape.max_turns + 1):
            expand = self._within_budget(frontier)
            if not expand:
                break
            self.counters.turns = turn
            children = await _gather_or_cancel(*(self._turn(p, turn) for p in expand))
            frontier = [child for group in children for child in group]
            if self.on_turn is not None:
                self.on_turn(turn)

    def _within_budget(self, frontier: list[_Path]) -> list[_Path]:
        """Paths to expand this turn; under 'all', stop where the node budget would be exceeded."""
        if self.shape.policy != "all":
            return frontier
        cost = 1 + self.shape.num_candidates
        room = (self.shape.max_nodes - len(self.counters.nodes)) // cost
        for cut in frontier[max(room, 0):]:
            if cut.parent_row is not None:
                cut.parent_row["continued"] = False
        return frontier[: max(room, 0)]

    async def _turn(self, at: _Path, turn: int) -> list[_Path]:
        p, tree_id = self.persona, self.spec.tree_id
        user_path = f"{at.path}u{turn}"
        user = await self._call("simulator", user_path, simulator_messages(p.profile, p.personality, at.conversation),
                                accept=user_message)
        conversation = [*at.conversation, {"role": "user", "content": user.value}]

        induced_call = await self._call("inducer", user_path, inducer_messages(p.profile, p.personality, conversation),
                                        accept=lambda c: parse_induced(c.text), required=False)
        induced = induced_call.value
        hint = (induced.profile, induced.personality) if induced else ("", "")

        n = self.shape.num_candidates
        candidates = await _gather_or_cancel(*(
            self._call("responder", f"{user_path}/a{i}",
                       responder_messages(conversation, hint if i % 2 == 0 else None), accept=non_empty)
            for i in range(n)
        ))
        texts = [c.value for c in candidates]
        letters = candidate_letters(n)
        order = judge_display_order(self.spec.seed, user_path, n)
        verdict = await self._call(
            "judge", user_path, judge_messages(p.profile, p.personality, conversation, [texts[i] for i in order]),
            accept=lambda c: parse_choice(c.text, letters), choices=letters,
        )
        chosen = order[verdict.value]
        self.counters.pairs += 1

        user_id = stable_id(tree_id, user_path)
        user_row = _row(self.spec, user_id, at.parent_id, user_path, turn, "user", user.value, user,
                        induced_profile=induced.profile if induced else None,
                        induced_personality=induced.personality if induced else None,
                        induced_ok=induced is not None,
                        induced_raw=induced_call.completion.text,
                        inducer_model=induced_call.completion.model or self.roles.inducer.engine.model_name,
                        text_raw=user.completion.text,
                        induced_finish_reason=induced_call.completion.finish_reason,
                        judge_choice=chosen,
                        judge_order=list(order),
                        judge_probs=by_candidate(verdict.completion.choice_probs, order),
                        judge_raw=verdict.completion.text,
                        judge_finish_reason=verdict.completion.finish_reason,
                        judge_model=verdict.completion.model or self.roles.judge.engine.model_name)
        self.counters.nodes.append(user_row)

        follow = self._continuations(chosen, user_path)
        rows = []
        for i, cand in enumerate(candidates):
            path = f"{user_path}/a{i}"
            rows.append(_row(self.spec, stable_id(tree_id, path), user_id, path, turn, "assistant", cand.value, cand,
                             candidate_index=i, personalized=i % 2 == 0,
                             label="chosen" if i == chosen else "rejected", continued=i in follow))
        self.counters.nodes.extend(rows)
        return [_Path([*conversation, {"role": "assistant", "content": texts[i]}], rows[i]["node_id"],
                      f"{rows[i]['path']}/", rows[i]) for i in follow]

    def _continuations(self, chosen: int, user_path: str) -> list[int]:
        """Candidate indices to continue along, in priority order."""
        n = self.shape.num_candidates
        if self.shape.policy == "chosen":
            return [chosen]
        if self.shape.policy == "random":
            return [random.Random(derive_seed(self.spec.seed, user_path, "continue")).randrange(n)]
        return [chosen, *(i for i in range(n) if i != chosen)]

    async def _call(self, role: str, path: str, messages: tuple[Message, ...], *,
                    accept: Callable[[Completion], Any], choices: tuple[str, ...] | None = None,
                    required: bool = True) -> _Call:
        """One role request with retries (new seed per attempt) on engine errors and on replies
        `accept` rejects (returns None/empty). Unaccepted after all attempts: TreeFailure if
        `required`, else a _Call whose value is None and whose completion holds the raw reply."""
        binding: RoleBinding = getattr(self.roles, role)
        started = time.monotonic()
        last_error: Exception | None = None
        completion = None
        for attempt in range(binding.max_attempts):
            seed = derive_seed(self.spec.seed, path, role, attempt)
            sampling = Sampling(binding.sampling.temperature, binding.sampling.top_p, binding.sampling.max_tokens, seed)
            if attempt and sampling.temperature == 0:  # a greedy retry would repeat itself
                sampling = Sampling(0.7, sampling.top_p, sampling.max_tokens, seed)
            request = ChatRequest(messages=messages, sampling=sampling, choices=choices)
            self.counters.llm_calls += 1
            try:
                (completion,) = await binding.engine.chat([request], affinity=self.spec.tree_id)
            except PromptTooLong as exc:  # the same prompt will not fit on a retry either
                last_error = exc
                break
            except Exception as exc:  # engine down, HTTP error, bad batch: retry, then fail the tree
                last_error = exc
                await asyncio.sleep(min(0.5 * 2**attempt, 8.0))
                continue
            self.counters.prompt_tokens += completion.prompt_tokens
            self.counters.completion_tokens += completion.completion_tokens
            value = accept(completion)
            if value is not None:
                return _Call(completion, value, seed, time.monotonic() - started, attempt + 1)
        if completion is None:
            if not required:  # an optional reply (the inducer's): recorded as unparsed, the tree goes on
                failed = Completion(text=f"(no reply: {type(last_error).__name__}: {str(last_error)[:300]})",
                                    finish_reason="error", prompt_tokens=0, completion_tokens=0)
                return _Call(failed, None, seed, time.monotonic() - started, attempt + 1)
            raise TreeFailure(f"{role} call failed at {path} after {attempt + 1} attempt(s): "
                              f"{type(last_error).__name__}: {str(last_error)[:500]}")
        if required:
            raise TreeFailure(f"{role} reply unusable at {path} after {binding.max_attempts} attempts: "
                              f"{completion.text[:300]!r}")
        return _Call(completion, None, seed, time.monotonic() - started, binding.max_attempts)


async def _gather_or_cancel(*aws):
    """Like asyncio.gather, but the first exception cancels the siblings still running (a failed
    tree stops calling engines) before it propagates."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def judge_display_order(tree_seed: int, user_path: str, n: int) -> tuple[int, ...]:
    """The candidate index shown at each display position ('Reply A', 'Reply B', ...) of one
    judged turn: a permutation seeded like every other request, so reruns show the same order."""
    order = list(range(n))
    random.Random(derive_seed(tree_seed, user_path, "judge-order")).shuffle(order)
    return tuple(order)


def by_candidate(display_probs: list[float] | None, order: tuple[int, ...]) -> list[float] | None:
    """Probabilities given per display position, re-indexed by candidate."""
    if display_probs is None:
        return None
    out = [0.0] * len(order)
    for position, candidate in enumerate(order):
        out[candidate] = display_probs[position]
    return out


def user_message(c: Completion) -> str | None:
    """A simulator's reply as the user's message (`clean_user_message`); None (retry) if empty."""
    return clean_user_message(c.text) or None


def non_empty(c: Completion) -> str | None:
    return c.text.strip() or None


def _row(spec: TreeSpec, node_id: str, parent_id: str | None, path: str, turn: int, role: str, text: str,
         call: _Call, **extra: Any) -> dict[str, Any]:
    row = {
        "run_id": spec.run_id, "tree_id": spec.tree_id, "node_id": node_id, "parent_id": parent_id,
        "path": path, "turn": turn, "role": role, "text": text,
        "candidate_index": None, "personalized": None, "label": None, "continued": None,
        "text_raw": None,
        "induced_profile": None, "induced_personality": None, "induced_ok": None, "induced_raw": None,
        "induced_finish_reason": None,
        "judge_choice": None, "judge_order": None, "judge_probs": None, "judge_raw": None, "judge_finish_reason": None,
        "model": call.completion.model, "inducer_model": None, "judge_model": None,
        "prompt_version": PROMPT_VERSION, "seed": call.seed,
        "prompt_tokens": call.completion.prompt_tokens, "completion_tokens": call.completion.completion_tokens,
        "finish_reason": call.completion.finish_reason, "latency_s": call.latency_s, "attempts": call.attempts,
    }
    row.update(extra)
    return row
