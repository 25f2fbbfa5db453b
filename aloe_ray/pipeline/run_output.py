"""The run root of a generation job and its exactly-once commit protocol.

Trees are written in parts: `nodes/part-X.parquet`, then `trees/part-X.parquet`. Each file is
written atomically, and the trees part is the commit: a nodes part without its trees part is
an orphan of a crash and is deleted on the next start. X is a hash of the part's tree ids, so a
retried Ray task rewrites the same files instead of adding copies. A tree is finished once a
committed trees part holds it with status 'ok'; a rerun skips finished trees and, by default,
drops the rows of failed ones so they are grown again.

Parts are committed small (a killed run loses only the trees in flight) and compacted after the
run into parts of up to `trees_per_file` trees, so the file count follows the data's size, not
the commit frequency. Compaction commits the merged part like any other (nodes, then trees) and
only then deletes the parts it replaced; a crash in between leaves parts whose trees a larger
part also holds, and the next start deletes those (`recover`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aloe_ray import storage
from aloe_ray.pipeline.lease import Fence
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
    superseded_parts_removed: int = 0
    failed_rows_dropped: int = 0


class RunOutput(RunRoot):
    SCHEMAS = {"nodes": NODES, "trees": TREES}

    def __init__(self, output: str, run_id: str, s3: S3Options | None = None) -> None:
        super().__init__(storage.join(output, run_id), s3)

    def commit(self, results: list[TreeResult], fence: Fence | None = None) -> str:
        """Write one part (nodes, then trees) for these finished trees; returns its name. With a
        fence, the trees file (the commit) is written only while the writer's epoch still owns
        the run (`Fenced` otherwise, and the nodes file left is an orphan the owner's recovery
        removes)."""
        part = "part-" + stable_id(*sorted(r.tree["tree_id"] for r in results)) + ".parquet"
        nodes = [n for r in results for n in r.nodes]
        if nodes:
            storage.write_parquet(storage.join(self.table("nodes"), part), pa.Table.from_pylist(nodes, NODES), self.s3)
        trees = pa.Table.from_pylist([r.tree for r in results], TREES)
        if fence is not None:
            _fault_delay()
            fence.check()
        storage.write_parquet(storage.join(self.table("trees"), part), trees, self.s3)
        return part

    def recover(self, *, retry_failed: bool) -> Recovered:
        state = Recovered()
        tree_parts = {self._name(u): u for u in storage.list_files(self.table("trees"), ".parquet", self.s3)}
        ids_of = {name: self._ids(uri) for name, uri in tree_parts.items()}
        for name in _superseded(ids_of):  # a compaction's replaced parts, left by a crash
            self._delete_part(name)
            del tree_parts[name], ids_of[name]
            state.superseded_parts_removed += 1
        for uri in storage.list_files(self.table("nodes"), ".parquet", self.s3):
            if self._name(uri) not in tree_parts:
                storage.delete_file(uri, self.s3)
                state.orphan_parts_removed += 1
        for name, uri in tree_parts.items():
            ids = ids_of[name]
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

    def compact(self, trees_per_file: int) -> int:
        """Merge parts holding at most half of `trees_per_file` trees into parts of up to that
        many; returns how many parts were replaced."""
        sizes = {self._name(u): n for u, n in self._row_counts(self.table("trees")).items()}
        small = sorted(name for name, n in sizes.items() if n <= trees_per_file / 2)
        groups, group, rows = [], [], 0
        for name in small:
            if group and rows + sizes[name] > trees_per_file:
                groups.append(group)
                group, rows = [], 0
            group.append(name)
            rows += sizes[name]
        groups.append(group)
        replaced = 0
        for group in (g for g in groups if len(g) > 1):
            trees = pa.concat_tables([self._read_part("trees", n, TREES) for n in group])
            nodes = [self._read_part("nodes", n, NODES) for n in group
                     if storage.exists(storage.join(self.table("nodes"), n), self.s3)]
            # Its own prefix: a part that recover() rewrote keeps its old name, which a merged
            # name from the same ids could otherwise equal (and the delete below would remove).
            merged = "compact-" + stable_id(*sorted(trees["tree_id"].to_pylist())) + ".parquet"
            if nodes:
                storage.write_parquet(storage.join(self.table("nodes"), merged), pa.concat_tables(nodes), self.s3)
            storage.write_parquet(storage.join(self.table("trees"), merged), trees, self.s3)  # the commit
            for name in group:
                if name != merged:
                    self._delete_part(name)
            replaced += len(group)
        return replaced

    def _ids(self, uri: str) -> pa.Table:
        fs, path = storage.filesystem_for(uri, self.s3)
        return pq.read_table(path, filesystem=fs, columns=["tree_id", "status"])  # two columns, not the part

    def _row_counts(self, folder: str) -> dict[str, int]:
        out = {}
        for uri in storage.list_files(folder, ".parquet", self.s3):
            fs, path = storage.filesystem_for(uri, self.s3)
            out[uri] = pq.ParquetFile(path, filesystem=fs).metadata.num_rows
        return out

    def _read_part(self, table: str, name: str, schema: pa.Schema) -> pa.Table:
        return storage.read_parquet(storage.join(self.table(table), name), self.s3, schema=schema)

    def _delete_part(self, name: str) -> None:
        """The trees file first: a crash after it leaves an orphan nodes file, removed next start."""
        for table in ("trees", "nodes"):
            uri = storage.join(self.table(table), name)
            if storage.exists(uri, self.s3):
                storage.delete_file(uri, self.s3)


def _superseded(ids_of: dict[str, pa.Table]) -> list[str]:
    """Parts all of whose trees a larger part also holds."""
    owner: dict[str, str] = {}
    for name in sorted(ids_of, key=lambda n: -ids_of[n].num_rows):
        for tree_id in ids_of[name]["tree_id"].to_pylist():
            owner.setdefault(tree_id, name)
    return [name for name, ids in ids_of.items()
            if ids.num_rows and all(owner[t] != name for t in ids["tree_id"].to_pylist())]


FAULT_COMMIT_DELAY_ENV = "ALOE_FAULT_COMMIT_DELAY_S"
"""A fault hook for benchmarks/chaos.py: seconds a commit waits between its nodes file and its
fence check (the widest window a writer that lost the run could commit in). Unset: no wait."""


def _fault_delay() -> None:
    import os
    import time

    delay = float(os.environ.get(FAULT_COMMIT_DELAY_ENV) or 0)
    if delay > 0:
        time.sleep(delay)
