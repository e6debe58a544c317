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
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis

from .errors import ConfigError
from .keys import Keys
from .outcome import VideoOutcome, failed, outbox_field, outbox_identity, outbox_prefix
from .redis_conn import text
from .settings import RECENT_WINDOW_S


class RecordResult(enum.Enum):
    RECORDED = 1
    DUPLICATE = 0
    STALE = -1


# One script records a batch of outcomes (an aggregator's whole read), each exactly as alone:
# batching saves round trips and the per-call cost, never a check. Per outcome: clear its own outbox
# entry (keyed by video, version and model; an entry of a release before keyed by the video alone
# when it is this very outcome's); drop a stale version; clear its pending entry, only when the job was
# for any model or for this one (a --reclassify waits for the new model's outcome); then count a
# prediction once (moving a replaced file's count from its old top-1) or mark a failure unless this
# very version was counted: the failure of the version last enqueued retracts an older version's
# prediction and count under every model, so a replaced file whose new version fails is failed
# only, never counted and failed at once. Once per batch: the finishes (Redis clock) for throughput, trimmed to the
# window, and the models that counted.
# KEYS: seen, outbox, pending, failed, models, recent, then a (predictions, counts) pair per model:
# the batch's, and every model that has counted when the batch holds a failure.
# ARGV: recent window, then 9 per outcome: kind ("p" prediction, "f" failure), video, fingerprint,
# model id, index in KEYS of its model's predictions key, top-1 ("" for a failure), record JSON, its
# outbox field, the model id it was published with ("" for none).
# A pending entry is JSON (videos.pending_entry); a bare fingerprint (before namespaces) means any model.
_RECORD_BATCH = """
local function settled(video, fingerprint, model, outbox_field, published_model)
  redis.call('HDEL', KEYS[2], outbox_field)
  local legacy = redis.call('HGET', KEYS[2], video)
  if legacy then
    local readable, entry = pcall(cjson.decode, legacy)
    if readable and type(entry) == 'table' and entry['fingerprint'] == fingerprint
        and (entry['model_id'] or '') == published_model then
      redis.call('HDEL', KEYS[2], video)
    end
  end
  local latest = redis.call('HGET', KEYS[1], video)
  if latest and latest ~= fingerprint then return false end
  local waiting = redis.call('HGET', KEYS[3], video)
  if waiting then
    local pending_fingerprint, pending_model = waiting, nil
    if string.sub(waiting, 1, 1) == '{' then
      local entry = cjson.decode(waiting)
      pending_fingerprint, pending_model = entry['fingerprint'], entry['model']
    end
    if pending_fingerprint == fingerprint and (pending_model == nil or pending_model == cjson.null
        or pending_model == model) then
      redis.call('HDEL', KEYS[3], video)
    end
  end
  return true
end

local function count_prediction(video, fingerprint, predictions, counts, top1, record)
  local current = redis.call('HGET', predictions, video)
  if current then
    local old = cjson.decode(current)
    if old['fingerprint'] == fingerprint then return 0 end
    local old_top1 = old['top5'][1][1]
    if redis.call('HINCRBY', counts, old_top1, -1) <= 0 then redis.call('HDEL', counts, old_top1) end
  end
  redis.call('HSET', predictions, video, record)
  redis.call('HINCRBY', counts, top1, 1)
  redis.call('HDEL', KEYS[4], video)
  return 1
end

local function mark_failed(video, fingerprint, predictions, record)
  local current = redis.call('HGET', predictions, video)
  if current and cjson.decode(current)['fingerprint'] == fingerprint then return 0 end
  for k = 7, #KEYS, 2 do
    local counted = redis.call('HGET', KEYS[k], video)
    if counted then
      local old = cjson.decode(counted)
      if old['fingerprint'] ~= fingerprint then
        local old_top1 = old['top5'][1][1]
        if redis.call('HINCRBY', KEYS[k + 1], old_top1, -1) <= 0 then redis.call('HDEL', KEYS[k + 1], old_top1) end
        redis.call('HDEL', KEYS[k], video)
      end
    end
  end
  redis.call('HSET', KEYS[4], video, record)
  return 1
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local results, finished, counting_models = {}, {}, {}
for i = 2, #ARGV, 9 do
  local kind, video, fingerprint, model = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local index = tonumber(ARGV[i + 4])
  local result = -1
  if settled(video, fingerprint, model, ARGV[i + 7], ARGV[i + 8]) then
    if kind == 'p' then
      result = count_prediction(video, fingerprint, KEYS[index], KEYS[index + 1], ARGV[i + 5], ARGV[i + 6])
      if result == 1 then counting_models[model] = true end
    else
      result = mark_failed(video, fingerprint, KEYS[index], ARGV[i + 6])
    end
    if result == 1 then
      finished[#finished + 1] = now
      finished[#finished + 1] = video
    end
  end
  results[#results + 1] = result
end
if #finished > 0 then
  redis.call('ZADD', KEYS[6], unpack(finished))
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - tonumber(ARGV[1]))
end
for model in pairs(counting_models) do redis.call('ZADD', KEYS[5], now, model) end
return results
"""

# Outcomes one script call takes at most: Lua's unpack() of the finishes (2 values per outcome)
# stays far below its stack limit (8,000), and one call stays short for other clients.
MAX_BATCH = 500


def record_batch(client: redis.Redis, keys: Keys, outcomes: Sequence[VideoOutcome]) -> list[RecordResult]:
    """Record outcomes consumers published (predictions and failures), in order, in one atomic call
    per :data:`MAX_BATCH`; one result each. A failure that names no model is the current model's."""
    script = client.register_script(_RECORD_BATCH)
    recorded: list[RecordResult] = []
    for start in range(0, len(outcomes), MAX_BATCH):
        batch = outcomes[start : start + MAX_BATCH]
        fallback_model = None
        if any(not outcome.counted and not outcome.model_id for outcome in batch):
            fallback_model = current_model(client, keys) or ""
        script_keys = [keys.seen(), keys.outbox(), keys.pending(), keys.failed(), keys.models(), keys.recent()]
        model_index: dict[str, int] = {}
        args: list[Any] = [RECENT_WINDOW_S]
        if any(not outcome.counted for outcome in batch):
            # A failure retracts an older version's prediction under every model that counted it; a
            # prediction counted before the failure's version was enqueued has its model here already.
            for model_id in known_models(client, keys):
                model_index[model_id] = len(script_keys) + 1
                script_keys += [keys.predictions(model_id), keys.counts(model_id)]
        for outcome in batch:
            model_id = outcome.model_id or (fallback_model if not outcome.counted else "") or ""
            if model_id not in model_index:
                model_index[model_id] = len(script_keys) + 1  # Lua indexes from 1
                script_keys += [keys.predictions(model_id), keys.counts(model_id)]
            args += ["p" if outcome.counted else "f", outcome.video, outcome.fingerprint, model_id,
                     model_index[model_id], outcome.top1 if outcome.counted else "", outcome.encode(),
                     outcome.outbox_field, outcome.model_id or ""]
        recorded += [RecordResult(int(code)) for code in script(keys=script_keys, args=args)]
    return recorded


def record(client: redis.Redis, keys: Keys, outcome: VideoOutcome) -> RecordResult:
    """Record one outcome a consumer published: a prediction or a failure."""
    return record_batch(client, keys, [outcome])[0]


def stage_in_outbox(client: redis.Redis, keys: Keys, outcome: VideoOutcome) -> VideoOutcome:
    """Leave an outcome in the outbox (durable until recorded); returns it stamped with the time."""
    outcome = outcome.published(time.time())
    client.hset(keys.outbox(), outcome.outbox_field, outcome.encode())
    return outcome


def unfinished(client: redis.Redis, keys: Keys, videos: dict[str, str], model_id: str | None) -> dict[str, str]:
    """Those of ``videos`` (id -> fingerprint) still waiting for this version's outcome: pending
    for it, and not published by any consumer (for ``model_id``, when the job names one). A
    retried batch classifies only these; a batch that failed on every attempt splits them."""
    if not videos:
        return {}
    names = list(videos)
    with client.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.pending(), names)
        pipe.hmget(keys.outbox(), names)  # entries of a release before, keyed by the video alone
        if model_id is not None:
            pipe.hmget(keys.outbox(), [outbox_field(video, videos[video], model_id) for video in names])
        waiting, legacy, *exact = pipe.execute()
    left = {}
    for index, (video, entry, outboxed) in enumerate(zip(names, waiting, legacy, strict=True)):
        fingerprint = videos[video]
        if entry is None or pending_fingerprint(text(entry)) != fingerprint:
            continue  # recorded, or a newer version was enqueued with its own job
        if outboxed is not None and _published_for(_json_object(outboxed), fingerprint, model_id):
            continue
        if model_id is not None and exact[0][index] is not None:
            continue
        if model_id is None and _published_by_any_model(client, keys, video, fingerprint):
            continue
        left[video] = fingerprint
    return left


def _published_by_any_model(client: redis.Redis, keys: Keys, video: str, fingerprint: str) -> bool:
    """Whether the outbox holds an outcome of this version of ``video``, of any model."""
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", outbox_prefix(video, fingerprint)) + "*"
    return any(True for _ in client.hscan_iter(keys.outbox(), match=pattern, count=1000))


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def pending_fingerprint(entry: str) -> str:
    """The version a pending entry waits for (JSON, or a bare fingerprint before namespaces)."""
    return json.loads(entry)["fingerprint"] if entry.startswith("{") else entry


def _published_for(outboxed: dict[str, Any], fingerprint: str, model_id: str | None) -> bool:
    return outboxed.get("fingerprint") == fingerprint and model_id in (None, outboxed.get("model_id"))


def unrecorded_outcomes(
    client: redis.Redis, keys: Keys, older_than_s: float, now: float | None = None
) -> Iterator[tuple[str, bytes]]:
    """Outbox entries (field, raw JSON) published more than ``older_than_s`` ago and still not
    recorded. The field is :func:`outcome.outbox_field` (the video alone for a release before)."""
    cutoff = (time.time() if now is None else now) - older_than_s
    for name, raw in client.hscan_iter(keys.outbox(), count=500):
        try:
            published_at = json.loads(raw).get("published_at", 0)
        except (ValueError, AttributeError):
            published_at = 0  # unreadable: handed over for the caller to judge now
        if not isinstance(published_at, int | float) or published_at <= cutoff:
            yield text(name), raw


def drop_from_outbox(client: redis.Redis, keys: Keys, field: str) -> None:
    """Remove one outbox entry, named by its field (:func:`unrecorded_outcomes`)."""
    client.hdel(keys.outbox(), field)


def fail_unreadable_outbox_entry(client: redis.Redis, keys: Keys, field: str, reason: str) -> RecordResult | None:
    """An outbox entry that cannot be read (it went to the dead letters): its video is recorded
    failed with ``reason`` when it is still pending for the version the entry is for (named by the
    field, or, for an entry of the release before, keyed by the video alone, the version pending),
    so it never stays pending with nothing to record it; the entry leaves the outbox either way.
    Returns what the ledger made of the failure, ``None`` when there was nothing to record."""
    identity = outbox_identity(field)
    video, fingerprint, model_id = identity if identity is not None else (field, None, None)
    waiting = client.hget(keys.pending(), video)
    result = None
    if waiting is not None and (fingerprint is None or pending_fingerprint(text(waiting)) == fingerprint):
        if fingerprint is None:
            fingerprint = pending_fingerprint(text(waiting))
        error = f"its outcome could not be read ({reason}); `consumer requeue` classifies it again"
        failure = failed(video, fingerprint, error, model_id=model_id or None)
        result = record(client, keys, failure)  # clears the entry itself when the field is the failure's
    client.hdel(keys.outbox(), field)
    return result


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
