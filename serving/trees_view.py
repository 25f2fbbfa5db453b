"""Read side of the tree browser: a tree run's trees and one tree's nodes, for the page.

A run root holds `trees/` (one row per tree: the commit) and `nodes/` (one row per node). The
list reads only the trees table's small columns; one tree's nodes are read with a `tree_id`
filter pushed into the Parquet reader (only matching rows are materialised). Node rows keep every
column the run wrote, known or not, so the page shows quality columns added after this was written.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from aloe_ray import storage
from aloe_ray.schema import NODES
from aloe_ray.storage import S3Options

LIST_COLUMNS = ("tree_id", "persona_id", "status", "failure_reason", "turns", "num_nodes", "num_pairs",
                "policy", "profile", "personality", "finished_at")


class TreeRun:
    def __init__(self, root: str, s3: S3Options | None = None) -> None:
        self.root, self.s3 = root.rstrip("/"), s3

    def _files(self, table: str) -> tuple[Any, list[str]]:
        uri = storage.join(self.root, table)
        fs, _ = storage.filesystem_for(uri, self.s3)
        return fs, [storage.filesystem_for(u, self.s3)[1] for u in storage.list_files(uri, ".parquet", self.s3)]

    def _read(self, table: str, columns: list[str] | None = None, filters=None) -> pa.Table:
        fs, paths = self._files(table)
        parts = []
        for path in paths:
            names = pq.read_schema(path, filesystem=fs).names
            cols = None if columns is None else [c for c in columns if c in names]
            parts.append(pq.read_table(path, filesystem=fs, columns=cols, filters=filters))
        if not parts:
            return pa.table({})
        return pa.concat_tables(parts, promote_options="permissive")

    def trees(self) -> list[dict[str, Any]]:
        """The committed trees (status, persona, size), in tree id order."""
        if not storage.exists(storage.join(self.root, "trees"), self.s3):
            raise FileNotFoundError(f"no trees table under {self.root}: is it a tree run root (<output>/<run_id>)?")
        rows = self._read("trees", list(LIST_COLUMNS)).to_pylist()
        return sorted((_plain(r) for r in rows), key=lambda r: r["tree_id"])

    def tree(self, tree_id: str) -> dict[str, Any]:
        """One tree: its trees row and all its nodes (every column), in path order."""
        found = self._read("trees", filters=[("tree_id", "==", tree_id)]).to_pylist()
        if not found:
            raise KeyError(f"no tree '{tree_id}' in {self.root}")
        nodes = {n["node_id"]: _plain(n) for n in self._read("nodes", filters=[("tree_id", "==", tree_id)]).to_pylist()}
        ordered = sorted(nodes.values(), key=lambda n: (n["turn"], n["role"] != "user", n.get("path") or ""))
        extra = sorted({k for n in ordered for k in n} - set(NODES.names))
        return {"tree": _plain(found[0]), "nodes": ordered, "extra_columns": extra, "root": self.root}


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe values: datetimes as ISO text, NaN as null."""
    out = {}
    for k, v in row.items():
        if isinstance(v, datetime):
            v = v.isoformat()
        elif isinstance(v, float) and not math.isfinite(v):
            v = None
        elif isinstance(v, list):
            v = [None if isinstance(x, float) and not math.isfinite(x) else x for x in v]
        out[k] = v
    return out
