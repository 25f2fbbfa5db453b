"""A run's folder (local or s3://) and its files: the pieces every job's output shares.

Tables are read with their declared schema (an empty table when none was written yet); text,
bytes and JSON are written atomically (see `aloe_ray.storage`). Each job's output class adds
its own commit protocol on top: `RunOutput` (trees), `PoolOutput` (persona rounds),
`EvalOutput` (rollouts).
"""

from __future__ import annotations

import json

import pyarrow as pa

from aloe_ray import storage
from aloe_ray.storage import S3Options


class RunRoot:
    SCHEMAS: dict[str, pa.Schema] = {}
    """The tables under this root, by folder name."""

    def __init__(self, root: str, s3: S3Options | None = None) -> None:
        self.root = root
        self.s3 = s3

    def file(self, name: str) -> str:
        return storage.join(self.root, name)

    table = file
    """A table's folder under the root."""

    def read(self, name: str) -> pa.Table:
        schema = self.SCHEMAS[name]
        if not storage.exists(self.table(name), self.s3):
            return schema.empty_table()
        return storage.read_parquet(self.table(name), self.s3, schema=schema)

    def read_text(self, name: str) -> str | None:
        """A file under the root, or None if there is none."""
        try:
            return storage.read_text(self.file(name), self.s3)
        except FileNotFoundError:
            return None

    def write_text(self, name: str, text: str) -> None:
        storage.write_text(self.file(name), text, self.s3)

    def write_bytes(self, name: str, data: bytes) -> None:
        storage.write_bytes(self.file(name), data, self.s3)

    def write_json(self, name: str, data: dict) -> None:
        self.write_text(name, json.dumps(data, indent=2, default=str) + "\n")

    @staticmethod
    def _name(uri: str) -> str:
        return uri.rsplit("/", 1)[-1]


def rewrite_part(uri: str, kept: pa.Table, s3: S3Options | None) -> None:
    """Write what is left of a part (failed rows dropped), or delete it when nothing is."""
    if kept.num_rows:
        storage.write_parquet(uri, kept, s3)
    else:
        storage.delete_file(uri, s3)
