"""The run root of a persona-pool job and its per-round commit protocol.

Round N writes `profiles/round-NNNNN.parquet` and `personalities/round-NNNNN.parquet` (its new
members), then `rounds/round-NNNNN.parquet` (its stats): the stats file is the commit. Each file
is written atomically; pool parts without their stats file are leftovers of a crash and are
deleted on the next start, so a rerun resumes after the last committed round. The `personas`
table (one file) is rewritten from the committed pool at the end of every run.
"""

from __future__ import annotations

import re

import pyarrow as pa

from aloe_ray import storage
from aloe_ray.pipeline.run_root import RunRoot
from aloe_ray.schema import PERSONAS, POOL_MEMBERS, POOL_ROUNDS
from aloe_ray.storage import S3Options

POOL_TABLES = {"profile": "profiles", "personality": "personalities"}
_SCHEMAS = {"profiles": POOL_MEMBERS, "personalities": POOL_MEMBERS, "rounds": POOL_ROUNDS, "personas": PERSONAS}
_ROUND_FILE = re.compile(r"round-(\d{5})\.parquet$")


class PoolOutput(RunRoot):
    SCHEMAS = _SCHEMAS

    def __init__(self, output: str, run_id: str, s3: S3Options | None = None) -> None:
        super().__init__(storage.join(output, run_id), s3)

    @staticmethod
    def round_file(round_: int) -> str:
        return f"round-{round_:05d}.parquet"

    def commit_round(self, round_: int, members: dict[str, list[dict]], stats: list[dict]) -> None:
        """Write a round's new members (by kind), then its stats: the commit."""
        name = self.round_file(round_)
        for kind, rows in members.items():
            if rows:
                storage.write_parquet(storage.join(self.table(POOL_TABLES[kind]), name),
                                      pa.Table.from_pylist(rows, POOL_MEMBERS), self.s3)
        storage.write_parquet(storage.join(self.table("rounds"), name), pa.Table.from_pylist(stats, POOL_ROUNDS), self.s3)

    def recover(self) -> tuple[list[int], int]:
        """(committed rounds in order, uncommitted pool parts removed)."""
        committed = sorted(self._rounds_in("rounds"))
        removed = 0
        for table in POOL_TABLES.values():
            for uri in storage.list_files(self.table(table), ".parquet", self.s3):
                m = _ROUND_FILE.search(uri)
                if m is None or int(m.group(1)) not in committed:
                    storage.delete_file(uri, self.s3)
                    removed += 1
        return committed, removed

    def _rounds_in(self, table: str) -> set[int]:
        found = set()
        for uri in storage.list_files(self.table(table), ".parquet", self.s3):
            m = _ROUND_FILE.search(uri)
            if m:
                found.add(int(m.group(1)))
        return found

    def write_personas(self, table: pa.Table) -> None:
        """Replace the personas table with one file (a rerun may pair differently)."""
        target = storage.join(self.table("personas"), "personas.parquet")
        storage.write_parquet(target, table, self.s3)
        for uri in storage.list_files(self.table("personas"), ".parquet", self.s3):
            if uri != target:
                storage.delete_file(uri, self.s3)
