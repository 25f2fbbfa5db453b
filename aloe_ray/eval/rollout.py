"""One ALOE benchmark rollout: the simulator talks to the model under test, the judge scores each
reply. Pure logic: the engines are passed in (no Ray, no torch).

Invariants of a finished rollout:
- turn k (1-based) is one user message (the simulator opens) and one reply of the model under test;
- the model under test sees only the conversation; the simulator and the judge see the persona;
- every reply has a score in [1, 5], or a missing score with the judge's raw reply (or error);
  a judge that fails never fails the rollout;
- every request's seed derives from (rollout seed, turn, role, attempt).
A rollout either completes all turns (status 'ok') or fails with a reason (the simulator or the
model under test gave no usable reply after its retries); a failed rollout still yields the turns
it completed (its status is on its rollout row: join on rollout_id), which no metric counts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aloe_ray.engines.base import ChatRequest, Completion, Message, Sampling
from aloe_ray.eval.metrics import expected_score, fit_line
from aloe_ray.personas.model import Persona
from aloe_ray.prompts.eval import (
    EVAL_PROMPT_VERSION,
    SCORE_CHOICES,
    judge_score_messages,
    model_messages,
    parse_score,
    simulator_messages,
)
from aloe_ray.trees.grow import RoleBinding, non_empty, user_message
from aloe_ray.trees.spec import derive_seed, stable_id

ROLES = ("simulator", "model", "judge")
HUMAN = "human"
"""simulator_model of a turn whose user message a person wrote."""


@dataclass(frozen=True)
class EvalRoles:
    simulator: RoleBinding
    model: RoleBinding
    judge: RoleBinding

    def models(self) -> dict[str, str]:
        return {r: getattr(self, r).engine.model_name for r in ROLES}


@dataclass(frozen=True)
class JudgeMode:
    history: bool = True
    """The judge sees the conversation so far (else only the current user message)."""
    scoring: str = "expected"
    """'expected' (probability-weighted mean over 1..5) or 'sampled' (parsed free text)."""


@dataclass(frozen=True)
class RolloutSpec:
    run_id: str
    eval_name: str
    rollout_id: str
    persona: Persona
    seed: int

    def to_row(self) -> dict:
        return {"run_id": self.run_id, "eval_name": self.eval_name, "rollout_id": self.rollout_id,
                "seed": self.seed, **{f"persona_{k}": v for k, v in self.persona.to_row().items()}}

    @classmethod
    def from_row(cls, row: dict) -> RolloutSpec:
        persona = Persona(**{k.removeprefix("persona_"): row[k] for k in row if k.startswith("persona_")})
        return cls(row["run_id"], row["eval_name"], row["rollout_id"], persona, int(row["seed"]))


def make_rollout_specs(run_id: str, eval_name: str, personas: list[Persona], *, seed: int = 0) -> list[RolloutSpec]:
    """One spec per persona, in order; ids and seeds depend on (run, eval name, persona, seed) only."""
    specs = []
    for persona in personas:
        rollout_id = "roll-" + stable_id(run_id, eval_name, persona.persona_id, seed)
        specs.append(RolloutSpec(run_id, eval_name, rollout_id, persona, derive_seed(rollout_id, seed)))
    return specs


@dataclass
class RolloutResult:
    rollout: dict[str, Any]
    turns: list[dict[str, Any]]


class RolloutFailure(Exception):
    """The rollout cannot go on; the message is recorded as its failure reason."""


@dataclass
class Call:
    completion: Completion | None
    """The accepted reply; when none was accepted, the last reply that came back (None: none did)."""
    value: Any
    seed: int | None
    latency_s: float
    attempts: int
    error: str | None = None
    """When no reply was accepted: the last attempt's error that raised (None: none raised)."""

    @classmethod
    def written(cls, text: str) -> Call:
        """A user message a person wrote (no engine call): its row's simulator_model is HUMAN."""
        return cls(None, text, None, 0.0, 0)


@dataclass
class _Counters:
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


async def roll_out(spec: RolloutSpec, roles: EvalRoles, judge: JudgeMode, turns: int, *,
                   on_turn: Callable[[], Any] | None = None) -> RolloutResult:
    """Run one persona's conversation of `turns` turns and score every reply; `on_turn` is called
    after each scored turn (progress)."""
    run = Rollout(spec, roles, judge, on_turn)
    started = time.monotonic()
    status, reason = "ok", None
    try:
        await run.run(turns)
    except RolloutFailure as exc:
        status, reason = "failed", str(exc)[:2000]
    return RolloutResult(rollout=run.rollout_row(status, reason, time.monotonic() - started), turns=run.rows)


class Rollout:
    """One persona's conversation with one model under test, step by step. `run` is the benchmark's
    loop; the interactive sessions (serving/) drive the same steps one turn at a time, a person
    perhaps writing the user turns, so a live score is the benchmark's score."""

    def __init__(self, spec: RolloutSpec, roles: EvalRoles, judge: JudgeMode,
                 on_turn: Callable[[], Any] | None = None) -> None:
        self.spec, self.roles, self.judge, self.on_turn = spec, roles, judge, on_turn
        self.counters = _Counters()
        self.rows: list[dict[str, Any]] = []

    async def run(self, turns: int) -> None:
        conversation: list[Message] = []
        for turn in range(1, turns + 1):
            user = await self.user_message(turn, conversation)
            if user.value is None:
                raise RolloutFailure(unusable("simulator", turn, user))
            conversation = [*conversation, {"role": "user", "content": user.value}]
            reply = await self.reply(turn, conversation)
            if reply.value is None:
                raise RolloutFailure(unusable("model under test", turn, reply))
            verdict = await self.score(turn, conversation, reply.value)
            self.rows.append(self.row(turn, user, reply, verdict))
            if self.on_turn is not None:
                self.on_turn()
            conversation = [*conversation, {"role": "assistant", "content": reply.value}]

    async def user_message(self, turn: int, conversation: list[Message]) -> Call:
        """The simulator's next user message (value None: none usable after the retries)."""
        p = self.spec.persona
        return await self._call("simulator", turn, simulator_messages(p.profile, p.personality, conversation),
                                accept=user_message)

    async def reply(self, turn: int, conversation: list[Message]) -> Call:
        """The model under test's reply to a conversation that ends with the user's message."""
        return await self._call("model", turn, model_messages(conversation), accept=non_empty)

    async def score(self, turn: int, conversation: list[Message], reply: str) -> Call:
        """The judge's 1-5 score of `reply` (value None: missing after the retries)."""
        p = self.spec.persona
        messages = judge_score_messages(p.profile, p.personality, conversation, reply, history=self.judge.history)
        if self.judge.scoring == "expected":
            return await self._call("judge", turn, messages, accept=_expected, choices=SCORE_CHOICES)
        return await self._call("judge", turn, messages, accept=lambda c: parse_score(c.text))

    def rollout_row(self, status: str, reason: str | None, latency_s: float) -> dict[str, Any]:
        """The rollouts-table row of the turns in `rows`."""
        spec, rows = self.spec, self.rows
        scores = [r["score"] for r in rows]
        slope, _, r2 = fit_line(scores) if rows else (None, None, None)
        present = [s for s in scores if s is not None]
        p = spec.persona
        return {
            "run_id": spec.run_id, "eval_name": spec.eval_name, "rollout_id": spec.rollout_id,
            "persona_id": p.persona_id, "profile": p.profile, "personality": p.personality,
            "split": p.split, "source": p.source,
            "status": status, "failure_reason": reason, "turns": len(rows),
            "scores_missing": sum(s is None for s in scores) if rows else 0,
            "mean_score": sum(present) / len(present) if present else None,
            "ir": slope, "r2": r2,
            "judge_history": self.judge.history, "scoring": self.judge.scoring,
            "llm_calls": self.counters.llm_calls, "prompt_tokens": self.counters.prompt_tokens,
            "completion_tokens": self.counters.completion_tokens, "latency_s": latency_s,
            "seed": spec.seed, "models": json.dumps(self.roles.models(), sort_keys=True),
            "prompt_version": EVAL_PROMPT_VERSION, "finished_at": datetime.now(timezone.utc),
        }

    async def _call(self, role: str, turn: int, messages: tuple[Message, ...], *,
                    accept: Callable[[Completion], Any], choices: tuple[str, ...] | None = None) -> Call:
        """One role request with retries (new seed per attempt) on engine errors and on replies
        `accept` rejects. Never raises: after the last attempt the value is None, and the call
        holds both the last reply that came back and the last error, whichever attempts gave them
        (a final attempt that raises keeps the earlier unparseable reply)."""
        binding: RoleBinding = getattr(self.roles, role)
        started = time.monotonic()
        completion: Completion | None = None
        error, seed = None, 0
        for attempt in range(binding.max_attempts):
            seed = derive_seed(self.spec.seed, turn, role, attempt)
            s = binding.sampling
            sampling = Sampling(s.temperature, s.top_p, s.max_tokens, seed)
            if attempt and sampling.temperature == 0:  # a greedy retry would repeat itself
                sampling = Sampling(0.7, s.top_p, s.max_tokens, seed)
            request = ChatRequest(messages=messages, sampling=sampling, choices=choices)
            self.counters.llm_calls += 1
            try:
                (completion,) = await binding.engine.chat([request], affinity=self.spec.rollout_id)
            except Exception as exc:  # engine down, HTTP error: retry, then give up on this call
                error = f"{type(exc).__name__}: {str(exc)[:500]}"
                if attempt + 1 < binding.max_attempts:
                    await asyncio.sleep(min(0.5 * 2**attempt, 8.0))
                continue
            self.counters.prompt_tokens += completion.prompt_tokens
            self.counters.completion_tokens += completion.completion_tokens
            value = accept(completion)
            if value is not None:
                return Call(completion, value, seed, time.monotonic() - started, attempt + 1)
        return Call(completion, None, seed, time.monotonic() - started, binding.max_attempts, error)

    def row(self, turn: int, user: Call, reply: Call, verdict: Call) -> dict[str, Any]:
        spec, p = self.spec, self.spec.persona
        judged = verdict.completion
        return {
            "run_id": spec.run_id, "eval_name": spec.eval_name, "rollout_id": spec.rollout_id,
            "persona_id": p.persona_id, "profile": p.profile, "personality": p.personality,
            "turn": turn, "user_message": user.value, "reply": reply.value,
            "score": None if verdict.value is None else float(verdict.value),
            "score_probs": judged.choice_probs if judged is not None and verdict.value is not None else None,
            "judge_raw": judged.text if judged is not None else None,
            "judge_error": verdict.error,
            "judge_attempts": verdict.attempts,
            "judge_history": self.judge.history, "scoring": self.judge.scoring,
            "model": reply.completion.model or self.roles.model.engine.model_name,
            "simulator_model": (HUMAN if user.completion is None
                                else user.completion.model or self.roles.simulator.engine.model_name),
            "judge_model": (judged.model if judged is not None else "") or self.roles.judge.engine.model_name,
            "prompt_version": EVAL_PROMPT_VERSION,
            "user_seed": user.seed, "reply_seed": reply.seed, "judge_seed": verdict.seed,
            "reply_prompt_tokens": reply.completion.prompt_tokens,
            "reply_tokens": reply.completion.completion_tokens,
            "reply_finish_reason": reply.completion.finish_reason,
            "reply_latency_s": reply.latency_s,
        }


def _expected(c: Completion) -> float | None:
    """G-Eval score from the choice probabilities; the chosen answer where there are none."""
    probs = c.choice_probs
    if probs is not None and len(probs) == len(SCORE_CHOICES) and abs(sum(probs) - 1) < 1e-3:
        return expected_score(probs)
    return parse_score(c.text)


def unusable(who: str, turn: int, call: Call) -> str:
    if call.completion is None:
        return f"{who} call failed at turn {turn} after {call.attempts} attempts: {call.error}"
    last_error = f"; last error: {call.error}" if call.error else ""
    return (f"{who} reply unusable at turn {turn} after {call.attempts} attempts: "
            f"{call.completion.text[:300]!r}{last_error}")
