"""The run root of a generation job and its exactly-once commit protocol.

Trees are written in parts: `nodes/part-X.parquet`, then `trees/part-X.parquet`. Each file is
written atomically, and the trees part is the commit: a nodes part without its trees part is
an orphan of a crash and is deleted on the next start. X is a hash of the part's tree ids, so a
retried Ray task rewrites the same files instead of adding copies. A tree is finished once a
committed trees part holds it with status 'ok'; a rerun skips finished trees and, by default,
drops the rows of failed ones so they are grown again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from aloe_ray import storage
from aloe_ray.schema import NODES, TREES
from aloe_ray.storage import S3Options
from aloe_ray.trees.grow import TreeResult
from aloe_ray.trees.spec import stable_id


@dataclass
class Recovered:
    """What an earlier attempt of the same run left behind."""

    ok: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    orphan_parts_removed: int = 0
    failed_rows_dropped: int = 0


class RunOutput:
    def __init__(self, output: str, run_id: str, s3: S3Options | None = None) -> None:
        self.root = storage.join(output, run_id)
        self.s3 = s3

    def table(self, name: str) -> str:
        return storage.join(self.root, name)

    def file(self, name: str) -> str:
        return storage.join(self.root, name)

    def commit(self, results: list[TreeResult]) -> str:
        """Write one part (nodes, then trees) for these finished trees; returns its name."""
        part = "part-" + stable_id(*sorted(r.tree["tree_id"] for r in results)) + ".parquet"
        nodes = [n for r in results for n in r.nodes]
        if nodes:
            storage.write_parquet(storage.join(self.table("nodes"), part), pa.Table.from_pylist(nodes, NODES), self.s3)
        trees = pa.Table.from_pylist([r.tree for r in results], TREES)
        storage.write_parquet(storage.join(self.table("trees"), part), trees, self.s3)
        return part

    def recover(self, *, retry_failed: bool) -> Recovered:
        state = Recovered()
        tree_parts = {self._name(u): u for u in storage.list_files(self.table("trees"), ".parquet", self.s3)}
        for uri in storage.list_files(self.table("nodes"), ".parquet", self.s3):
            if self._name(uri) not in tree_parts:
                storage.delete_file(uri, self.s3)
                state.orphan_parts_removed += 1
        for uri in tree_parts.values():
            table = storage.read_parquet(uri, self.s3, schema=TREES)
            failed = pc.equal(table["status"], "failed")
            state.ok.update(table.filter(pc.invert(failed))["tree_id"].to_pylist())
            failed_ids = table.filter(failed)["tree_id"].to_pylist()
            if not failed_ids:
                continue
            if not retry_failed:
                state.failed.update(failed_ids)
                continue
            kept = table.filter(pc.invert(failed))
            state.failed_rows_dropped += len(failed_ids)
            if kept.num_rows:
                storage.write_parquet(uri, kept, self.s3)
            else:
                storage.delete_file(uri, self.s3)
        return state

    def read(self, name: str) -> pa.Table:
        schema = {"nodes": NODES, "trees": TREES}[name]
        if not storage.exists(self.table(name), self.s3):
            return schema.empty_table()
        return storage.read_parquet(self.table(name), self.s3, schema=schema)

    def write_text(self, name: str, text: str) -> None:
        storage.write_text(self.file(name), text, self.s3)

    def write_json(self, name: str, data: dict) -> None:
        self.write_text(name, json.dumps(data, indent=2, default=str) + "\n")

    @staticmethod
    def _name(uri: str) -> str:
        return uri.rsplit("/", 1)[-1]
