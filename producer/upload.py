"""Copying a local folder of videos into object storage, skipping files already there unchanged."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lithops.constants import LITHOPS_TEMP_DIR
from lithops.storage.utils import StorageNoSuchKeyError

from moments_stream.errors import ConfigError

from .listing import is_video_key


@dataclass
class UploadReport:
    uploaded: int = 0
    unchanged: int = 0

    def __str__(self) -> str:
        return f"uploaded {self.uploaded}, unchanged {self.unchanged}"


def md5_of(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def local_videos(directory: Path) -> Iterator[tuple[Path, str]]:
    """(path, key suffix) of every video under ``directory``, in a stable order."""
    if not directory.is_dir():
        raise ConfigError(f"{str(directory)!r} is not a directory", fix="pass a folder that holds video files")
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            relative = path.relative_to(directory).as_posix()
            if is_video_key(relative):
                yield path, relative


def same_content(storage: Any, bucket: str, key: str, path: Path) -> bool:
    try:
        head = storage.head_object(bucket, key)
    except StorageNoSuchKeyError:
        return False
    size = int(head.get("content-length", head.get("ContentLength", -1)))
    if size != path.stat().st_size:
        return False
    etag = str(head.get("ETag", head.get("etag", ""))).strip('"')
    if getattr(storage, "backend", "") == "localhost":
        etag = md5_of(os.path.join(LITHOPS_TEMP_DIR, bucket, key))
    return bool(etag) and "-" not in etag and etag == md5_of(str(path))


def upload_directory(storage: Any, bucket: str, directory: Path, prefix: str) -> UploadReport:
    report = UploadReport()
    if getattr(storage, "backend", "") == "localhost":
        os.makedirs(os.path.join(LITHOPS_TEMP_DIR, bucket), exist_ok=True)
    for path, relative in local_videos(directory):
        key = prefix + relative
        if same_content(storage, bucket, key, path):
            report.unchanged += 1
            continue
        storage.upload_file(str(path), bucket, key)
        report.uploaded += 1
    return report
