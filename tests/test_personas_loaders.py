"""Persona sources: reference JSONL (incl. glued lines), our Parquet table, seeds, pairing."""

from __future__ import annotations

import pyarrow as pa
import pytest

from aloe_ray import storage
from aloe_ray.personas.loaders import (
    PersonaFileError,
    load_reference_jsonl,
    pair_personas,
    parse_reference_jsonl,
    read_personas_table,
    seed_members,
    seed_personas,
)
from aloe_ray.personas.seeds import BENCHMARK_PERSONALITIES, BENCHMARK_PROFILES, SEED_PERSONALITIES, SEED_PROFILES
from aloe_ray.schema import PERSONAS
from conftest import REFERENCE

needs_reference = pytest.mark.skipif(not REFERENCE.exists(), reason="shared/aloe_reference not present")


@needs_reference
def test_reference_files_load_with_glued_lines():
    profiles = load_reference_jsonl(str(REFERENCE / "profile.jsonl"))
    raw_lines = (REFERENCE / "profile.jsonl").read_text().count("\n")
    assert raw_lines == 330 and len(profiles) == 331  # one line holds two strings
    assert len(load_reference_jsonl(str(REFERENCE / "personality.jsonl"))) == 71
    assert len(load_reference_jsonl(str(REFERENCE / "profile_eval.jsonl"))) == 20  # no trailing newline
    assert len(set(profiles)) == len(profiles)


def test_glued_and_bad_lines():
    assert parse_reference_jsonl('"a b"\n"c""d"\n\n"e"  "f"\n') == ["a b", "c", "d", "e", "f"]
    with pytest.raises(PersonaFileError, match=r"x.jsonl:2: not a JSON string"):
        parse_reference_jsonl('"ok"\n{broken\n', "x.jsonl")
    with pytest.raises(PersonaFileError, match=r"x.jsonl:1: expected a non-empty JSON string, got dict"):
        parse_reference_jsonl('{"profile": "p"}\n', "x.jsonl")
    with pytest.raises(PersonaFileError, match="no personas found"):
        parse_reference_jsonl("\n\n", "x.jsonl")
    with pytest.raises(PersonaFileError, match="persona file not found"):
        load_reference_jsonl("/nonexistent/p.jsonl")


def test_pairing_is_seeded_and_ids_stable():
    profiles, personalities = ["p1", "p2", "p3"], ["q1", "q2", "q3", "q4"]
    a = pair_personas(profiles, personalities, per_profile=2, seed=7)
    assert a == pair_personas(profiles, personalities, per_profile=2, seed=7)
    assert len(a) == 6 and len({p.persona_id for p in a}) == 6
    for prof in profiles:
        assert len({p.personality for p in a if p.profile == prof}) == 2
    assert [p.persona_id for p in a] != [p.persona_id for p in pair_personas(profiles, personalities, per_profile=2, seed=8)]
    assert len(pair_personas(profiles, personalities, per_profile=10, seed=0)) == 12  # capped at all


def test_seeds_are_many_and_distinct():
    assert len(SEED_PROFILES) == 40 and len(SEED_PERSONALITIES) == 20
    assert len(set(SEED_PROFILES)) == 40 and len(set(SEED_PERSONALITIES)) == 20
    for text in SEED_PROFILES + SEED_PERSONALITIES:  # one paragraph of about 60-75 words
        assert 55 <= len(text.split()) <= 80, text[:60]
    for text in SEED_PERSONALITIES:  # traits only: no ages or places
        assert not any(ch.isdigit() for ch in text), text[:60]


def test_seed_splits_hold_out_both_axes():
    assert (BENCHMARK_PROFILES, BENCHMARK_PERSONALITIES) == (20, 5)
    train_profiles, train_personalities = seed_members("train")
    assert (len(train_profiles), len(train_personalities)) == (20, 15)
    train = seed_personas(per_profile=10, seed=0)
    assert len(train) == 20 * 10 and all(p.source == "seeds" and p.split == "train" for p in train)
    assert {p.profile for p in train} == set(SEED_PROFILES[:20])
    assert {p.personality for p in train} <= set(SEED_PERSONALITIES[:15])
    # the benchmark split is the full 20 x 5 cross product, whatever per_profile says
    held_out = seed_personas(per_profile=1, seed=3, split="benchmark")
    assert len(held_out) == 100 == len({p.persona_id for p in held_out})
    assert held_out == seed_personas(per_profile=20, seed=0, split="benchmark")
    assert {p.profile for p in held_out} == set(SEED_PROFILES[-20:])
    assert {p.personality for p in held_out} == set(SEED_PERSONALITIES[-5:])
    assert all(p.split == "benchmark" for p in held_out)
    # no profile and no personality of the benchmark reaches training, however many are paired
    every_train = seed_personas(per_profile=len(SEED_PERSONALITIES), seed=0)
    assert len(every_train) == 20 * 15
    assert not {p.profile for p in held_out} & {p.profile for p in every_train}
    assert not {p.personality for p in held_out} & {p.personality for p in every_train}
    with pytest.raises(PersonaFileError, match="splits"):
        seed_personas(per_profile=1, seed=0, split="test")


def test_eval_default_selection_takes_100_held_out_seed_personas():
    from aloe_ray.config.eval import EvalPersonasConfig
    from aloe_ray.pipeline.eval import benchmark_personas

    every = benchmark_personas(EvalPersonasConfig(), 100)
    assert len(every) == 100 and {p.split for p in every} == {"benchmark"}
    assert benchmark_personas(EvalPersonasConfig(), None) == every
    four = benchmark_personas(EvalPersonasConfig(), 4)
    assert len(four) == 4 and {p.persona_id for p in four} <= {p.persona_id for p in every}
    train_profiles, train_personalities = seed_members("train")
    assert not {p.profile for p in every} & set(train_profiles)
    assert not {p.personality for p in every} & set(train_personalities)


def test_personas_table_round_trip_and_split(tmp_path):
    rows = [p.to_row() for p in pair_personas(["p1", "p2"], ["q1"], per_profile=1, seed=0)]
    rows[1]["split"] = "benchmark"
    uri = str(tmp_path / "personas" / "part-0.parquet")
    storage.write_parquet(uri, pa.Table.from_pylist(rows, PERSONAS))
    assert [p.profile for p in read_personas_table(str(tmp_path / "personas"))] == ["p1", "p2"]
    train = read_personas_table(uri, split="train")
    assert [p.persona_id for p in train] == [rows[0]["persona_id"]]
    with pytest.raises(PersonaFileError, match="no rows with split 'dev'"):
        read_personas_table(uri, split="dev")
    storage.write_parquet(str(tmp_path / "bad.parquet"), pa.table({"profile": ["x"]}))
    with pytest.raises(PersonaFileError, match=r"lacks columns \['personality'\]"):
        read_personas_table(str(tmp_path / "bad.parquet"))


def test_persona_job_seeds_its_pool_from_training_seeds_only(tmp_path):
    from aloe_ray.config import GeneratePersonasConfig
    from aloe_ray.pipeline.personas import load_seed_pool
    from aloe_ray.storage import S3Options

    bench_profiles, bench_personalities = seed_members("benchmark")
    found, label = load_seed_pool(GeneratePersonasConfig(), S3Options())
    assert label == "seeds" and found == {k: list(v) for k, v in zip(("profile", "personality"), seed_members("train"))}
    assert not set(found["profile"]) & set(bench_profiles)
    assert not set(found["personality"]) & set(bench_personalities)

    # a personas table seeds the pool from its training rows unless told otherwise
    rows = [p.to_row() for p in seed_personas(per_profile=1, seed=0)[:2]]
    rows += [p.to_row() for p in seed_personas(per_profile=1, seed=0, split="benchmark")[:3]]
    uri = str(tmp_path / "personas.parquet")
    storage.write_parquet(uri, pa.Table.from_pylist(rows, PERSONAS))
    cfg = GeneratePersonasConfig(seeds={"table": uri})
    assert cfg.seeds.split == "train"
    found, _ = load_seed_pool(cfg, S3Options())
    assert found["profile"] == [r["profile"] for r in rows[:2]]
    assert not set(found["personality"]) & set(bench_personalities)
    found, _ = load_seed_pool(GeneratePersonasConfig(seeds={"table": uri, "split": None}), S3Options())
    assert len(found["profile"]) == 3  # null: every row (two training profiles, one held-out one)
