"""The run root of a generation job and its exactly-once commit protocol.

Trees are written in parts: `nodes/part-X.parquet`, then `trees/part-X.parquet`. Each file is
written atomically, and the trees part is the commit: a nodes part without its trees part is
an orphan of a crash and is deleted on the next start. X is a hash of the part's tree ids, so a
retried Ray task rewrites the same files instead of adding copies. A tree is finished once a
committed trees part holds it with status 'ok'; a rerun skips finished trees and, by default,
drops the rows of failed ones so they are grown again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aloe_ray import storage
from aloe_ray.pipeline.run_root import RunRoot, rewrite_part
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


class RunOutput(RunRoot):
    SCHEMAS = {"nodes": NODES, "trees": TREES}

    def __init__(self, output: str, run_id: str, s3: S3Options | None = None) -> None:
        super().__init__(storage.join(output, run_id), s3)

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
            fs, path = storage.filesystem_for(uri, self.s3)
            ids = pq.read_table(path, filesystem=fs, columns=["tree_id", "status"])  # two columns, not the part
            failed = pc.equal(ids["status"], "failed")
            state.ok.update(ids.filter(pc.invert(failed))["tree_id"].to_pylist())
            failed_ids = ids.filter(failed)["tree_id"].to_pylist()
            if not failed_ids:
                continue
            if not retry_failed:
                state.failed.update(failed_ids)
                continue
            table = storage.read_parquet(uri, self.s3, schema=TREES)
            kept = table.filter(pc.invert(pc.equal(table["status"], "failed")))
            state.failed_rows_dropped += len(failed_ids)
            rewrite_part(uri, kept, self.s3)
        return state
