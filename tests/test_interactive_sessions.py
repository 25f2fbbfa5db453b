"""Live-session logic, the bounded store and what an ended session writes, on scripted engines
(milliseconds; the real Serve app and model are in test_interactive_api.py)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from aloe_ray.config.eval import ReportConfig
from aloe_ray.engines.base import Completion, Sampling
from aloe_ray.eval.rollout import HUMAN, JudgeMode, RoleBinding
from aloe_ray.personas.loaders import seed_personas
from aloe_ray.pipeline.train import training_rows
from aloe_ray.prompts.eval import judge_score_messages
from aloe_ray.schema import DPO, EVAL_TURNS
from aloe_ray.storage import S3Options
from serving.live_session import new_session
from serving.session_output import write_session
from serving.sessions import SessionStore, StoreFull

JUDGE_HEAD = judge_score_messages("p", "q", [{"role": "user", "content": "x"}], "r")[0]["content"][:30]


class Engine:
    """Scripted: the judge gives `score_of(reply)` for certain; others answer '<name> reply n'."""

    def __init__(self, name, score_of=lambda reply: 3):
        self.model_name, self.score_of, self.calls = name, score_of, 0

    async def chat(self, requests, affinity=None):
        out = []
        for req in requests:
            self.calls += 1
            text = req.messages[0]["content"]
            if text.startswith(JUDGE_HEAD):
                score = self.score_of(text.split("last message:\n", 1)[1].split("\n", 1)[0])
                probs = [1.0 if i + 1 == score else 0.0 for i in range(5)]
                out.append(Completion(str(score), "choice", 9, 1, self.model_name, probs))
            else:
                out.append(Completion(f"{self.model_name} reply {self.calls}", "stop", 9, 4, self.model_name))
        return out


def make(models=("m1",), mode="simulated", turns=3, scores=None, seed=1):
    engines = {m: Engine(m) for m in ("m1", "m2")}
    judge = Engine("judge", score_of=scores or (lambda reply: 2 if reply.startswith("m1") else 4))
    sim = Engine("sim")
    persona = seed_personas(per_profile=1, seed=0, split="benchmark")[3]
    return new_session(persona, list(models), mode=mode, turns=turns, engines=engines,
                       simulator=RoleBinding(sim, Sampling(0.9, 0.95, 8)), judge=RoleBinding(judge, Sampling(0.0, 1, 4)),
                       reply=Sampling(0.7, 0.95, 8), judge_mode=JudgeMode(), seed=seed)


def test_simulated_single_model_scores_and_levels():
    s = make()
    views = [asyncio.run(s.play_turn()) for _ in range(3)]
    assert [v["turn"] for v in views] == [1, 2, 3]
    assert views[-1]["levels"]["A"]["AL"] == [2.0, 2.0, 2.0] and views[-1]["turns_left"] == 0
    assert views[0]["user_message"].startswith("sim reply")
    assert s.view()["models"] == {"A": "m1"}  # one model: nothing to hide
    with pytest.raises(ValueError, match="all its 3 turns"):
        asyncio.run(s.play_turn())


def test_human_turns_are_written_rows_with_simulator_human():
    s = make(mode="human")
    with pytest.raises(ValueError, match="non-empty"):
        asyncio.run(s.play_turn("  "))
    asyncio.run(s.play_turn("I just got back from a hike."))
    row = s.sides[0].rollout.rows[0]
    assert row["user_message"] == "I just got back from a hike." and row["simulator_model"] == HUMAN
    assert set(row) == set(EVAL_TURNS.names)


def test_side_by_side_is_blind_continues_along_preference_and_yields_dpo_pairs(tmp_path):
    s = make(models=("m1", "m2"), turns=3)
    assert s.view()["models"] is None and s.view()["labels"] == ["A", "B"]
    label_of = {side.model: side.label for side in s.sides}
    asyncio.run(s.play_turn())
    s.prefer(1, label_of["m1"])  # the person overrules the judge (m2 scores higher)
    asyncio.run(s.play_turn())
    asyncio.run(s.play_turn())
    t1, t2, t3 = s.turns
    assert t1.continued == label_of["m1"] and t2.continued == label_of["m2"]  # preference, then judge
    assert t2.prompt[-2]["content"] == t1.replies[label_of["m1"]]["reply"]
    s.prefer(3, label_of["m2"])
    with pytest.raises(ValueError, match="not been played"):
        s.prefer(4, "A")
    pairs = s.dpo_rows()
    assert [p["turn"] for p in pairs] == [1, 3] and {p["source"] for p in pairs} == {"human"}
    assert pairs[0]["chosen"][0]["content"].startswith("m1") and pairs[0]["rejected"][0]["content"].startswith("m2")
    assert pairs[1]["prompt"] == t3.prompt
    s.ended = "finished"
    with pytest.raises(ValueError, match="has ended"):
        s.prefer(1, "A")
    written = write_session(s, str(tmp_path), judge_mode={"history": True, "scoring": "expected"},
                            report=ReportConfig(bootstrap_samples=10))
    assert s.view()["models"] == {label_of["m1"]: "m1", label_of["m2"]: "m2"}
    saved = json.loads((tmp_path / "interactive" / "sessions" / f"{s.session_id}.json").read_text())
    assert saved["ended"] == "finished" and len(saved["turns"]) == 3
    table = pq.read_table(written["dpo"])
    assert table.schema.names == DPO.names and table.num_rows == 2
    cfg = SimpleNamespace(data=SimpleNamespace(table=str(tmp_path / "interactive" / "dpo"), trees=None, max_examples=None))
    rows = training_rows(cfg, "dpo", S3Options())
    assert rows.num_rows == 2 and set(rows["source"].to_pylist()) == {"human"}
    report = json.loads((tmp_path / "interactive" / "eval" / s.sides[0].rollout.spec.eval_name / "report.json").read_text())
    assert report["turns"] == 3 and report["personas"] == 1 and len(report["AL"]) == 3


def test_store_evicts_idle_sessions_refuses_when_all_busy_and_sweeps():
    ended = []

    async def on_end(session):
        ended.append((session.session_id, session.ended))

    async def scenario():
        store = SessionStore(2, idle_timeout_s=60, on_end=on_end)
        a, b, c, d = make(), make(), make(), make()
        await store.add(a)
        await store.add(b)
        b.touch()
        await store.add(c)  # full: the least recently used idle one (a) is ended and written
        assert ended == [(a.session_id, "evicted")] and set(store.sessions) == {b.session_id, c.session_id}
        async with b.lock, c.lock:  # both busy: no room
            with pytest.raises(StoreFull):
                await store.add(d)
        c.last_active -= 120
        assert await store.sweep() == [c.session_id] and c.ended == "abandoned"
        await store.add(d)  # the ended one is dropped first, nobody else is ended
        assert set(store.sessions) == {b.session_id, d.session_id} and len(ended) == 2
        with pytest.raises(KeyError, match="no session"):
            store.get(c.session_id)

    asyncio.run(scenario())


def test_interactive_args_are_checked_and_engines_reused_or_remote():
    from pydantic import ValidationError

    from aloe_ray.engines.openai_api import OpenAIEngine
    from serving.config import ServeArgs
    from serving.interactive import InteractiveService

    with pytest.raises(ValidationError, match="interactive.judge.engine is 'big'"):
        ServeArgs.model_validate({"interactive": {"judge": {"engine": "big"}}})
    with pytest.raises(ValidationError, match="base_url"):
        ServeArgs.model_validate({"interactive": {"engines": {"api": {"backend": "openai", "model": "x"}}}})
    with pytest.raises(ValidationError, match="colour"):
        ServeArgs.model_validate({"interactive": {"colour": "red"}})
    args = ServeArgs.model_validate({"served_model_name": "base", "interactive": {
        "engines": {"default": {}, "api": {"backend": "openai", "model": "judge-70b", "base_url": "http://127.0.0.1:9/v1"}},
        "judge": {"engine": "api"}}})
    served = Engine("base")
    svc = InteractiveService(args, {"base": served})
    assert svc.simulator.engine is served  # the bundled model already loaded by the replica, not a second copy
    assert isinstance(svc.judge.engine, OpenAIEngine) and svc.judge.engine.model_name == "judge-70b"
    assert svc.options()["roles"] == {"simulator": "base", "judge": "judge-70b"} and len(svc.personas) == 100
    # an hf engine of another model is a deployment of the app (role_engine_deployments), never a
    # model loaded inside the ingress: without its handle the service refuses to start
    other = ServeArgs.model_validate({"served_model_name": "base", "interactive": {
        "engines": {"default": {}, "big": {"model": "/models/other"}}, "judge": {"engine": "big"}}})
    with pytest.raises(ValueError, match="interactive engine 'big' .* is hosted by the app's own deployment"):
        InteractiveService(other, {"base": served})
