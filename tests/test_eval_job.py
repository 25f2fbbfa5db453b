"""The ALOE benchmark job end to end: jobs/eval_aloe.py rolls out 2 personas x 2 turns against the
real Serve app (the model under test, over real HTTP, through the `openai` backend) with the
bundled model as simulator and judge (hf engine deployment), writes to a real S3 server (moto), resumes,
and compares."""

from __future__ import annotations

import importlib.util
import json
import os

import pyarrow.compute as pc
import pytest

from aloe_ray import storage
from aloe_ray.pipeline.eval_output import EvalOutput, eval_root
from aloe_ray.schema import EVAL_ROLLOUTS, EVAL_TURNS
from aloe_ray.storage import S3Options
from conftest import REPO, free_port

SERVED = "aloe-base"


def load_job():
    spec = importlib.util.spec_from_file_location("eval_aloe_job_e2e", REPO / "jobs" / "eval_aloe.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


@pytest.fixture(scope="module")
def serve_and_s3(s3_server):
    """Local Ray (the S3 variables set first, so every worker inherits them), the Serve app on a
    free port with the bundled model, and a fresh bucket."""
    import boto3
    import ray
    from ray import serve

    from serving.app import build_app

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": s3_server}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="aloe-eval")
    # 4 logical CPUs on the 2-core machine: one Serve replica, one engine replica, the light runner
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="aloe-eval-test", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"model": "smollm2-135m", "served_model_name": SERVED, "max_tokens_limit": 64,
                         "default_max_tokens": 16}), name="aloe", route_prefix="/")
    try:
        yield {"url": f"http://127.0.0.1:{port}", "s3": s3_server}
    finally:
        serve.shutdown()
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_rollout_against_the_serve_app_to_s3_resume_and_compare(serve_and_s3, tmp_path, capsys):
    url, endpoint = serve_and_s3["url"], serve_and_s3["s3"]
    output = "s3://aloe-eval/runs"
    args = [f"--output={output}", "--run_id=e2e", "--num_personas=2", "--turns=2",
            "--engines.api.backend=openai", f"--engines.api.model={SERVED}", f"--engines.api.base_url={url}/v1",
            "--roles.model.engine=api", "--roles.model.sampling.max_tokens=16",
            "--roles.simulator.sampling.max_tokens=16", "--report.bootstrap_samples=200",
            "--pipeline.progress_interval_s=5"]
    job = load_job()
    assert job.main(args) == 0, capsys.readouterr().err[-3000:]
    stdout = capsys.readouterr().out
    root = eval_root(output, "e2e", SERVED)  # the eval is named after the served model
    assert f"{root}/" in stdout and "[eval] personas done 2/2 (0 failed) | turns 4/4" in stdout

    s3 = S3Options(endpoint_url=endpoint)
    out = EvalOutput(root, s3)
    turns, rollouts = out.read("turns"), out.read("rollouts")
    assert turns.schema.equals(EVAL_TURNS) and rollouts.schema.equals(EVAL_ROLLOUTS)
    assert rollouts.num_rows == 2 and set(rollouts["status"].to_pylist()) == {"ok"}
    rows = sorted(turns.to_pylist(), key=lambda r: (r["persona_id"], r["turn"]))
    assert [(r["turn"]) for r in rows] == [1, 2, 1, 2] and len({r["persona_id"] for r in rows}) == 2
    for r in rows:
        assert r["user_message"].strip() and r["reply"].strip()
        assert r["model"] == SERVED  # the reply came back from the Serve app, named as it serves it
        assert r["simulator_model"] == r["judge_model"] == "smollm2-135m"
        assert r["reply_tokens"] <= 16 and r["judge_raw"] in ("1", "2", "3", "4", "5")
        # hf judge: constrained to 1..5 with probabilities, score = their expected value
        assert r["score"] is not None and 1 <= r["score"] <= 5
        assert sum(r["score_probs"]) == pytest.approx(1, abs=1e-3)
        assert r["score"] == pytest.approx(sum((i + 1) * p for i, p in enumerate(r["score_probs"])), abs=1e-3)

    report = json.loads(storage.read_text(out.file("report.json"), s3))
    for key in ("AL", "IR", "R2", "N_AL", "N_IR", "N_R2", "AL_CI", "IR_CI", "R2_CI", "N_IR_CI", "N_R2_CI"):
        assert key in report, key
    by_turn = [[r["score"] for r in rows if r["turn"] == k] for k in (1, 2)]
    assert report["AL"] == pytest.approx([sum(s) / 2 for s in by_turn])
    assert report["IR"] == pytest.approx(report["AL"][1] - report["AL"][0])  # two points: slope = difference
    assert report["personas"] == 2 and report["scores_missing"] == 0 and report["models"]["model"] == SERVED
    assert (report["personas_requested"], report["personas_evaluated"]) == (2, 2) and report["personas_available"] >= 2
    # 16-token replies: the report says how many the limit cut, per turn and overall
    cut = [r["reply_finish_reason"] == "length" for r in rows]
    assert report["replies_truncated"] == sum(cut) and report["replies_truncated_share"] == pytest.approx(sum(cut) / 4)
    assert len(report["replies_truncated_share_by_turn"]) == 2
    assert "| turn k | AL(k) |" in storage.read_text(out.file("report.md"), s3)
    assert storage.read_bytes(out.file("al_curve.png"), s3).startswith(b"\x89PNG\r\n\x1a\n")
    manifest = json.loads(storage.read_text(out.file("manifest.json"), s3))
    assert manifest["counts"]["turns"] == 4 and manifest["config"]["roles"]["model"]["engine"] == "api"

    # the same run again: nothing left to roll out, the tables unchanged
    assert job.main(args) == 0
    assert "2 already done, 0 to roll out" in capsys.readouterr().out
    again = out.read("turns")
    assert again.num_rows == 4 and sorted(again["reply"].to_pylist()) == sorted(turns["reply"].to_pylist())
    # changed rollout settings under the same name are refused, not mixed into the table
    assert job.main([*args, "--judge.history=false"]) == 2
    assert "other settings (judge.history differ)" in capsys.readouterr().err
    assert out.read("turns").num_rows == 4

    # compare: the S3 evaluation next to a second, local report
    other = tmp_path / "other"
    other.mkdir()
    (other / "report.json").write_text(json.dumps({**report, "name": "other", "AL": [5.0, 5.0], "IR": 0.0}))
    assert job.main(["compare", root, str(other), "--output", str(tmp_path / "cmp"),
                     f"--storage.s3_endpoint_url={endpoint}"]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert f"| {SERVED} | 2 |" in table and "| other | 2 | 5.00 | 5.00 |" in table
    assert (tmp_path / "cmp" / "al_curves.png").read_bytes().startswith(b"\x89PNG")
    assert pc.sum(rollouts["llm_calls"]).as_py() >= 12  # 2 personas x 2 turns x 3 roles
