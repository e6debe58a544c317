"""Weights and category lists: local paths or URLs, downloaded once into a cache.

Downloads go to a temporary file beside the target and are renamed into place only after
the size (and, when known, SHA-256) check passes, so a cut-off download never poisons the
cache. Offline, the error names the URL to fetch by hand and where to put the file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from moments_stream.errors import AssetError

_CHUNK = 1 << 20


def is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https")


def cache_path_for(url: str, cache_dir: Path) -> Path:
    """Where ``url`` is cached: its file name under a directory named by the URL's hash.

    The hash keeps two URLs with the same file name apart (e.g. two category lists).
    """
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return cache_dir / digest / name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, url: str, expected_size: int | None, expected_sha256: str | None) -> None:
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise AssetError(
            f"{url} gave {size:,} bytes, expected {expected_size:,}",
            fix="the download was cut off or the server sent something else; retry, or fetch the file by hand",
        )
    if expected_sha256 is not None and sha256_of(path) != expected_sha256.lower():
        raise AssetError(
            f"{url} does not have the expected SHA-256 {expected_sha256}",
            fix="retry the download; if it persists, check MOMENTS_WEIGHTS_SHA256",
        )


def download(
    url: str,
    target: Path,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> Path:
    """Download ``url`` to ``target`` atomically, verifying size and hash."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial_name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    partial = Path(partial_name)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
            total = int(response.headers.get("Content-Length") or 0) or expected_size
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress, leave=False
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        _verify(partial, url, expected_size, expected_sha256)
        partial.replace(target)
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        reason = getattr(error, "reason", None) or error
        raise AssetError(
            f"cannot download {url}: {reason}",
            fix=f"download it by hand (`curl -L -o {target} {url}`) or pass a local file "
            "(--weights/--categories or MOMENTS_WEIGHTS/MOMENTS_CATEGORIES)",
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def resolve(
    source: str,
    cache_dir: Path,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """A local file for ``source``: the path itself, or the cached download of a URL."""
    if not is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise AssetError(f"file {str(path)!r} does not exist", fix="pass an existing path or an http(s) URL")
        return path
    cached = cache_path_for(source, cache_dir)
    if cached.is_file():
        size = cached.stat().st_size
        if expected_size is None or size == expected_size:
            return cached
        cached.unlink()
    return download(source, cached, expected_size, expected_sha256, progress=progress)


def parse_categories(text: str) -> list[str]:
    """Category names in model-output order, one per line (the release has no final newline)."""
    names = [line.strip() for line in text.splitlines()]
    return [name for name in names if name]


def load_categories(path: Path) -> list[str]:
    try:
        names = parse_categories(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise AssetError(f"cannot read categories {str(path)!r}: {error}", fix="pass a UTF-8 text file") from None
    if not names:
        raise AssetError(f"category list {str(path)!r} is empty", fix="pass category_momentsv1.txt")
    if len(set(names)) != len(names):
        raise AssetError(f"category list {str(path)!r} has duplicate names", fix="pass the release's list")
    return names
