"""URI -> pyarrow filesystem, and atomic file writes on top of it.

Accepted: local paths, file:// URIs and s3://bucket/key. S3 uses the standard AWS credential
chain; an S3-compatible store is reached through an endpoint override (argument, or the
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL environment variables).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None = None
    region: str | None = None


class StorageError(ValueError):
    """A URI that cannot be used."""


class PreconditionFailed(RuntimeError):
    """A conditional write lost: the file was changed (or created) by someone else since it was read."""


def filesystem_for(uri: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a URI."""
    if not uri or not isinstance(uri, str):
        raise StorageError(f"empty storage URI: {uri!r}")
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = parsed.path if parsed.scheme == "file" else uri
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise StorageError(f"file:// URI with a host is not supported: {uri}")
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    if parsed.scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise StorageError(f"s3 URI needs a bucket: {uri!r} (expected s3://bucket/prefix)")
        path = f"{parsed.netloc}/{parsed.path.lstrip('/')}".rstrip("/")
        return s3_filesystem(s3 or S3Options()), path
    raise StorageError(f"unsupported storage scheme '{parsed.scheme}' in {uri!r}: use a local path, file:// or s3://")


def s3_filesystem(opts: S3Options) -> pafs.S3FileSystem:
    endpoint = opts.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = opts.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs: dict = {"region": region}
    if endpoint:
        ep = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        if not ep.netloc:
            raise StorageError(f"S3 endpoint URL has no host: {endpoint!r}")
        kwargs["endpoint_override"] = ep.netloc
        kwargs["scheme"] = ep.scheme or "https"
        kwargs["allow_bucket_creation"] = True
    return pafs.S3FileSystem(**kwargs)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


def write_bytes(uri: str, data: bytes, s3: S3Options | None = None) -> None:
    """Write a whole file atomically: a reader sees the old file, or none, or all of the new one.

    Local: write a temporary sibling then rename. S3: a PUT is already all-or-nothing.
    """
    fs, path = filesystem_for(uri, s3)
    parent = path.rsplit("/", 1)[0]
    if isinstance(fs, pafs.S3FileSystem):
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}"
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except (FileNotFoundError, OSError):
            pass
        raise


def read_bytes(uri: str, s3: S3Options | None = None) -> bytes:
    fs, path = filesystem_for(uri, s3)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"no such file: {uri}")
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(uri: str, s3: S3Options | None = None) -> str:
    return read_bytes(uri, s3).decode("utf-8")


def write_text(uri: str, text: str, s3: S3Options | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), s3)


def exists(uri: str, s3: S3Options | None = None) -> bool:
    fs, path = filesystem_for(uri, s3)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(uri: str, suffix: str = "", s3: S3Options | None = None) -> list[str]:
    """URIs of the files directly or recursively under a prefix, sorted; [] if it does not exist."""
    fs, path = filesystem_for(uri, s3)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    base = uri.rstrip("/")
    out = []
    for info in fs.get_file_info(selector):
        name = info.path[len(path):].lstrip("/")
        if info.type == pafs.FileType.File and name.endswith(suffix) and not _hidden(name):
            out.append(f"{base}/{name}")
    return sorted(out)


def delete_file(uri: str, s3: S3Options | None = None) -> None:
    fs, path = filesystem_for(uri, s3)
    fs.delete_file(path)


def write_parquet(uri: str, table: pa.Table, s3: S3Options | None = None) -> None:
    """One Parquet file, written atomically."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes(uri, buf.getvalue(), s3)


def read_parquet(uri: str, s3: S3Options | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """A Parquet file, or every *.parquet file under a prefix, as one table."""
    fs, path = filesystem_for(uri, s3)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such table: {uri}")
    if info.type == pafs.FileType.File:
        return pq.read_table(path, filesystem=fs, schema=schema)
    files = list_files(uri, ".parquet", s3)
    if not files:
        if schema is not None:
            return schema.empty_table()
        raise FileNotFoundError(f"no Parquet files under {uri}")
    tables = [pq.read_table(filesystem_for(f, s3)[1], filesystem=fs, schema=schema) for f in files]
    return pa.concat_tables(tables, promote_options="default")


def _hidden(name: str) -> bool:
    return any(part.startswith((".", "_")) for part in name.split("/"))


# Conditional writes: the one primitive the run lease (and so every fence) rests on. S3 has no
# rename and pyarrow's S3 filesystem no conditional PUT, so S3 goes through boto3's
# `put_object(IfNoneMatch="*" | IfMatch=etag)` (412 on a lost race); a local file is replaced
# under an exclusive `flock` of a sibling lock file, compared by content hash.

def read_versioned(uri: str, s3: S3Options | None = None) -> tuple[bytes, str] | None:
    """A file's bytes and its version token (S3: the ETag; local: a hash of the content), or None
    when there is no file."""
    if _is_s3(uri):
        client, bucket, key = _s3_client(uri, s3)
        try:
            got = client.get_object(Bucket=bucket, Key=key)
        except client.exceptions.NoSuchKey:
            return None
        return got["Body"].read(), got["ETag"]
    return _read_local(filesystem_for(uri, s3)[1])


def _read_local(path: str) -> tuple[bytes, str] | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return data, _digest(data)


def write_if(uri: str, data: bytes, s3: S3Options | None = None, *, version: str | None) -> str:
    """Write `data` only if the file is still at `version` (None: only if there is no file);
    returns the new version. PreconditionFailed when another writer got there first."""
    if _is_s3(uri):
        client, bucket, key = _s3_client(uri, s3)
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            return client.put_object(Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
        except client.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or \
                    exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                raise PreconditionFailed(f"{uri} changed since it was read ({code})") from None
            raise
    import fcntl

    path = filesystem_for(uri, s3)[1]
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    with open(os.path.join(parent, f".{name}.lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = _read_local(path)
        if (current is None) != (version is None) or (current is not None and current[1] != version):
            raise PreconditionFailed(f"{uri} changed since it was read")
        write_bytes(path, data)
        return _digest(data)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _is_s3(uri: str) -> bool:
    return urlparse(uri).scheme in ("s3", "s3a")


def _s3_client(uri: str, s3: S3Options | None):
    opts = s3 or S3Options()
    endpoint = opts.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = opts.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    parsed = urlparse(uri)
    return _boto_client(endpoint, region), parsed.netloc, parsed.path.lstrip("/")


@functools.lru_cache(maxsize=8)
def _boto_client(endpoint: str | None, region: str):
    import boto3  # a client is thread-safe, and costs tens of ms to make: one per endpoint

    return boto3.client("s3", endpoint_url=endpoint, region_name=region)
