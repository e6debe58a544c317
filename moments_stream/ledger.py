"""The state transitions of a video, each one atomic in Redis (Lua), each one idempotent.

enqueued (``pending``) -> counted (``predictions`` + ``counts``) or failed (``failed``).
A prediction that arrives twice is counted once; a replaced file (new fingerprint) moves its
count from the old top-1 to the new one.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from . import keys

_RECORD_PREDICTION = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local old = cjson.decode(current)
  if old['fingerprint'] == ARGV[2] then
    if redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[3], ARGV[1]) end
    return 0
  end
  local old_top1 = old['top5'][1][1]
  if redis.call('HINCRBY', KEYS[2], old_top1, -1) <= 0 then redis.call('HDEL', KEYS[2], old_top1) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('HDEL', KEYS[4], ARGV[1])
if redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[3], ARGV[1]) end
return 1
"""

_RECORD_FAILURE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and cjson.decode(current)['fingerprint'] == ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[3], ARGV[1]) end
return 1
"""


def record_prediction(client: redis.Redis, record: dict[str, Any]) -> bool:
    """Count ``record`` (a prediction dict with video, fingerprint, top5); False if already counted."""
    script = client.register_script(_RECORD_PREDICTION)
    return bool(
        script(
            keys=[keys.predictions(), keys.counts(), keys.pending(), keys.failed()],
            args=[record["video"], record["fingerprint"], record["top5"][0][0], json.dumps(record)],
        )
    )


def record_failure(client: redis.Redis, video: str, fingerprint: str, error: str, attempts: int = 1) -> bool:
    """Mark ``video`` failed with ``error`` unless this very version was already counted."""
    script = client.register_script(_RECORD_FAILURE)
    payload = json.dumps({"video": video, "fingerprint": fingerprint, "error": error, "attempts": attempts})
    return bool(script(keys=[keys.predictions(), keys.failed(), keys.pending()], args=[video, fingerprint, payload]))


def counts(client: redis.Redis) -> dict[str, int]:
    return {name.decode(): int(value) for name, value in client.hgetall(keys.counts()).items()}


def sorted_counts(counts_by_category: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts_by_category.items(), key=lambda item: (-item[1], item[0]))


def pending_count(client: redis.Redis) -> int:
    return int(client.hlen(keys.pending()))
