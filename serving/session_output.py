"""Where an ended session goes, under `<output>/interactive/` (local or s3://):

  eval/<session>-<label>-<model>/   one evaluation per side, exactly as `eval_aloe` writes one
                                    (turns/, rollouts/, report.json, report.md, al_curve.png), so
                                    `eval_aloe compare <output>/interactive` puts sessions side by side
  dpo/<session>.parquet             the person's preferences as DPO pairs (source 'human'):
                                    `train_dpo --data.table=<output>/interactive/dpo`
  sessions/<session>.json           the whole session, models revealed (what the page downloads)
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa

from aloe_ray import storage
from aloe_ray.config.eval import ReportConfig
from aloe_ray.eval.rollout import HUMAN, RolloutResult
from aloe_ray.pipeline.eval import write_report
from aloe_ray.pipeline.eval_output import EvalOutput, eval_root
from aloe_ray.prompts.eval import EVAL_PROMPT_VERSION
from aloe_ray.schema import DPO
from aloe_ray.storage import S3Options
from serving.live_session import RUN_ID, Session


def write_session(session: Session, output: str, *, judge_mode: dict, report: ReportConfig,
                  s3: S3Options | None = None) -> dict[str, Any]:
    """Write an ended session; returns where each part went (also kept in the session)."""
    root = storage.join(output, RUN_ID)
    written: dict[str, Any] = {"evals": {}, "dpo": None, "session": storage.join(root, "sessions",
                                                                                f"{session.session_id}.json")}
    latency = time.time() - session.created_at
    for side in session.sides:
        rows = side.rollout.rows
        if not rows:
            continue
        spec = side.rollout.spec
        out = EvalOutput(eval_root(output, RUN_ID, spec.eval_name), s3)
        rollout = side.rollout.rollout_row("ok", None, latency)
        out.commit([RolloutResult(rollout=rollout, turns=rows)])
        models = side.rollout.roles.models()
        if session.mode == "human":
            models["simulator"] = HUMAN  # a person wrote the user turns
        meta = {"name": spec.eval_name, "run_id": RUN_ID, "output": out.root, "models": models,
                "judge_history": judge_mode["history"], "scoring": judge_mode["scoring"],
                "prompt_version": EVAL_PROMPT_VERSION, "personas_requested": 1, "personas_available": 1,
                "personas_selected": 1, "session_id": session.session_id, "label": side.label,
                "mode": session.mode, "ended": session.ended}
        write_report(out, rows, [rollout], turns=len(rows), meta=meta, settings=report)
        written["evals"][side.label] = out.root
    pairs = session.dpo_rows()
    if pairs:
        uri = storage.join(root, "dpo", f"{session.session_id}.parquet")
        storage.write_parquet(uri, pa.Table.from_pylist(pairs, DPO), s3)
        written["dpo"] = uri
    session.written = written
    storage.write_text(written["session"], json.dumps(session.view(), indent=2, default=str) + "\n", s3)
    return written
