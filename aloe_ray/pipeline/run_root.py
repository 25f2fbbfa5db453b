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
from aloe_ray.config import ConfigError
from aloe_ray.storage import S3Options


class RunRoot:
    SCHEMAS: dict[str, pa.Schema] = {}
    """The tables under this root, by folder name."""

    def __init__(self, root: str, s3: S3Options | None = None, schemas: dict[str, pa.Schema] | None = None) -> None:
        self.root = root
        self.s3 = s3
        if schemas is not None:
            self.SCHEMAS = schemas

    def file(self, name: str) -> str:
        return storage.join(self.root, name)

    table = file
    """A table's folder under the root."""

    def read(self, name: str) -> pa.Table:
        schema = self.SCHEMAS[name]
        if not storage.exists(self.table(name), self.s3):
            return schema.empty_table()
        return storage.read_parquet(self.table(name), self.s3, schema=schema)

    def read_columns(self, name: str, columns: list[str]) -> pa.Table:
        """Some columns of a table (every part), read with pyarrow.dataset."""
        dataset = self._dataset(name)
        if dataset is None:
            return pa.schema([self.SCHEMAS[name].field(c) for c in columns]).empty_table()
        return dataset.to_table(columns=columns)

    def iter_columns(self, name: str, columns: list[str]):
        """Some columns of a table, one part (file) at a time."""
        dataset = self._dataset(name)
        for fragment in dataset.get_fragments() if dataset is not None else ():
            yield fragment.to_table(schema=dataset.schema, columns=columns)

    def count_rows(self, name: str) -> int:
        """A table's rows, from the Parquet footers."""
        dataset = self._dataset(name)
        return 0 if dataset is None else dataset.count_rows()

    def _dataset(self, name: str):
        """A table as a pyarrow dataset with its declared schema (columns an older part lacks read
        as nulls); None when nothing was written yet."""
        import pyarrow.dataset as pads

        if not storage.exists(self.table(name), self.s3):
            return None
        fs, path = storage.filesystem_for(self.table(name), self.s3)
        return pads.dataset(path, filesystem=fs, format="parquet", schema=self.SCHEMAS[name])

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

    def pin_settings(self, name: str, settings: dict, *, made: str, instead: str) -> None:
        """Record what the committed output depends on (`name`, JSON); on a rerun, refuse settings
        that differ, naming every changed key (ConfigError: the jobs exit 2 before anything runs)."""
        before = self.read_text(name)
        if before is not None:
            changed = changed_keys(json.loads(before), json.loads(json.dumps(settings, default=str)))
            if changed:
                raise ConfigError(f"{self.root} was {made} with other settings ({', '.join(sorted(changed))} "
                                  f"differ); resume with the same settings or choose {instead}")
        self.write_json(name, settings)

    @staticmethod
    def _name(uri: str) -> str:
        return uri.rsplit("/", 1)[-1]


def changed_keys(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like settings trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for k in old.keys() | new.keys() for key in changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".") or "(all)"]


def rewrite_part(uri: str, kept: pa.Table, s3: S3Options | None) -> None:
    """Write what is left of a part (failed rows dropped), or delete it when nothing is."""
    if kept.num_rows:
        storage.write_parquet(uri, kept, s3)
    else:
        storage.delete_file(uri, s3)
