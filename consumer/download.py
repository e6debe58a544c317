"""Downloading a job's video: untrusted keys refused before any read, sizes capped, and retries
with back-off while storage is unreachable (an outage never uses up a video's attempts)."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from lithops.constants import LITHOPS_TEMP_DIR
from lithops.storage.utils import StorageNoSuchKeyError

from moments_stream.backoff import Backoff
from moments_stream.errors import StorageUnavailableError, VideoDecodeError

from .context import WorkerContext


def safe_local_name(key: str) -> str:
    """A file name for ``key`` that cannot escape the temporary directory it is joined to."""
    base = key.rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "video"
    return cleaned[-100:]


def storage_outage_errors() -> tuple[type[BaseException], ...]:
    """What a storage client raises when the store cannot be reached (not when an object is bad)."""
    errors: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
        from urllib3.exceptions import HTTPError

        errors += (BotoConnectionError, HTTPClientError, HTTPError)
    except ImportError:  # a storage backend without botocore
        pass
    return errors


def download(context: WorkerContext, bucket: str, key: str, directory: str) -> str:
    """:func:`download_once`, retried with back-off while storage is unreachable, for up to
    ``MOMENTS_STORAGE_OUTAGE`` seconds: an outage is not the video's fault, so it must not use up
    the video's attempts (the worker's lease stays alive meanwhile)."""
    deadline = time.monotonic() + context.settings.storage_outage_s
    backoff = Backoff(first_s=1, max_s=15, event="storage_unreachable_retrying")
    unreachable = storage_outage_errors()
    while True:
        try:
            return download_once(context, bucket, key, directory)
        except unreachable as error:
            if time.monotonic() + backoff.delay_s >= deadline:
                raise StorageUnavailableError(
                    f"storage unreachable for {context.settings.storage_outage_s} s while downloading {key!r}: {error}",
                    fix="check the storage endpoint and the network; the video is retried (MOMENTS_STORAGE_OUTAGE)",
                ) from None
            backoff.wait(error, video=key)


def unsafe_key_reason(bucket: str, key: str) -> str | None:
    """Why ``bucket``/``key`` must not be read, or ``None``: a job names them, and a job is Redis
    content, so untrusted. Lithops' localhost storage joins them to a directory, so an absolute
    key (``/etc/passwd``) or a ``..`` segment (``../../x``) would read a file of the host."""
    if bucket in ("", ".", "..") or "/" in bucket or "\\" in bucket:
        return f"the bucket name {bucket!r} is not a bucket"
    if key.startswith(("/", "\\")) or os.path.isabs(key):
        return "the key is an absolute path"
    if ".." in re.split(r"[/\\]", key):
        return "the key has a '..' path segment"
    if "\0" in key:
        return "the key holds a NUL byte"
    return None


def _too_large(key: str, size: int, limit: int) -> VideoDecodeError:
    return VideoDecodeError(key, f"{size:,} bytes, larger than the {limit:,}-byte limit (MOMENTS_MAX_VIDEO_BYTES)")


def _unreadable(key: str, error: OSError) -> VideoDecodeError:
    """A stored object the consumer may not read (permissions): named as such, not as missing."""
    return VideoDecodeError(key, f"storage refused to read it ({type(error).__name__}: {error.strerror or error})")


def download_once(context: WorkerContext, bucket: str, key: str, directory: str) -> str:
    """Stream ``key`` of ``bucket`` into ``directory``; returns the local path.

    A key that could name a host file is refused before any read (:func:`unsafe_key_reason`).
    The object's size is checked against ``MOMENTS_MAX_VIDEO_BYTES`` before a byte of it is read
    (a stat on localhost, a HEAD elsewhere), and again while streaming (it may be replaced
    between the two). Localhost storage is read here in chunks, not through Lithops, whose
    ``get_object`` reads the whole file into memory and reports every error as a missing key."""
    reason = unsafe_key_reason(bucket, key)
    if reason is not None:
        raise VideoDecodeError(key, f"refused, never read: {reason}")
    limit = context.settings.max_video_bytes
    path = os.path.join(directory, safe_local_name(key))
    if getattr(context.storage, "backend", None) == "localhost":
        return _copy_localhost(bucket, key, path, limit)
    head = getattr(context.storage, "head_object", None)  # every Lithops Storage has it
    try:
        if head is not None:
            metadata = head(bucket, key)
            size = metadata.get("content-length") if isinstance(metadata, dict) else None
            if size is not None and int(size) > limit:
                raise _too_large(key, int(size), limit)
        body = context.storage.get_object(bucket, key, stream=True)
    except StorageNoSuchKeyError:
        raise VideoDecodeError(key, "the object no longer exists in storage (deleted after enqueue)") from None
    with open(path, "wb") as out:
        _copy_capped(body, out, key, limit)
    return path


def _copy_capped(body: Any, out: Any, key: str, limit: int) -> None:
    written = 0
    while chunk := body.read(1 << 20):
        written += len(chunk)
        if written > limit:
            raise VideoDecodeError(key, f"larger than the {limit:,}-byte limit (MOMENTS_MAX_VIDEO_BYTES)")
        out.write(chunk)


def _copy_localhost(bucket: str, key: str, path: str, limit: int) -> str:
    """Lithops localhost storage's object (a file under its bucket directory) copied in chunks,
    its size checked first; each error reported as what it is."""
    root = os.path.realpath(os.path.join(LITHOPS_TEMP_DIR, bucket))
    source = os.path.join(root, key)
    if not os.path.realpath(source).startswith(root + os.sep):  # a symbolic link out of the bucket
        raise VideoDecodeError(key, "refused, never read: the object links outside its bucket")
    try:
        body = open(source, "rb")  # noqa: SIM115 (closed below; the size is checked before reading)
    except (FileNotFoundError, NotADirectoryError):
        raise VideoDecodeError(key, "the object no longer exists in storage (deleted after enqueue)") from None
    except IsADirectoryError:
        raise VideoDecodeError(key, "the key names a folder in storage, not an object") from None
    except PermissionError as error:
        raise _unreadable(key, error) from None
    with body:
        size = os.fstat(body.fileno()).st_size
        if size > limit:
            raise _too_large(key, size, limit)
        with open(path, "wb") as out:
            _copy_capped(body, out, key, limit)
    return path
