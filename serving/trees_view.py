"""Read side of the tree browser: a tree run's trees and one tree's nodes, for the page.

A run root holds `trees/` (one row per tree: the commit) and `nodes/` (one row per node); both
are read through `RunOutput.committed`, so the page shows committed trees only, each once, and
never a tree whose nodes are incomplete. The list reads only the trees table's small columns;
one tree is read with a `tree_id` filter pushed into the Parquet reader (only matching rows are
materialised). Node rows keep every column the run wrote, known or not, so the page shows
quality columns added after this was written.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from aloe_ray import storage
from aloe_ray.pipeline.run_output import RunOutput
from aloe_ray.schema import NODES
from aloe_ray.storage import S3Options

LIST_COLUMNS = ("tree_id", "persona_id", "status", "failure_reason", "turns", "num_nodes", "num_pairs",
                "policy", "profile", "personality", "finished_at")


class TreeRun:
    def __init__(self, root: str, s3: S3Options | None = None) -> None:
        self.run = RunOutput.at(root, s3)
        self.root = self.run.root

    def trees(self) -> list[dict[str, Any]]:
        """The committed trees (status, persona, size), in tree id order."""
        if not storage.exists(self.run.table("trees"), self.run.s3):
            raise FileNotFoundError(f"no trees table under {self.root}: is it a tree run root (<output>/<run_id>)?")
        rows = [_plain(r) for part in self.run.committed(LIST_COLUMNS, ()) for r in part.trees.to_pylist()]
        return sorted(rows, key=lambda r: r["tree_id"])

    def tree(self, tree_id: str) -> dict[str, Any]:
        """One tree: its trees row and all its nodes (every column), in path order."""
        broken: list[str] = []
        found = list(self.run.committed(None, None, tree_id=tree_id, broken=broken))
        if broken:
            raise KeyError(f"tree '{tree_id}' in {self.root} is committed but its nodes are incomplete; the next run "
                           "of the tree job grows it again")
        if not found:
            raise KeyError(f"no tree '{tree_id}' in {self.root}")
        part = found[0]
        nodes = {n["node_id"]: _plain(n) for n in part.nodes.to_pylist()}
        ordered = sorted(nodes.values(), key=lambda n: (n["turn"], n["role"] != "user", n.get("path") or ""))
        extra = sorted({k for n in ordered for k in n} - set(NODES.names))
        return {"tree": _plain(part.trees.to_pylist()[0]), "nodes": ordered, "extra_columns": extra, "root": self.root}

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
