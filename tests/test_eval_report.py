"""ALOE report and compare outputs from hand-made rollouts: report.json fields, Markdown, PNG; the
eval config and the job's errors before anything starts."""

from __future__ import annotations

import json

import pytest

from aloe_ray.config import ConfigError, EvalConfig, load_config
from aloe_ray.eval.report import al_plot_png, build_report, compare_markdown, report_markdown
from aloe_ray.pipeline.eval import benchmark_personas, compare_reports, find_reports
from conftest import REFERENCE, REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rows(scores: dict[str, list[float | None]]):
    turns = [{"rollout_id": f"r-{p}", "persona_id": p, "turn": k, "score": s}
             for p, ss in scores.items() for k, s in enumerate(ss, start=1)]
    rollouts = [{"rollout_id": f"r-{p}", "persona_id": p, "status": "ok", "failure_reason": None,
                 "mean_score": None, "ir": None, "r2": None, "scores_missing": sum(s is None for s in ss)}
                for p, ss in scores.items()]
    return turns, rollouts


def report_of(scores, **meta):
    turns, rollouts = rows(scores)
    rollouts.append({"rollout_id": "r-x", "persona_id": "x", "status": "failed", "failure_reason": "boom",
                     "mean_score": None, "ir": None, "r2": None, "scores_missing": 0})
    return build_report(turns, rollouts, turns=3, meta={"name": "base", **meta}, samples=200)


def test_report_fields_by_hand():
    # AL = 2, 4, 3 (p2's missing turn-2 score is skipped); IR 0.5, R2 0.25; N-AL 0, 1, .5; N-IR .25
    report = report_of({"p1": [1, 4, 3], "p2": [3, None, 3]})
    assert report["AL"] == [2.0, 4.0, 3.0] and report["N_AL"] == [0.0, 1.0, 0.5]
    assert report["IR"] == pytest.approx(0.5) and report["R2"] == pytest.approx(0.25)
    assert report["N_IR"] == pytest.approx(0.25) and report["N_R2"] == pytest.approx(0.25)
    assert report["personas"] == 2 and report["rollouts_failed"] == 1 and report["failures"][0]["reason"] == "boom"
    assert report["scores_missing"] == 1 and report["scores_missing_by_turn"] == [0, 1, 0]
    assert report["name"] == "base"
    # intervals: one [lo, hi] per turn for AL; resampling 2 personas at turn 1 gives AL in {1, 2, 3}
    assert len(report["AL_CI"]) == 3 and all(lo <= hi for lo, hi in report["AL_CI"])
    assert 1.0 <= report["AL_CI"][0][0] <= 2.0 <= report["AL_CI"][0][1] <= 3.0
    assert report["AL_CI"][1] == [4.0, 4.0]  # only p1 scored turn 2
    lo, hi = report["IR_CI"]
    assert lo <= report["IR"] <= hi
    for key in ("R2_CI", "N_AL_CI", "N_IR_CI", "N_R2_CI"):
        assert key in report
    json.dumps(report)  # serialisable as is


def test_report_markdown_and_png():
    report = report_of({"p1": [1, 4, 3], "p2": [3, 3, 5]}, models={"model": "m", "judge": "j", "simulator": "s"})
    md = report_markdown(report)
    assert "| 2 | 3.500 |" in md  # turn 2: AL (4 + 3) / 2
    assert "| IR |" in md and "| p1 |" in md and "| p2 |" in md and "Failed: x: boom" in md
    png = al_plot_png([report], ["base"])
    assert png.startswith(PNG_MAGIC) and len(png) > 2000


def test_compare_table_and_plot_from_folders(tmp_path):
    base = report_of({"p1": [1, 2, 3], "p2": [2, 2, 2]})
    dpo = report_of({"p1": [3, 4, 5], "p2": [3, 4, 4]}, name="dpo")
    for run, rep in (("r1", base), ("r1", dpo)):
        folder = tmp_path / run / "eval" / rep["name"]
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps(rep))
    # a run folder expands to its evaluations; a report.json is taken as is
    assert len(find_reports(str(tmp_path / "r1"))) == 2
    out = tmp_path / "cmp"
    table = compare_reports([str(tmp_path / "r1" / "eval" / "base"), str(tmp_path / "r1" / "eval" / "dpo" / "report.json")],
                            str(out), log=lambda s: None)
    lines = table.splitlines()
    assert lines[0].startswith("| eval | personas | AL(1) | AL(2) | AL(3) | IR |")
    assert lines[2].startswith("| base | 2 | 1.50 | 2.00 | 2.50 | 0.500 |")
    assert lines[3].startswith("| dpo | 2 | 3.00 | 4.00 | 4.50 | 0.750 |")
    assert (out / "compare.md").read_text().count("\n| ") >= 3
    assert [c["label"] for c in json.loads((out / "compare.json").read_text())] == ["base", "dpo"]
    assert (out / "al_curves.png").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ConfigError, match="--labels"):
        compare_reports([str(tmp_path / "r1")], str(out), labels=["one"])
    with pytest.raises(FileNotFoundError, match="no report.json"):
        find_reports(str(tmp_path / "nothing"))
    assert compare_markdown([base], ["b"]).count("\n") == 3


def test_eval_config_defaults_and_errors(tmp_path):
    cfg = load_config(EvalConfig, [])
    assert (cfg.num_personas, cfg.turns, cfg.judge.history, cfg.judge.scoring.value) == (4, 10, True, "expected")
    assert cfg.eval_name == "smollm2-135m" and set(cfg.used_engines()) == {"default"}
    cfg = load_config(EvalConfig, ["--engines.api.backend=openai", "--engines.api.model=s3://m/Llama-3.1-8B/",
                                   "--engines.api.base_url=http://127.0.0.1:8000/v1", "--roles.model.engine=api"])
    assert cfg.eval_name == "Llama-3.1-8B" and set(cfg.used_engines()) == {"default", "api"}
    with pytest.raises(ConfigError, match="roles.judge.engine is 'nope'"):
        load_config(EvalConfig, ["--roles.judge.engine=nope"])
    with pytest.raises(ConfigError, match="judge.scoring"):
        load_config(EvalConfig, ["--judge.scoring=best"])
    with pytest.raises(ConfigError, match="go together"):
        load_config(EvalConfig, ["--personas.profiles=a.jsonl"])


def test_personas_reference_benchmark_and_seeded_selection():
    from aloe_ray.config.eval import EvalPersonasConfig

    ref = EvalPersonasConfig(profiles=str(REFERENCE / "profile_eval.jsonl"),
                             personalities=str(REFERENCE / "personality_eval.jsonl"))
    personas = benchmark_personas(ref, 100)
    assert len(personas) == 100 and len({p.profile for p in personas}) == 20
    assert len({p.personality for p in personas}) == 5
    seeds = benchmark_personas(EvalPersonasConfig(), 100)
    assert len(seeds) == 100 and {p.split for p in seeds} == {"benchmark"}
    small, larger = benchmark_personas(EvalPersonasConfig(), 4), benchmark_personas(EvalPersonasConfig(), 10)
    assert {p.persona_id for p in small} < {p.persona_id for p in larger}  # growing the count resumes


def test_job_bad_input_exits_2_before_anything_starts(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_aloe_job", REPO / "jobs" / "eval_aloe.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    bad = tmp_path / "p.jsonl"
    bad.write_text('"ok"\n{nope\n')
    assert job.main([f"--personas.profiles={bad}", f"--personas.personalities={bad}", f"--output={tmp_path}"]) == 2
    assert f"{bad}:2: not a JSON string" in capsys.readouterr().err
    assert job.main(["--turns=0"]) == 2 and "turns" in capsys.readouterr().err
    assert job.main(["compare", str(tmp_path)]) == 2 and "--output" in capsys.readouterr().err
    assert job.main(["compare", str(tmp_path / "none"), "--output", str(tmp_path / "o")]) == 2
    assert "no report.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_eval_output_commits_parts_and_recovers_exactly_once(tmp_path):
    import asyncio

    from aloe_ray.engines.base import Sampling
    from aloe_ray.eval.rollout import EvalRoles, JudgeMode, RoleBinding, make_rollout_specs, roll_out
    from aloe_ray.personas.loaders import seed_personas
    from aloe_ray.pipeline.eval_output import EvalOutput, eval_root
    from scripted_engine import ScriptedEngine

    class Silent(ScriptedEngine):
        async def chat(self, requests, affinity=None):
            out = await super().chat(requests, affinity)
            for c in out:
                c.text = ""
            return out

    specs = make_rollout_specs("r", "base", seed_personas(per_profile=1, seed=0, split="benchmark")[:3])
    judge = ScriptedEngine("judge", overrides={"responder": lambda req, n: "4"})
    good = EvalRoles(*(RoleBinding(e, Sampling()) for e in (ScriptedEngine("s"), ScriptedEngine("m"), judge)))
    bad = EvalRoles(RoleBinding(ScriptedEngine("s"), Sampling()), RoleBinding(Silent("m"), Sampling()),
                    RoleBinding(judge, Sampling()))
    results = [asyncio.run(roll_out(s, roles, JudgeMode(), 2)) for s, roles in zip(specs, (good, good, bad))]
    out = EvalOutput(eval_root(str(tmp_path), "r", "base"))
    first = out.commit(results[:1])
    assert out.commit(results[:1]) == first  # a retried task rewrites the same part
    out.commit(results[1:])
    orphan = tmp_path / "r" / "eval" / "base" / "turns" / "part-orphan.parquet"
    orphan.write_bytes((tmp_path / "r" / "eval" / "base" / "turns" / first).read_bytes())
    assert out.read("turns").num_rows == 2 * 2 + 2  # the orphan is visible until recovery
    done, orphans = out.recover(retry_failed=False)
    assert orphans == 1 and done == {s.rollout_id for s in specs}  # failed counts as done
    done, _ = out.recover(retry_failed=True)
    assert done == {s.rollout_id for s in specs[:2]}  # the failed rollout runs again
    assert out.read("rollouts").num_rows == 2 and out.read("turns").num_rows == 4
