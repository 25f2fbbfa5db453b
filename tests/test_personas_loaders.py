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
    seed_personas,
)
from aloe_ray.personas.seeds import BENCHMARK_PROFILES, SEED_PERSONALITIES, SEED_PROFILES
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
    assert len(SEED_PROFILES) >= 24 and len(SEED_PERSONALITIES) >= 12
    assert len(set(SEED_PROFILES)) == len(SEED_PROFILES)
    personas = seed_personas(per_profile=2, seed=0)
    train_profiles = len(SEED_PROFILES) - BENCHMARK_PROFILES
    assert len(personas) == 2 * train_profiles and all(p.source == "seeds" for p in personas)
    held_out = seed_personas(per_profile=len(SEED_PERSONALITIES), seed=0, split="benchmark")
    assert len(held_out) == BENCHMARK_PROFILES * len(SEED_PERSONALITIES) >= 100
    assert all(p.split == "benchmark" for p in held_out)
    assert not {p.profile for p in held_out} & {p.profile for p in personas}
    with pytest.raises(PersonaFileError, match="splits"):
        seed_personas(per_profile=1, seed=0, split="test")


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
