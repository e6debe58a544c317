"""How a video is named everywhere in Redis: by its bucket and its key together.

Two buckets may hold the same key, so neither alone identifies a video. A video id is
``BUCKET/KEY``: bucket names never contain ``/`` (S3's rules, and a directory name on Lithops
localhost), so the first ``/`` splits an id back into the two.
"""

from __future__ import annotations

import json


def video_id(bucket: str, key: str) -> str:
    return f"{bucket}/{key}"


def split_video_id(video: str) -> tuple[str, str]:
    """``(bucket, key)`` of a video id."""
    bucket, separator, key = video.partition("/")
    if not separator or not bucket or not key:
        raise ValueError(f"{video!r} is not a video id (BUCKET/KEY)")
    return bucket, key


def pending_entry(fingerprint: str, model_id: str | None) -> str:
    """What ``pending`` holds for a video: the version enqueued and the model the job is for
    (``None``: whichever model the consumers run); only that model's outcome clears it."""
    return json.dumps({"fingerprint": fingerprint, "model": model_id})
