"""The state transitions of a video, each one atomic in Redis (Lua), each one idempotent.

enqueued (``pending``) -> published (``outbox``) -> counted (``predictions`` + ``counts``) or
failed (``failed``). A prediction that arrives twice is counted once; a replaced file (new
fingerprint) moves its count from the old top-1 to the new one; an outcome for a version older
than the one last enqueued (``seen``) is stale and dropped, so a late, re-ordered delivery can
never overwrite a newer result.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterator
from typing import Any

import redis

from .errors import ConfigError
from .keys import Keys
from .outcome import VideoOutcome
from .redis_conn import text
from .settings import RECENT_WINDOW_S


class RecordResult(enum.Enum):
    RECORDED = 1
    DUPLICATE = 0
    STALE = -1


# KEYS: seen, outbox, pending. ARGV: video, fingerprint, model id. Shared head of both scripts: drop
# a stale version, and clear this version's outbox entry and its pending entry, the latter only when
# the job was for any model or for this one (a --reclassify waits for the new model's outcome).
# A pending entry is JSON (videos.pending_entry); a bare fingerprint (before namespaces) means any model.
_SETTLE = """
local outboxed = redis.call('HGET', KEYS[2], ARGV[1])
if outboxed and cjson.decode(outboxed)['fingerprint'] == ARGV[2] then redis.call('HDEL', KEYS[2], ARGV[1]) end
local latest = redis.call('HGET', KEYS[1], ARGV[1])
if latest and latest ~= ARGV[2] then return -1 end
local waiting = redis.call('HGET', KEYS[3], ARGV[1])
if waiting then
  local fingerprint, model = waiting, nil
  if string.sub(waiting, 1, 1) == '{' then
    local entry = cjson.decode(waiting)
    fingerprint, model = entry['fingerprint'], entry['model']
  end
  if fingerprint == ARGV[2] and (model == nil or model == cjson.null or model == ARGV[3]) then
    redis.call('HDEL', KEYS[3], ARGV[1])
  end
end
"""

# Shared tail of both scripts: note when this video finished (Redis clock) for throughput, and
# forget finishes older than the window. Leaves the time in ``now`` for the caller.
_NOTE_FINISHED = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZADD', KEYS[#KEYS], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[#KEYS], '-inf', now - tonumber(ARGV[#ARGV]))
"""

# + KEYS: predictions, counts (of the record's model), failed, models, recent.
# ARGV: video, fingerprint, model id, top1, record JSON, recent window.
_RECORD_PREDICTION = (
    _SETTLE
    + """
local current = redis.call('HGET', KEYS[4], ARGV[1])
if current then
  local old = cjson.decode(current)
  if old['fingerprint'] == ARGV[2] then return 0 end
  local old_top1 = old['top5'][1][1]
  if redis.call('HINCRBY', KEYS[5], old_top1, -1) <= 0 then redis.call('HDEL', KEYS[5], old_top1) end
end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[5])
redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
redis.call('HDEL', KEYS[6], ARGV[1])
"""
    + _NOTE_FINISHED
    + """
redis.call('ZADD', KEYS[7], now, ARGV[3])
return 1
"""
)

# + KEYS: predictions (of the failing model), failed, recent. ARGV: video, fingerprint, model id,
# failure JSON, recent window.
_RECORD_FAILURE = (
    _SETTLE
    + """
local current = redis.call('HGET', KEYS[4], ARGV[1])
if current and cjson.decode(current)['fingerprint'] == ARGV[2] then return 0 end
redis.call('HSET', KEYS[5], ARGV[1], ARGV[4])
"""
    + _NOTE_FINISHED
    + """
return 1
"""
)

def _run(client: redis.Redis, keys: Keys, source: str, extra_keys: list[str], args: list[Any]) -> RecordResult:
    script = client.register_script(source)
    return RecordResult(int(script(keys=[keys.seen(), keys.outbox(), keys.pending(), *extra_keys], args=args)))


def record_prediction(client: redis.Redis, keys: Keys, outcome: VideoOutcome) -> RecordResult:
    """Count a counted ``outcome`` once, under its model."""
    model_id = outcome.model_id or ""
    return _run(
        client,
        keys,
        _RECORD_PREDICTION,
        [keys.predictions(model_id), keys.counts(model_id), keys.failed(), keys.models(), keys.recent()],
        [outcome.video, outcome.fingerprint, model_id, outcome.top1, outcome.encode(), RECENT_WINDOW_S],
    )


def record_failure(client: redis.Redis, keys: Keys, outcome: VideoOutcome) -> RecordResult:
    """Mark a video failed with its error unless this very version was counted by the failing model
    (the current one when the outcome does not say)."""
    model_id = outcome.model_id or current_model(client, keys) or ""
    return _run(
        client,
        keys,
        _RECORD_FAILURE,
        [keys.predictions(model_id), keys.failed(), keys.recent()],
        [outcome.video, outcome.fingerprint, model_id, outcome.encode(), RECENT_WINDOW_S],
    )


def record(client: redis.Redis, keys: Keys, outcome: VideoOutcome) -> RecordResult:
    """Record one outcome a consumer published: a prediction or a failure."""
    if outcome.counted:
        return record_prediction(client, keys, outcome)
    return record_failure(client, keys, outcome)


def stage_in_outbox(client: redis.Redis, keys: Keys, outcome: VideoOutcome) -> VideoOutcome:
    """Leave an outcome in the outbox (durable until recorded); returns it stamped with the time."""
    outcome = outcome.published(time.time())
    client.hset(keys.outbox(), outcome.video, outcome.encode())
    return outcome


def unrecorded_outcomes(
    client: redis.Redis, keys: Keys, older_than_s: float, now: float | None = None
) -> Iterator[tuple[str, bytes]]:
    """Outbox entries (video, raw JSON) published more than ``older_than_s`` ago and still not recorded."""
    cutoff = (time.time() if now is None else now) - older_than_s
    for video, raw in client.hscan_iter(keys.outbox(), count=500):
        try:
            published_at = json.loads(raw).get("published_at", 0)
        except (ValueError, AttributeError):
            published_at = 0  # unreadable: handed over for the caller to judge now
        if not isinstance(published_at, int | float) or published_at <= cutoff:
            yield text(video), raw


def drop_from_outbox(client: redis.Redis, keys: Keys, video: str) -> None:
    client.hdel(keys.outbox(), video)


def counts(client: redis.Redis, keys: Keys, model_id: str) -> dict[str, int]:
    return {text(name): int(value) for name, value in client.hgetall(keys.counts(model_id)).items()}


def known_models(client: redis.Redis, keys: Keys) -> list[str]:
    """Every model that has counted a video, the current (most recently used) one first."""
    return [text(model_id) for model_id in client.zrevrange(keys.models(), 0, -1)]


def current_model(client: redis.Redis, keys: Keys) -> str | None:
    latest = client.zrevrange(keys.models(), 0, 0)
    return text(latest[0]) if latest else None


def resolve_model(client: redis.Redis, keys: Keys, requested: str | None) -> str | None:
    """The model id ``requested`` names (in full, or by a prefix that fits only one), else the
    current model; ``None`` when nothing has been counted yet."""
    if requested is None:
        return current_model(client, keys)
    models = known_models(client, keys)
    if requested in models:
        return requested
    matches = [model_id for model_id in models if model_id.startswith(requested)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(models) or "none yet"
    problem = "matches several models" if matches else "is not a model that has counted videos"
    raise ConfigError(f"--model {requested!r} {problem}", fix=f"use one of the model ids: {known}")


def sorted_counts(counts_by_category: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts_by_category.items(), key=lambda item: (-item[1], item[0]))


def pending_count(client: redis.Redis, keys: Keys) -> int:
    return int(client.hlen(keys.pending()))
