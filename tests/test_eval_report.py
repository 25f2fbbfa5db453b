"""ALOE report and compare outputs from hand-made rollouts: report.json fields, Markdown, PNG; the
eval config and the job's errors before anything starts."""

from __future__ import annotations

import json

import pytest

from aloe_ray.config import ConfigError, EvalConfig, load_config
from aloe_ray.config.loader import config_help
from aloe_ray.eval.metrics import bootstrap_intervals
from aloe_ray.eval.report import al_plot_png, build_report, compare_markdown, report_markdown, scores_by_persona
from aloe_ray.pipeline.eval import (
    benchmark_personas,
    compare_reports,
    find_reports,
    persona_candidates,
    select_personas,
)
from conftest import REFERENCE, REPO

needs_reference = pytest.mark.skipif(not REFERENCE.exists(), reason="shared/aloe_reference not present")

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


def test_report_intervals_are_the_metrics_bootstrap():
    turns, rollouts = rows({"p1": [1, 4, 3], "p2": [3, None, 3], "p3": [2, 2, 5]})
    report = build_report(turns, rollouts, turns=3, meta={}, samples=150, seed=7, level=0.9)
    expected = bootstrap_intervals(scores_by_persona(turns, 3), samples=150, seed=7, level=0.9)
    assert {k: report[k] for k in expected} == expected


def test_failed_rollouts_turns_are_left_out_of_every_metric():
    turns, rollouts = rows({"p1": [1, 4, 3], "p2": [3, None, 3]})
    # the failed rollout completed two turns with top scores before it failed
    turns += [{"rollout_id": "r-x", "persona_id": "x", "turn": k, "score": 5.0, "reply_finish_reason": "length"}
              for k in (1, 2)]
    rollouts.append({"rollout_id": "r-x", "persona_id": "x", "status": "failed", "failure_reason": "boom",
                     "mean_score": 5.0, "ir": 0.0, "r2": None, "scores_missing": 0})
    report = build_report(turns, rollouts, turns=3, meta={}, samples=100)
    assert report["AL"] == [2.0, 4.0, 3.0] and report["personas"] == 2 and report["rollouts_failed"] == 1
    assert report["scores"] == 5 and [p["persona_id"] for p in report["per_persona"]] == ["p1", "p2"]
    assert report["replies_truncated"] == 0  # nor in the truncation share
    assert report["AL_CI"][1] == [4.0, 4.0]  # nor in the intervals


def test_report_gives_the_share_of_replies_cut_at_the_token_limit():
    turns, rollouts = rows({"p1": [1, 4, 3], "p2": [3, 3, 3]})
    for row in turns:  # p1's turns 1 and 2 and p2's turn 1 hit max_tokens
        row["reply_finish_reason"] = "length" if (row["persona_id"], row["turn"]) in {
            ("p1", 1), ("p1", 2), ("p2", 1)} else "stop"
    report = build_report(turns, rollouts, turns=3, meta={"personas_requested": 2, "personas_available": 9},
                          samples=50)
    assert report["replies_truncated"] == 3 and report["replies_truncated_share"] == pytest.approx(0.5)
    assert report["replies_truncated_share_by_turn"] == [1.0, 0.5, 0.0]
    md = report_markdown(report)
    assert "finish_reason 'length'): 50% (3 replies)" in md
    assert "| 1 | 2.000 | " in md and md.split("| 1 | 2.000 |")[1].splitlines()[0].endswith("| 100% |")
    assert "2 personas evaluated of 2 requested (9 available)" in md
    assert report["personas_requested"] == 2 and report["personas_evaluated"] == 2
    unknown = build_report(*rows({"p1": [1, 2, 3]}), turns=3, meta={}, samples=10)  # rows without the column
    assert unknown["replies_truncated_share"] == 0.0
    assert build_report([], [], turns=2, meta={}, samples=10)["replies_truncated_share_by_turn"] == [None, None]


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
    # the field defaults are the method's; a config file builds on them
    method = EvalConfig()
    assert (method.num_personas, method.turns, method.judge.history, method.judge.scoring.value) == (
        100, 10, True, "expected")
    assert method.roles.model.sampling.max_tokens >= 192 and method.roles.judge.sampling.max_tokens >= 32
    empty = tmp_path / "eval.yaml"
    empty.write_text("turns: 10\n")
    from_file = load_config(EvalConfig, ["--config", str(empty)])
    assert from_file.num_personas == 100 and from_file.roles.model.sampling.max_tokens == 192
    # without a config file: the quick laptop run, which --help names
    cfg = load_config(EvalConfig, [])
    assert (cfg.num_personas, cfg.turns, cfg.judge.history, cfg.judge.scoring.value) == (4, 10, True, "expected")
    assert cfg.roles.model.sampling.max_tokens == 72 and cfg.roles.model.sampling.temperature == 0.7
    assert load_config(EvalConfig, ["--num_personas=100"]).num_personas == 100
    assert load_config(EvalConfig, ["--num_personas=null"]).num_personas is None
    helptext = config_help(EvalConfig)
    assert "num_personas=4" in helptext and "--num_personas  [int or null, default 100]" in helptext
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


@needs_reference
def test_personas_reference_benchmark():
    from aloe_ray.config.eval import EvalPersonasConfig

    ref = EvalPersonasConfig(profiles=str(REFERENCE / "profile_eval.jsonl"),
                             personalities=str(REFERENCE / "personality_eval.jsonl"))
    personas = benchmark_personas(ref, 100)
    assert len(personas) == 100 and len({p.profile for p in personas}) == 20
    assert len({p.personality for p in personas}) == 5
    with pytest.raises(ConfigError, match="num_personas is 101 but .* has only 100 distinct personas"):
        benchmark_personas(ref, 101)


def test_seed_personas_selection_works_with_any_count_available():
    from aloe_ray.config.eval import EvalPersonasConfig

    seeds = persona_candidates(EvalPersonasConfig())
    n = len(seeds)  # the seeds' benchmark split, whatever its size
    assert n >= 4 and {p.split for p in seeds} == {"benchmark"} and len({p.persona_id for p in seeds}) == n
    assert benchmark_personas(EvalPersonasConfig(), n) == seeds  # all of them, in order
    assert benchmark_personas(EvalPersonasConfig(), None) == seeds
    small, larger = benchmark_personas(EvalPersonasConfig(), 2), benchmark_personas(EvalPersonasConfig(), n - 1)
    assert {p.persona_id for p in small} < {p.persona_id for p in larger}  # growing the count resumes
    with pytest.raises(ConfigError, match=f"num_personas is {n + 1} but the built-in seeds' benchmark split "
                                          f"has only {n} distinct personas; set --num_personas={n} or "
                                          "--num_personas=null"):
        benchmark_personas(EvalPersonasConfig(), n + 1)
    # selection on its own: any candidate count, a seeded subset in source order
    pool = seeds[:3]
    assert select_personas(pool, 3) == pool and select_personas(pool, None) == pool
    picked = select_personas(pool, 2, seed=5)
    assert len(picked) == 2 and picked == [p for p in pool if p in picked]
    with pytest.raises(ConfigError, match="has only 0 distinct personas"):
        select_personas([], 1)


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
    # more personas than the source has: an error before Ray starts, nothing written
    assert job.main(["--num_personas=100000", f"--output={tmp_path / 'out'}", "--run_id=r"]) == 2
    err = capsys.readouterr().err
    assert "num_personas is 100000 but the built-in seeds' benchmark split has only" in err
    assert "--num_personas=null" in err and not (tmp_path / "out").exists()
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


def test_retrying_a_failed_rollout_drops_the_turns_it_completed(tmp_path):
    import asyncio

    from aloe_ray.engines.base import Sampling
    from aloe_ray.eval.rollout import EvalRoles, JudgeMode, RoleBinding, make_rollout_specs, roll_out
    from aloe_ray.personas.loaders import seed_personas
    from aloe_ray.pipeline.eval_output import EvalOutput, eval_root
    from scripted_engine import ScriptedEngine

    class SilentAfterOne(ScriptedEngine):  # answers turn 1, then never again
        async def chat(self, requests, affinity=None):
            out = await super().chat(requests, affinity)
            if len(self.requests) > 1:
                for c in out:
                    c.text = ""
            return out

    specs = make_rollout_specs("r", "base", seed_personas(per_profile=1, seed=0, split="benchmark")[:2])
    judge = ScriptedEngine("judge", overrides={"responder": lambda req, n: "4"})
    good = EvalRoles(*(RoleBinding(e, Sampling()) for e in (ScriptedEngine("s"), ScriptedEngine("m"), judge)))
    bad = EvalRoles(RoleBinding(ScriptedEngine("s"), Sampling()), RoleBinding(SilentAfterOne("m"), Sampling()),
                    RoleBinding(judge, Sampling()))
    results = [asyncio.run(roll_out(specs[0], good, JudgeMode(), 3)),
               asyncio.run(roll_out(specs[1], bad, JudgeMode(), 3))]
    assert results[1].rollout["status"] == "failed" and len(results[1].turns) == 1
    out = EvalOutput(eval_root(str(tmp_path), "r", "base"))
    out.commit(results)
    turns = out.read("turns").to_pylist()  # the failed rollout's completed turn is written
    assert sorted((t["rollout_id"] == specs[1].rollout_id, t["turn"]) for t in turns) == [
        (False, 1), (False, 2), (False, 3), (True, 1)]
    done, _ = out.recover(retry_failed=False)
    assert done == {s.rollout_id for s in specs} and out.read("turns").num_rows == 4  # kept as recorded
    done, _ = out.recover(retry_failed=True)  # the retry starts clean: no second set of turns
    assert done == {specs[0].rollout_id}
    assert {t["rollout_id"] for t in out.read("turns").to_pylist()} == {specs[0].rollout_id}
    assert out.read("turns").num_rows == 3 and out.read("rollouts").num_rows == 1
