"""The run root of a generation job and its exactly-once commit protocol.

Trees are written in parts: `nodes/part-X.parquet`, then `trees/part-X.parquet` (one name in
both tables). Each file is written atomically, and the trees part is the commit: a tree is
committed when a trees part holds its row, and its nodes are exactly its nodes in the nodes part
of the same name. A nodes part without its trees part is an orphan of a crash: no reader opens
it, and the next start deletes it. X is a hash of the part's tree ids, so a retried Ray task
rewrites the same files instead of adding copies. A tree is finished once a committed trees part
holds it with status 'ok'; a rerun skips finished trees and, by default, drops the rows of failed
ones so they are grown again.

Every reader of a run goes through `RunOutput.committed`: committed trees only, one part at a
time, each tree once (a tree two parts hold is read from the part holding more trees, ties by
name: `_losers`), and never an 'ok' tree whose nodes are not exactly `num_nodes` many (counted as
broken; the next start drops its row so it is grown again, `recover`).

Parts are committed small (a killed run loses only the trees in flight) and compacted after the
run into parts of up to `trees_per_file` trees and `MERGED_PART_BYTES` of nodes, so the file
count follows the data's size, not the commit frequency. Compaction writes `compact-X` the same
way (nodes, then trees) from what `committed` reads of the parts it merges (each tree once, no
broken tree) and only then deletes those parts; a crash in between leaves parts whose trees a
larger part also holds, which readers skip and the next start deletes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from aloe_ray import storage
from aloe_ray.pipeline.lease import Fence
from aloe_ray.pipeline.run_root import RunRoot, rewrite_part
from aloe_ray.schema import NODES, TREES
from aloe_ray.storage import S3Options
from aloe_ray.trees.grow import TreeResult
from aloe_ray.trees.spec import stable_id, tree_hashes

MERGED_PART_BYTES = 256 * 2**20
"""Nodes bytes (Parquet, as listed) a part compaction writes holds at most: a merged group's
memory is bounded by bytes, not by trees alone."""


class CommittedPart(NamedTuple):
    """One part's share of a run's committed trees: the trees it holds that no other part wins,
    and their nodes (only 'ok' trees have nodes)."""

    name: str
    trees: pa.Table
    nodes: pa.Table


@dataclass
class Recovered:
    """What an earlier attempt of the same run left behind."""

    ok: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    """The finished 'ok' trees, as `tree_hashes` (8 bytes a tree: the driver never holds the ids)."""
    failed: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    """The failed trees kept as finished (retry_failed off), as `tree_hashes`."""
    orphan_parts_removed: int = 0
    superseded_parts_removed: int = 0
    failed_rows_dropped: int = 0
    broken_trees_dropped: int = 0
    """'ok' trees whose nodes were missing or not `num_nodes` many: their rows were dropped, so
    they are grown again."""
    temp_files_removed: int = 0
    """Temporary files of atomic writes (`.tmp-*`) that a writer now gone left behind."""

    @property
    def done(self) -> np.ndarray:
        """The finished trees' hashes, ok and failed kept alike."""
        return np.concatenate([self.ok, self.failed]) if self.failed.size else self.ok


class RunOutput(RunRoot):
    SCHEMAS = {"nodes": NODES, "trees": TREES}

    def __init__(self, output: str, run_id: str, s3: S3Options | None = None) -> None:
        super().__init__(storage.join(output, run_id), s3)

    @classmethod
    def at(cls, root: str, s3: S3Options | None = None) -> RunOutput:
        """The run output whose root is `root` (`<output>/<run_id>`), as a reader is given it."""
        out = cls.__new__(cls)
        RunRoot.__init__(out, root.rstrip("/"), s3)
        return out

    def committed(self, tree_columns: Sequence[str] | None = None, node_columns: Sequence[str] | None = None, *,
                  tree_id: str | None = None, broken: list[str] | None = None) -> Iterator[CommittedPart]:
        """The run's committed trees and their nodes, one part at a time (a part's tables in
        memory, never the run's), in part name order: each tree once, from the part that wins it
        (`_losers`), and no 'ok' tree whose nodes are not exactly `num_nodes` many (their ids are
        appended to `broken`). Columns: those named (a declared column a part lacks reads as
        nulls), or None for every column a part holds, known or not; `node_columns=()` reads
        only the nodes' tree ids the check needs. `tree_id`: that tree alone (the filter is
        pushed into the Parquet reader). Orphan nodes parts are never opened."""
        hashes_of = self._tree_hashes()
        losers = _losers(hashes_of)
        nodes_parts = self._listing("nodes")
        wanted = None if tree_id is None else tree_hashes([tree_id])
        for name, hashes in hashes_of.items():
            lost = losers.get(name, _NONE)
            if wanted is not None and (np.isin(wanted, lost).any() or not np.isin(wanted, hashes).any()):
                continue
            part = self._committed_part(name, lost, tree_columns, node_columns, has_nodes=name in nodes_parts,
                                        tree_id=tree_id, broken=broken)
            if part.trees.num_rows:
                yield part

    def _committed_part(self, name: str, lost: np.ndarray, tree_columns, node_columns, *, has_nodes: bool,
                        tree_id: str | None = None, broken: list[str] | None = None) -> CommittedPart:
        """What `committed` reads of one part: its rows less the trees another part wins, then
        the nodes of its 'ok' trees; 'ok' trees whose nodes count differs from `num_nodes` are
        left out of both."""
        match = None if tree_id is None else pc.field("tree_id") == tree_id
        trees = self._read_file("trees", name, _with(tree_columns, ("tree_id", "status", "num_nodes")), match)
        if lost.size:
            trees = trees.filter(pa.array(~np.isin(tree_hashes(trees["tree_id"].to_pylist()), lost)))
        ok_ids = trees.filter(pc.equal(trees["status"], "ok"))["tree_id"].combine_chunks()
        node_cols = _with(node_columns, ("tree_id",))
        if has_nodes and len(ok_ids):
            nodes = self._read_file("nodes", name, node_cols, pc.field("tree_id").isin(ok_ids))
        else:
            nodes = _empty(self.SCHEMAS["nodes"], node_cols)
        bad = _broken(trees, nodes["tree_id"])
        if bad:
            if broken is not None:
                broken.extend(bad)
            gone = pa.array(bad, pa.string())
            trees = trees.filter(pc.invert(pc.is_in(trees["tree_id"], gone)))
            nodes = nodes.filter(pc.invert(pc.is_in(nodes["tree_id"], gone)))
        if tree_columns is not None:
            trees = trees.select(list(tree_columns))
        if node_columns is not None:
            nodes = nodes.select(list(node_columns))
        return CommittedPart(name, trees, nodes)

    def commit(self, results: list[TreeResult], fence: Fence | None = None, *, prefix: str = "part-") -> str:
        """Write one part (nodes, then trees) for these finished trees; returns its name. With a
        fence, the trees file (the commit) is written only while the writer's epoch still owns
        the run (`Fenced` otherwise, and the nodes file left is an orphan the owner's recovery
        removes). `prefix`: 'lost-' for the failed rows the driver writes for a batch Ray Data
        gave up on (never the name of a part a grower may have left nodes under)."""
        part = part_name([r.tree["tree_id"] for r in results], prefix)
        nodes = [n for r in results for n in r.nodes]
        if nodes:
            storage.write_parquet(storage.join(self.table("nodes"), part), pa.Table.from_pylist(nodes, NODES), self.s3)
        trees = pa.Table.from_pylist([r.tree for r in results], TREES)
        if fence is not None:
            _fault_delay()
            fence.check()
        storage.write_parquet(storage.join(self.table("trees"), part), trees, self.s3)
        return part

    def has_part(self, name: str) -> bool:
        """Whether the part `name` is committed (its trees file exists)."""
        return storage.exists(storage.join(self.table("trees"), name), self.s3)

    def recover(self, *, retry_failed: bool) -> Recovered:
        """Clean what an earlier attempt left, before this driver grows anything (it owns the run
        now, and the old driver's growers are gone, so no write is in flight): stale temporary
        files, parts a compaction replaced, orphan nodes parts, and the rows of 'ok' trees whose
        nodes are missing or not `num_nodes` many (reported, and grown again); with
        `retry_failed`, the failed trees' rows too. Returns what is finished and what was done."""
        state = Recovered()
        for table in ("nodes", "trees"):
            for info in self._files(table):
                if info.base_name.startswith(".tmp-"):  # storage.write_bytes's, of a writer now gone
                    storage.delete_file(storage.join(self.table(table), info.base_name), self.s3)
                    state.temp_files_removed += 1
        hashes_of = self._tree_hashes()
        losers = _losers(hashes_of)
        for name in _superseded(hashes_of, losers):  # a compaction's replaced parts, left by a crash
            self._delete_part(name)
            del hashes_of[name]
            state.superseded_parts_removed += 1
        nodes_parts = self._listing("nodes")
        for name in nodes_parts:
            if name not in hashes_of:
                storage.delete_file(storage.join(self.table("nodes"), name), self.s3)
                state.orphan_parts_removed += 1
        ok, kept_failed = [], []
        for name in hashes_of:  # one part's rows at a time
            rows = self._read_file("trees", name, ["tree_id", "status", "num_nodes"])
            nodes = self._read_file("nodes", name, ["tree_id"]) if name in nodes_parts else _empty(NODES, ["tree_id"])
            broken = _broken(rows, nodes["tree_id"])
            is_failed = pc.equal(rows["status"], "failed")
            failed = rows.filter(is_failed)["tree_id"].to_pylist()
            finished = set(rows.filter(pc.invert(is_failed))["tree_id"].to_pylist()) - set(broken)
            ok.append(tree_hashes(finished))
            state.broken_trees_dropped += len(broken)
            if retry_failed:
                state.failed_rows_dropped += len(failed)
            else:
                kept_failed.append(tree_hashes(failed))
            if broken or (failed and retry_failed):
                self._drop_trees(name, [*broken, *(failed if retry_failed else ())], nodes_too=bool(broken))
        state.ok = np.unique(np.concatenate([state.ok, *ok]))
        state.failed = np.unique(np.concatenate([state.failed, *kept_failed]))
        return state

    def compact(self, trees_per_file: int, max_bytes: int = MERGED_PART_BYTES) -> int:
        """Merge small parts (at most half of `trees_per_file` trees and half of `max_bytes` of
        nodes) into parts of up to `trees_per_file` trees and `max_bytes` of nodes, writing what
        `committed` reads of them: each tree once, no broken tree (its row is not carried over,
        so the next run grows it again). Returns how many parts were replaced."""
        hashes_of = self._tree_hashes()
        losers = _losers(hashes_of)
        nodes_bytes = self._listing("nodes")
        size = {name: (len(hashes), nodes_bytes.get(name, 0)) for name, hashes in hashes_of.items()}
        groups, group, rows, held = [], [], 0, 0
        for name, (n, b) in size.items():
            if n > trees_per_file / 2 or b > max_bytes / 2:
                continue
            if group and (rows + n > trees_per_file or held + b > max_bytes):
                groups.append(group)
                group, rows, held = [], 0, 0
            group.append(name)
            rows, held = rows + n, held + b
        groups.append(group)
        replaced = 0
        for group in (g for g in groups if len(g) > 1):
            parts = [self._committed_part(n, losers.get(n, _NONE), TREES.names, NODES.names,
                                          has_nodes=n in nodes_bytes) for n in group]
            trees = pa.concat_tables([p.trees for p in parts])
            nodes = pa.concat_tables([p.nodes for p in parts])
            # Its own prefix: a part that recover() rewrote keeps its old name, which a merged
            # name from the same ids could otherwise equal (and the delete below would remove).
            merged = part_name(trees["tree_id"].to_pylist(), "compact-")
            if nodes.num_rows:
                storage.write_parquet(storage.join(self.table("nodes"), merged), nodes, self.s3)
            if trees.num_rows:
                storage.write_parquet(storage.join(self.table("trees"), merged), trees, self.s3)  # the commit
            for name in group:
                if name != merged:
                    self._delete_part(name)
            replaced += len(group)
        return replaced

    def _drop_trees(self, name: str, tree_ids: list[str], *, nodes_too: bool) -> None:
        """Rewrite a part without these trees (a part left empty is deleted). The nodes file goes
        first: a crash before the trees file leaves those trees' rows with too few nodes, broken
        again, so the next start drops them again."""
        gone = pa.array(tree_ids, pa.string())
        trees_uri = storage.join(self.table("trees"), name)
        trees = storage.read_parquet(trees_uri, self.s3)
        kept = trees.filter(pc.invert(pc.is_in(trees["tree_id"], gone)))
        if not kept.num_rows:
            self._delete_part(name)
            return
        nodes_uri = storage.join(self.table("nodes"), name)
        if nodes_too and storage.exists(nodes_uri, self.s3):
            nodes = storage.read_parquet(nodes_uri, self.s3)  # every column it holds, known or not
            rewrite_part(nodes_uri, nodes.filter(pc.invert(pc.is_in(nodes["tree_id"], gone))), self.s3)
        rewrite_part(trees_uri, kept, self.s3)

    def _files(self, table: str) -> list[pafs.FileInfo]:
        """What one listing of a table's folder holds (hidden files too)."""
        fs, path = storage.filesystem_for(self.table(table), self.s3)
        return [i for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
                if i.type == pafs.FileType.File]

    def _listing(self, table: str) -> dict[str, int]:
        """A table's part files by name, in name order, with their sizes in bytes."""
        return dict(sorted((i.base_name, i.size) for i in self._files(table)
                           if i.base_name.endswith(".parquet") and not i.base_name.startswith((".", "_"))))

    def _tree_hashes(self) -> dict[str, np.ndarray]:
        """Each trees part's trees as `tree_hashes` (one small column read, 8 bytes a tree kept),
        in name order."""
        return {name: tree_hashes(self._read_file("trees", name, ["tree_id"])["tree_id"].to_pylist())
                for name in self._listing("trees")}

    def _read_file(self, table: str, name: str, columns: list[str] | None, where: pc.Expression | None = None
                   ) -> pa.Table:
        """One part file: the named columns against the declared schema (one the file lacks reads
        as nulls), or every column the file holds."""
        fs, path = storage.filesystem_for(storage.join(self.table(table), name), self.s3)
        schema = None if columns is None else self.SCHEMAS[table]
        return pads.dataset(path, filesystem=fs, format="parquet", schema=schema).to_table(columns=columns,
                                                                                            filter=where)

    def _delete_part(self, name: str) -> None:
        """The trees file first: a crash after it leaves an orphan nodes file, removed next start."""
        for table in ("trees", "nodes"):
            uri = storage.join(self.table(table), name)
            if storage.exists(uri, self.s3):
                storage.delete_file(uri, self.s3)


def part_name(tree_ids: Sequence[str], prefix: str = "part-") -> str:
    """A part's file name: a hash of its trees' ids, so a retried write rewrites the same files."""
    return prefix + stable_id(*sorted(tree_ids)) + ".parquet"


def _losers(hashes_of: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """For each part, the trees (`tree_hashes`) it holds that another part wins. A tree two parts
    hold belongs to the part holding more trees, ties to the name first in order: a compaction's
    part over the small parts it replaced, one copy of a tree a writer that lost the run committed
    again. Found with numpy over the parts' hashes (16 bytes a tree, no Python object per tree)."""
    order = sorted(hashes_of, key=lambda n: (-len(hashes_of[n]), n))
    if len(order) < 2:
        return {}
    held = np.concatenate([hashes_of[n] for n in order])
    ordered = np.sort(held)
    if not (ordered[1:] == ordered[:-1]).any():
        return {}  # the common case, decided in one sort: no tree in two parts
    del ordered
    rank = np.repeat(np.arange(len(order), dtype=np.int32), [len(hashes_of[n]) for n in order])
    by = np.lexsort((rank, held))  # by tree, then by rank: a tree's first entry is its winner
    held, rank = held[by], rank[by]
    again = np.flatnonzero(held[1:] == held[:-1]) + 1
    held, rank = held[again], rank[again]
    return {order[r]: np.unique(held[rank == r]) for r in np.unique(rank)}


_NONE = np.empty(0, np.uint64)


def _superseded(hashes_of: dict[str, np.ndarray], losers: dict[str, np.ndarray]) -> list[str]:
    """Parts all of whose trees another part wins (`_losers`)."""
    return [name for name, hashes in hashes_of.items()
            if hashes.size and losers.get(name, _NONE).size == np.unique(hashes).size]


def _broken(trees: pa.Table, node_tree_ids: pa.ChunkedArray | pa.Array) -> list[str]:
    """The 'ok' trees among `trees` whose nodes (given by their tree ids) are not `num_nodes` many."""
    counts = pc.value_counts(node_tree_ids)
    have = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    return [t for t, status, n in zip(trees["tree_id"].to_pylist(), trees["status"].to_pylist(),
                                      trees["num_nodes"].to_pylist()) if status == "ok" and have.get(t, 0) != n]


def _with(columns: Sequence[str] | None, needed: Sequence[str]) -> list[str] | None:
    """The columns to read: those asked for plus what the reader itself needs (None: every one)."""
    return None if columns is None else list(dict.fromkeys([*columns, *needed]))


def _empty(schema: pa.Schema, columns: list[str] | None) -> pa.Table:
    return schema.empty_table() if columns is None else pa.schema([schema.field(c) for c in columns]).empty_table()


FAULT_COMMIT_DELAY_ENV = "ALOE_FAULT_COMMIT_DELAY_S"
"""A fault hook for benchmarks/chaos.py: seconds a commit waits between its nodes file and its
fence check (the widest window a writer that lost the run could commit in). Unset: no wait."""


def _fault_delay() -> None:
    import os
    import time

    delay = float(os.environ.get(FAULT_COMMIT_DELAY_ENV) or 0)
    if delay > 0:
        time.sleep(delay)
