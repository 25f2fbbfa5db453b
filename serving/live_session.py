"""One live ALOE session: a persona, one model (or two, side by side and blind), turn by turn.

Pure asyncio over the engine interface (no Ray, no FastAPI): every turn goes through the
benchmark's own steps (`aloe_ray.eval.rollout.Rollout`: the simulator's prompt, the model under
test's view of the conversation, the judge's prompt and scoring), so a live score is the
benchmark's score and a written session is an evaluation `eval_aloe compare` reads.

Invariants:
- turn k is one user message (the person's, or the simulator's in simulated mode) and one reply
  per side; every side answers the same prompt: the shared history along the continued replies;
- the history continues along the reply the person preferred at that turn when they marked one
  before the next turn started, else along the higher judge score (A on a tie);
- sides are labelled A/B in a seeded random order; their models stay hidden until `reveal`;
- each preference is a DPO pair on that turn's prompt (valid whatever the continuation was).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aloe_ray.config.eval import eval_name_for
from aloe_ray.engines.base import Message, Sampling
from aloe_ray.eval.metrics import summarize
from aloe_ray.eval.rollout import Call, EvalRoles, JudgeMode, Rollout, RolloutSpec, unusable
from aloe_ray.personas.model import Persona
from aloe_ray.trees.grow import RoleBinding
from aloe_ray.trees.spec import derive_seed, stable_id

RUN_ID = "interactive"
"""run_id of every written session (its eval folders: <output>/interactive/eval/<name>/)."""
LABELS = ("A", "B")


class TurnFailed(RuntimeError):
    """A turn could not be played (no usable simulator or model reply after the retries)."""


@dataclass
class Side:
    label: str
    model: str
    rollout: Rollout


@dataclass
class Turn:
    turn: int
    prompt: list[Message]
    """The history the sides answered, ending with this turn's user message."""
    user: str
    replies: dict[str, dict[str, Any]]
    """label -> the side's turns-table row (reply, score, ...)."""
    continued: str | None = None
    """The label the history continued along (set when the next turn starts)."""


@dataclass
class Session:
    session_id: str
    persona: Persona
    mode: str
    planned_turns: int
    sides: list[Side]
    created_at: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.monotonic)
    turns: list[Turn] = field(default_factory=list)
    preferences: dict[int, str] = field(default_factory=dict)
    ended: str | None = None
    """None while live; 'finished', 'abandoned' (idle timeout), 'evicted' (store full) or
    'server_stopped' (the replica shut down)."""
    written: dict[str, Any] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def side_by_side(self) -> bool:
        return len(self.sides) == 2

    @property
    def revealed(self) -> bool:
        return self.ended is not None

    def touch(self) -> None:
        self.last_active = time.monotonic()

    async def play_turn(self, message: str | None = None) -> dict[str, Any]:
        """Play the next turn (`message`: the person's user message in human mode) and return its view."""
        if self.ended:
            raise ValueError(f"session {self.session_id} has ended ({self.ended})")
        k = len(self.turns) + 1
        if k > self.planned_turns:
            raise ValueError(f"session {self.session_id} has played all its {self.planned_turns} turns")
        if self.mode == "human" and not (message or "").strip():
            raise ValueError("a human session's turn needs a non-empty 'message'")
        if self.mode == "simulated" and message is not None:
            raise ValueError("a simulated session's user turns come from the simulator: send no 'message'")
        history = self._history()
        first = self.sides[0].rollout
        user = Call.written(message.strip()) if message is not None else await first.user_message(k, history)
        if user.value is None:
            raise TurnFailed(unusable("simulator", k, user))
        prompt = [*history, {"role": "user", "content": user.value}]
        replies = await asyncio.gather(*(s.rollout.reply(k, prompt) for s in self.sides))
        for side, reply in zip(self.sides, replies):
            if reply.value is None:
                raise TurnFailed(unusable(f"model {side.label}", k, reply))
        verdicts = await asyncio.gather(*(s.rollout.score(k, prompt, r.value) for s, r in zip(self.sides, replies)))
        rows = {}
        for side, reply, verdict in zip(self.sides, replies, verdicts):
            row = side.rollout.row(k, user, reply, verdict)
            side.rollout.rows.append(row)
            rows[side.label] = row
        if self.turns:
            self.turns[-1].continued = self._continuation(self.turns[-1])
        self.turns.append(Turn(k, prompt, user.value, rows))
        self.touch()
        return self.turn_view(self.turns[-1])

    def prefer(self, turn: int, label: str) -> None:
        if not self.side_by_side:
            raise ValueError("preferences need a side-by-side session (two models)")
        if self.ended:
            raise ValueError(f"session {self.session_id} has ended ({self.ended}): its preferences are written")
        if not 1 <= turn <= len(self.turns):
            raise ValueError(f"turn {turn} has not been played (turns played: {len(self.turns)})")
        if label not in LABELS:
            raise ValueError(f"preferred must be 'A' or 'B', not {label!r}")
        self.preferences[turn] = label
        self.touch()

    def _history(self) -> list[Message]:
        if not self.turns:
            return []
        last = self.turns[-1]
        reply = last.replies[self._continuation(last)]["reply"]
        return [*last.prompt, {"role": "assistant", "content": reply}]

    def _continuation(self, t: Turn) -> str:
        if t.continued:
            return t.continued
        if t.turn in self.preferences:
            return self.preferences[t.turn]
        scored = [(row["score"] if row["score"] is not None else 0.0, -i, label)
                  for i, (label, row) in enumerate(t.replies.items())]
        return max(scored)[2]

    def levels(self) -> dict[str, dict[str, Any]]:
        """label -> AL(k) so far (one persona: its score at k), IR and R2 (aloe_ray.eval.metrics)."""
        out = {}
        for side in self.sides:
            m = summarize({self.persona.persona_id: [r["score"] for r in side.rollout.rows]})
            out[side.label] = {"AL": m["AL"], "IR": m["IR"], "R2": m["R2"]}
        return out

    def turn_view(self, t: Turn) -> dict[str, Any]:
        return {
            "turn": t.turn, "user_message": t.user,
            "replies": {label: {"reply": row["reply"], "score": row["score"], "score_probs": row["score_probs"],
                                "judge_raw": row["judge_raw"], "finish_reason": row["reply_finish_reason"],
                                "tokens": row["reply_tokens"], "latency_s": row["reply_latency_s"]}
                        for label, row in t.replies.items()},
            "preferred": self.preferences.get(t.turn), "continued": t.continued,
            "levels": self.levels(), "turns_left": self.planned_turns - len(self.turns),
        }

    def view(self) -> dict[str, Any]:
        """The session as the page sees it: models only once revealed."""
        p = self.persona
        return {
            "session_id": self.session_id, "mode": self.mode, "planned_turns": self.planned_turns,
            "side_by_side": self.side_by_side, "labels": [s.label for s in self.sides],
            "persona": {"persona_id": p.persona_id, "profile": p.profile, "personality": p.personality,
                        "split": p.split, "source": p.source},
            "turns": [self.turn_view(t) for t in self.turns], "levels": self.levels(),
            "preferences": {str(k): v for k, v in sorted(self.preferences.items())},
            "ended": self.ended, "revealed": self.revealed,
            "models": {s.label: s.model for s in self.sides} if self.revealed or not self.side_by_side else None,
            "written": self.written,
        }

    def dpo_rows(self) -> list[dict[str, Any]]:
        """One DPO-schema pair per marked turn: the person's preferred reply over the other."""
        rows = []
        for t in self.turns:
            label = self.preferences.get(t.turn)
            if label is None:
                continue
            other = next(x for x in t.replies if x != label)
            rows.append({
                "run_id": RUN_ID, "tree_id": self.session_id,
                "pair_id": stable_id(self.session_id, "human", t.turn), "turn": t.turn, "prompt": t.prompt,
                "chosen": [{"role": "assistant", "content": t.replies[label]["reply"]}],
                "rejected": [{"role": "assistant", "content": t.replies[other]["reply"]}],
                "chosen_node_id": None, "rejected_node_id": None, "chosen_personalized": None,
                "judge_margin": None, "source": "human",
            })
        return rows


def new_session(persona: Persona, models: list[str], *, mode: str, turns: int, engines: dict[str, Any],
                simulator: RoleBinding, judge: RoleBinding, reply: Sampling, judge_mode: JudgeMode,
                max_attempts: int = 3, seed: int | None = None) -> Session:
    """A session over `models` (one, or two side by side labelled A/B in a seeded random order)."""
    if mode not in ("human", "simulated"):
        raise ValueError(f"mode must be 'human' or 'simulated', not {mode!r}")
    session_id = "sess-" + uuid.uuid4().hex[:16]
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    order = list(models)
    random.Random(derive_seed(session_id, seed, "labels")).shuffle(order)
    sides = []
    for label, model in zip(LABELS, order):
        rollout_id = "roll-" + stable_id(RUN_ID, session_id, label)
        eval_name = f"{session_id}-{label}-{eval_name_for(model)}"[:128]
        spec = RolloutSpec(RUN_ID, eval_name, rollout_id, persona, derive_seed(rollout_id, seed))
        roles = EvalRoles(simulator, RoleBinding(engines[model], reply, max_attempts), judge)
        sides.append(Side(label, model, Rollout(spec, roles, judge_mode)))
    return Session(session_id, persona, mode, turns, sides)
