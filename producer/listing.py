"""Listing objects under a prefix as a stream: never the whole listing in memory.

S3-compatible backends page through ``list_objects_v2`` (1000 keys a page). Lithops'
localhost backend is a directory tree, walked lazily with ``os.scandir``. Other backends
fall back to Lithops' ``list_objects``, which returns one list.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lithops.constants import LITHOPS_TEMP_DIR

from moments_stream.errors import ConfigError
from moments_stream.settings import DEFAULT_VIDEO_EXTENSIONS


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    version: str  # etag, or mtime on localhost: changes when the file is replaced

    @property
    def fingerprint(self) -> str:
        return f"{self.size}:{self.version}"


def is_video_key(key: str, extensions: tuple[str, ...] = DEFAULT_VIDEO_EXTENSIONS) -> bool:
    return key.rsplit(".", 1)[-1].lower() in extensions if "." in key.rsplit("/", 1)[-1] else False


def _walk(directory: str) -> Iterator[os.DirEntry[str]]:
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path)
        elif entry.is_file(follow_symlinks=False):
            yield entry


def check_localhost_path(bucket: str, prefix: str) -> None:
    """A :class:`ConfigError` for a bucket or prefix that would reach outside the bucket's directory
    in Lithops localhost storage (``..``, an absolute path): the walk would list host files and
    enqueue them as videos."""
    if bucket in ("", ".", "..") or "/" in bucket or "\\" in bucket:
        raise ConfigError(f"{bucket!r} is not a bucket name", fix="set --bucket/MOMENTS_BUCKET to a plain name")
    if prefix.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", prefix):
        raise ConfigError(
            f"prefix {prefix!r} reaches outside the bucket (an absolute path or a '..' segment)",
            fix="name a prefix inside the bucket, e.g. videos/",
        )


def iter_localhost(bucket: str, prefix: str) -> Iterator[StoredObject]:
    check_localhost_path(bucket, prefix)
    root = os.path.join(LITHOPS_TEMP_DIR, bucket)
    if not os.path.isdir(root):
        raise ConfigError(
            f"bucket {bucket!r} does not exist in Lithops localhost storage ({root})",
            fix="upload videos first (`producer upload DIR PREFIX`) or set --bucket/MOMENTS_BUCKET",
        )
    start = os.path.join(root, os.path.dirname(prefix))
    skip = len(root) + 1  # entry paths all start with root + separator (os.path.relpath is 10x slower)
    for entry in _walk(start):
        key = entry.path[skip:].replace(os.sep, "/")
        if key.startswith(prefix):
            stat = entry.stat(follow_symlinks=False)
            yield StoredObject(key=key, size=stat.st_size, version=str(stat.st_mtime_ns))


def _from_listing(item: dict) -> StoredObject:
    """An S3-style listing entry (``Key``, ``Size``, ``ETag``) as a :class:`StoredObject`."""
    return StoredObject(key=item["Key"], size=int(item["Size"]), version=str(item.get("ETag", "")).strip('"'))


def iter_paginated(client: Any, bucket: str, prefix: str) -> Iterator[StoredObject]:
    from botocore.exceptions import ClientError, EndpointConnectionError

    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            yield from map(_from_listing, page.get("Contents", []))
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            fix = "create it, or set --bucket/MOMENTS_BUCKET to an existing one"
            raise ConfigError(f"bucket {bucket!r} does not exist in object storage", fix=fix) from None
        fix = "check the storage credentials and permissions in the Lithops config"
        raise ConfigError(f"cannot list bucket {bucket!r}: {code or error}", fix=fix) from None
    except EndpointConnectionError as error:
        fix = "check the storage endpoint in the Lithops config (aws_s3: AWS_ENDPOINT_URL_S3)"
        raise ConfigError(f"cannot reach object storage: {error}", fix=fix) from None


def iter_objects(storage: Any, bucket: str, prefix: str) -> Iterator[StoredObject]:
    """Every object under ``prefix`` in ``bucket``, lazily, in key order per page."""
    backend = getattr(storage, "backend", "")
    if backend == "localhost":
        yield from iter_localhost(bucket, prefix)
        return
    client = storage.get_client()
    if hasattr(client, "get_paginator"):
        yield from iter_paginated(client, bucket, prefix)
        return
    yield from map(_from_listing, storage.list_objects(bucket, prefix=prefix))
