"""Persona sources: our Parquet table, the reference JSONL format, the built-in seeds.

The reference format is one JSON string per line; some lines hold two strings written back to
back, so each line is decoded with `raw_decode` in a loop.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

from aloe_ray.personas.model import Persona
from aloe_ray.personas.seeds import (BENCHMARK_PERSONALITIES, BENCHMARK_PROFILES, SEED_PERSONALITIES,
                                    SEED_PROFILES)
from aloe_ray.storage import S3Options, read_parquet, read_text


class PersonaFileError(ValueError):
    """A persona file that cannot be read; the message names the file and line."""


def parse_reference_jsonl(text: str, source: str = "<text>") -> list[str]:
    """Every JSON string in a reference-format file, in order."""
    decoder = json.JSONDecoder()
    out: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        pos, line = 0, line.strip()
        while pos < len(line):
            try:
                value, end = decoder.raw_decode(line, pos)
            except json.JSONDecodeError as exc:
                raise PersonaFileError(f"{source}:{lineno}: not a JSON string at column {pos + 1}: {exc.msg}") from None
            if not isinstance(value, str) or not value.strip():
                raise PersonaFileError(f"{source}:{lineno}: expected a non-empty JSON string, got {type(value).__name__}")
            out.append(" ".join(value.split()))
            pos = end
            while pos < len(line) and line[pos] in " \t,":
                pos += 1
    if not out:
        raise PersonaFileError(f"{source}: no personas found")
    return out


def load_reference_jsonl(uri: str, s3: S3Options | None = None) -> list[str]:
    try:
        text = read_text(uri, s3)
    except FileNotFoundError:
        raise PersonaFileError(f"persona file not found: {uri}") from None
    return parse_reference_jsonl(text, uri)


def pair_personas(profiles: Sequence[str], personalities: Sequence[str], *, per_profile: int, seed: int,
                  split: str = "train", source: str = "") -> list[Persona]:
    """Each profile x `per_profile` distinct personalities drawn with a seeded RNG (all of them
    when there are fewer), in profile order."""
    if not profiles or not personalities:
        raise PersonaFileError("pairing needs at least one profile and one personality")
    rng = random.Random(seed)
    k = min(per_profile, len(personalities))
    personas = []
    for profile in profiles:
        for idx in sorted(rng.sample(range(len(personalities)), k)):
            personas.append(Persona.pair(profile, personalities[idx], split=split, source=source))
    return personas


def seed_members(split: str = "train") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(profiles, personalities) of one split of the built-in seeds. 'train': the first
    profiles and personalities; 'benchmark': the last `BENCHMARK_PROFILES` profiles and the last
    `BENCHMARK_PERSONALITIES` personalities. The two share no profile and no personality."""
    if split == "train":
        return SEED_PROFILES[:-BENCHMARK_PROFILES], SEED_PERSONALITIES[:-BENCHMARK_PERSONALITIES]
    if split == "benchmark":
        return SEED_PROFILES[-BENCHMARK_PROFILES:], SEED_PERSONALITIES[-BENCHMARK_PERSONALITIES:]
    raise PersonaFileError(f"the seeds have splits 'train' and 'benchmark', not {split!r}")


def seed_personas(*, per_profile: int, seed: int, split: str = "train") -> list[Persona]:
    """The built-in seeds, paired, held out on both axes (see `seed_members`). `split='train'`
    pairs each training profile with `per_profile` training personalities; `split='benchmark'`
    is the full cross product of the held-out profiles and personalities (20 x 5 = 100, the ALOE
    benchmark's shape) and ignores `per_profile` and `seed`."""
    profiles, personalities = seed_members(split)
    if split == "benchmark":
        per_profile = len(personalities)
    return pair_personas(profiles, personalities, per_profile=per_profile, seed=seed, split=split,
                         source="seeds")


def read_personas_table(uri: str, *, split: str | None = None, s3: S3Options | None = None) -> list[Persona]:
    from aloe_ray.schema import PERSONAS

    try:
        table = read_parquet(uri, s3)
    except FileNotFoundError:
        raise PersonaFileError(f"personas table not found: {uri}") from None
    missing = {"profile", "personality"} - set(table.column_names)
    if missing:
        raise PersonaFileError(f"personas table {uri} lacks columns {sorted(missing)}; expected {PERSONAS.names}")
    personas = []
    for i, row in enumerate(table.to_pylist()):
        if not row.get("profile") or not row.get("personality"):
            raise PersonaFileError(f"personas table {uri}: row {i} has an empty profile or personality")
        if split is not None and row.get("split") != split:
            continue
        p = Persona.pair(row["profile"], row["personality"], split=row.get("split"), source=row.get("source") or uri)
        if row.get("persona_id"):
            p = Persona(**{**p.to_row(), "persona_id": row["persona_id"]})
        personas.append(p)
    if not personas:
        raise PersonaFileError(f"personas table {uri} has no rows" + (f" with split '{split}'" if split else ""))
    return personas


def load_personas(cfg, s3: S3Options | None = None) -> list[Persona]:
    """Personas from a `PersonaSourceConfig`: a table, a pair of reference JSONL files, or the seeds."""
    if cfg.table:
        return read_personas_table(cfg.table, split=cfg.split, s3=s3)
    if cfg.profiles:
        profiles = load_reference_jsonl(cfg.profiles, s3)
        personalities = load_reference_jsonl(cfg.personalities, s3)
        return pair_personas(profiles, personalities, per_profile=cfg.personalities_per_profile,
                             seed=cfg.pairing_seed, source=cfg.profiles)
    return seed_personas(per_profile=cfg.personalities_per_profile, seed=cfg.pairing_seed)
