"""The storage layer against the local disk and a real S3 server (moto, on loopback)."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from aloe_ray import storage
from aloe_ray.storage import S3Options, StorageError


def test_local_and_file_uris(tmp_path):
    uri = str(tmp_path / "a" / "b.txt")
    storage.write_text(uri, "hello")
    assert storage.read_text(f"file://{uri}") == "hello"
    assert storage.exists(uri) and not storage.exists(str(tmp_path / "nope"))
    assert storage.list_files(str(tmp_path)) == [f"{tmp_path}/a/b.txt"]
    with pytest.raises(FileNotFoundError):
        storage.read_text(str(tmp_path / "missing.txt"))


def test_local_writes_are_atomic(tmp_path):
    """A reader polling the file while it is rewritten sees only complete versions."""
    uri = str(tmp_path / "big.bin")
    versions = [bytes([i]) * 4_000_000 for i in range(1, 6)]
    storage.write_bytes(uri, versions[0])
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            data = storage.read_bytes(uri)
            seen.add((len(data), data[:1], data[-1:]))

    t = threading.Thread(target=reader)
    t.start()
    for v in versions[1:]:
        storage.write_bytes(uri, v)
    stop.set()
    t.join()
    assert all(length == 4_000_000 and first == last for length, first, last in seen)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")], "no temporary files left"


@pytest.mark.parametrize("uri, message", [
    ("", "empty storage URI"),
    ("gs://bucket/x", "unsupported storage scheme 'gs'"),
    ("s3:///no-bucket", "s3 URI needs a bucket"),
    ("file://host/x", "file:// URI with a host"),
])
def test_bad_uris_get_clear_errors(uri, message):
    with pytest.raises(StorageError, match=message):
        storage.filesystem_for(uri)


def test_s3_round_trip_via_env_endpoint(s3_bucket, s3_env):
    root = f"s3://{s3_bucket}/runs/r1"
    table = pa.table({"x": [1, 2, 3], "s": ["a", "b", "c"]})
    storage.write_parquet(f"{root}/t/part-1.parquet", table)
    storage.write_parquet(f"{root}/t/part-2.parquet", table)
    storage.write_text(f"{root}/manifest.json", "{}")
    assert storage.list_files(f"{root}/t", ".parquet") == [f"{root}/t/part-1.parquet", f"{root}/t/part-2.parquet"]
    assert storage.read_parquet(f"{root}/t").num_rows == 6
    assert storage.read_text(f"{root}/manifest.json") == "{}"
    storage.delete_file(f"{root}/t/part-1.parquet")
    assert storage.read_parquet(f"{root}/t").num_rows == 3
    # the object really is on the server: read it back with boto3
    import boto3

    body = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).get_object(
        Bucket=s3_bucket, Key="runs/r1/manifest.json")["Body"].read()
    assert body == b"{}"


def test_s3_endpoint_from_config_beats_env(s3_bucket, s3_env, monkeypatch):
    endpoint = s3_env["AWS_ENDPOINT_URL"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens there
    opts = S3Options(endpoint_url=endpoint)
    storage.write_text(f"s3://{s3_bucket}/cfg.txt", "via config", opts)
    assert storage.read_text(f"s3://{s3_bucket}/cfg.txt", opts) == "via config"
