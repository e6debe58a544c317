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
# batching saves round trips and the per-call cost, never a check. Per outcome:
# - clear its own outbox entry (keyed by video, version and model), and drop a stale version;
# - answer the pending job, clearing its entry: a prediction answers a job for any model or for its
#   own; a failure only the job it names (``for_model``, none for any model), so a late failure of
#   an earlier job leaves a --reclassify waiting for its own outcome;
# - a prediction: count it once, moving a replaced file's count from its old top-1, and end a
#   failure it settles (an older version's, a job for any model's, or this model's own), never a
#   failure of a --reclassify for another model, which that model's job must still answer;
# - a failure: unless this very version was counted by its model (or, for a job for any model, by
#   any model: the job was answered), or it answers no pending job while the video is failed for
#   another job already (a late failure never hides the answer of the job after it), mark it
#   failed; the failure of the version last enqueued
#   retracts an older version's prediction and count under every model, so a replaced file whose
#   new version fails is failed only, never counted and failed at once.
# Every count change updates the model's ranking (sorted set) beside its counts, and the live pair
# (counts and ranking of the current model, for redis-cli) when the model is the current one. The
# current model changes to a model that counts for the first time, or that counts a video its
# --reclassify was for; the live pair is then rebuilt from that model's own, so it never mixes two.
# Once per batch: the finishes (Redis clock) for throughput, trimmed to the window, and the models
# that counted.
# KEYS: seen, outbox, pending, failed, models, recent, current model, live counts, live ranking,
# then a (predictions, counts, ranking) triple per model: the batch's, and every model that has
# counted when the batch holds a failure.
# ARGV: recent window, the number of triples, their model ids (in KEYS order), then 9 per outcome:
# kind ("p" prediction, "f" failure), video, fingerprint, model id, index in KEYS of its model's
# triple, top-1 ("" for a failure), record JSON, its outbox field, the model its job was for ("" for
# any).
# A pending entry is JSON (videos.pending_entry); one that is not answers no outcome and stays
# (`aggregator check` lists it: pending_entry_unreadable).
_RECORD_BATCH = """
local TRIPLES = 10
local triple_models = {}
local triples = tonumber(ARGV[2])
for t = 1, triples do triple_models[TRIPLES + (t - 1) * 3] = ARGV[2 + t] end
local live_model = redis.call('GET', KEYS[7])

local function absent(value) return value == nil or value == false or value == cjson.null or value == '' end

local function rank(counts, ranking, category, total)
  if total <= 0 then
    redis.call('HDEL', counts, category)
    redis.call('ZREM', ranking, category)
  else
    redis.call('ZADD', ranking, total, category)
  end
end

local function bump(triple, category, delta)
  rank(KEYS[triple + 1], KEYS[triple + 2], category, redis.call('HINCRBY', KEYS[triple + 1], category, delta))
  if triple_models[triple] == live_model then
    rank(KEYS[8], KEYS[9], category, redis.call('HINCRBY', KEYS[8], category, delta))
  end
end

local function make_current(triple)
  live_model = triple_models[triple]
  redis.call('SET', KEYS[7], live_model)
  redis.call('DEL', KEYS[8], KEYS[9])
  local counts = redis.call('HGETALL', KEYS[triple + 1])
  if #counts > 0 then redis.call('HSET', KEYS[8], unpack(counts)) end
  redis.call('ZUNIONSTORE', KEYS[9], 1, KEYS[triple + 2])
end

-- Returns false for a stale version; else true, whether it answered the pending job, and the model
-- that job was for ('' for any).
local function settled(kind, video, fingerprint, model, for_model, outbox_field)
  redis.call('HDEL', KEYS[2], outbox_field)
  local latest = redis.call('HGET', KEYS[1], video)
  if latest and latest ~= fingerprint then return false end
  local waiting = redis.call('HGET', KEYS[3], video)
  if not waiting then return true, false, '' end
  local readable, entry = pcall(cjson.decode, waiting)
  if not readable or type(entry) ~= 'table' or entry['fingerprint'] ~= fingerprint then return true, false, '' end
  local pending_model = ''
  if not absent(entry['model']) then pending_model = entry['model'] end
  local answers
  if kind == 'p' then
    answers = pending_model == '' or pending_model == model
  else
    answers = for_model == pending_model and (pending_model == '' or pending_model == model)
  end
  if answers then redis.call('HDEL', KEYS[3], video) end
  return true, answers, pending_model
end

local counting_models = {}

local function count_prediction(video, fingerprint, model, triple, top1, record, answers_for)
  if live_model ~= model and (not live_model or answers_for == model
      or not (counting_models[model] or redis.call('ZSCORE', KEYS[5], model))) then
    make_current(triple)
  end
  local current = redis.call('HGET', KEYS[triple], video)
  if current then
    local old = cjson.decode(current)
    if old['fingerprint'] == fingerprint then return 0 end
    bump(triple, old['top5'][1][1], -1)
  end
  redis.call('HSET', KEYS[triple], video, record)
  bump(triple, top1, 1)
  local failure = redis.call('HGET', KEYS[4], video)
  if failure then
    local readable, entry = pcall(cjson.decode, failure)
    if not readable or type(entry) ~= 'table' or entry['fingerprint'] ~= fingerprint
        or absent(entry['for_model']) or entry['for_model'] == model then
      redis.call('HDEL', KEYS[4], video)
    end
  end
  return 1
end

local function counted_by(predictions, video, fingerprint)
  local current = redis.call('HGET', predictions, video)
  return current and cjson.decode(current)['fingerprint'] == fingerprint
end

local function mark_failed(video, fingerprint, triple, for_model, record, answered)
  if counted_by(KEYS[triple], video, fingerprint) then return 0 end
  if not answered then
    local existing = redis.call('HGET', KEYS[4], video)
    if existing then
      local readable, entry = pcall(cjson.decode, existing)
      if readable and type(entry) == 'table' and entry['fingerprint'] == fingerprint
          and (absent(entry['for_model']) and '' or entry['for_model']) ~= for_model then
        return 0
      end
    end
  end
  local first = TRIPLES
  local last = TRIPLES + (triples - 1) * 3
  if for_model == '' then
    for k = first, last, 3 do
      if counted_by(KEYS[k], video, fingerprint) then return 0 end
    end
  end
  for k = first, last, 3 do
    local counted = redis.call('HGET', KEYS[k], video)
    if counted then
      local old = cjson.decode(counted)
      if old['fingerprint'] ~= fingerprint then
        bump(k, old['top5'][1][1], -1)
        redis.call('HDEL', KEYS[k], video)
      end
    end
  end
  redis.call('HSET', KEYS[4], video, record)
  return 1
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local results, finished = {}, {}
for i = 3 + triples, #ARGV, 9 do
  local kind, video, fingerprint, model = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local triple, for_model = tonumber(ARGV[i + 4]), ARGV[i + 8]
  local result = -1
  local fresh, answered, job_model = settled(kind, video, fingerprint, model, for_model, ARGV[i + 7])
  if fresh then
    if kind == 'p' then
      result = count_prediction(video, fingerprint, model, triple, ARGV[i + 5], ARGV[i + 6],
                                answered and job_model or '')
      if result == 1 then counting_models[model] = true end
    else
      result = mark_failed(video, fingerprint, triple, for_model, ARGV[i + 6], answered)
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
        # A failure retracts an older version's prediction under every model that counted it (a
        # prediction counted before the failure's version was enqueued has its model here already);
        # a failure that names no model is the current model's.
        current, models = _current_and_known(client, keys) if any(not o.counted for o in batch) else (None, [])
        batch_models = [outcome.model_id or ("" if outcome.counted else current or "") for outcome in batch]
        script_keys = [keys.seen(), keys.outbox(), keys.pending(), keys.failed(), keys.models(), keys.recent(),
                       keys.current_model(), keys.live_counts(), keys.live_ranking()]
        triple_of: dict[str, int] = {}  # model id -> index in KEYS of its triple (Lua indexes from 1)
        for model_id in (*models, *batch_models):
            if model_id not in triple_of:
                triple_of[model_id] = len(script_keys) + 1
                script_keys += [keys.predictions(model_id), keys.counts(model_id), keys.ranking(model_id)]
        per_outcome: list[Any] = []
        for outcome, model_id in zip(batch, batch_models, strict=True):
            per_outcome += ["p" if outcome.counted else "f", outcome.video, outcome.fingerprint, model_id,
                            triple_of[model_id], outcome.top1 if outcome.counted else "", outcome.encode(),
                            outcome.outbox_field, outcome.for_model or ""]
        args: list[Any] = [RECENT_WINDOW_S, len(triple_of), *triple_of, *per_outcome]
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
        if model_id is not None:
            pipe.hmget(keys.outbox(), [outbox_field(video, videos[video], model_id) for video in names])
        waiting, *exact = pipe.execute()
    left = {}
    for index, (video, entry) in enumerate(zip(names, waiting, strict=True)):
        fingerprint = videos[video]
        if entry is None or pending_fingerprint(text(entry)) != fingerprint:
            continue  # recorded, or a newer version was enqueued with its own job
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


def pending_fingerprint(entry: str) -> str | None:
    """The version a pending entry (:func:`videos.pending_entry`) waits for; ``None`` for an entry
    that is not one, which waits for no outcome (``aggregator check`` lists it)."""
    try:
        document = json.loads(entry)
    except ValueError:
        return None
    fingerprint = document.get("fingerprint") if isinstance(document, dict) else None
    return fingerprint if isinstance(fingerprint, str) else None


def pending_model(entry: str) -> str | None:
    """The model a pending entry's job is for (``None``: any model); the entry is one
    (:func:`pending_fingerprint` read it)."""
    model: str | None = json.loads(entry).get("model")
    return model


def unrecorded_outcomes(
    client: redis.Redis, keys: Keys, older_than_s: float, now: float | None = None
) -> Iterator[tuple[str, bytes]]:
    """Outbox entries (field, raw JSON) published more than ``older_than_s`` ago and still not
    recorded. The field is :func:`outcome.outbox_field`."""
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
    field, :func:`outcome.outbox_field`), so it never stays pending with nothing to record it; the
    entry leaves the outbox either way (a field that is no ``outbox_field`` names no video).
    Returns what the ledger made of the failure, ``None`` when there was nothing to record."""
    identity = outbox_identity(field)
    result = None
    if identity is not None:
        video, fingerprint, model_id = identity
        waiting = client.hget(keys.pending(), video)
        if waiting is not None and pending_fingerprint(text(waiting)) == fingerprint:
            error = f"its outcome could not be read ({reason}); `consumer requeue` classifies it again"
            for_model = pending_model(text(waiting))
            failure = failed(video, fingerprint, error, model_id=model_id or for_model, for_model=for_model)
            result = record(client, keys, failure)  # clears the entry itself when the field is the failure's
    client.hdel(keys.outbox(), field)
    return result


def counts(client: redis.Redis, keys: Keys, model_id: str) -> dict[str, int]:
    return {text(name): int(value) for name, value in client.hgetall(keys.counts(model_id)).items()}


def known_models(client: redis.Redis, keys: Keys) -> list[str]:
    """Every model that has counted a video: the current one first, then the most recently used."""
    return _current_and_known(client, keys)[1]


def _current_and_known(client: redis.Redis, keys: Keys) -> tuple[str | None, list[str]]:
    """The current model (:func:`current_model`) and :func:`known_models`, in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        pipe.get(keys.current_model())
        pipe.zrevrange(keys.models(), 0, -1)
        raw_current, used = pipe.execute()
    current = text(raw_current) if raw_current is not None else None
    models = [text(model_id) for model_id in used]
    if current in models:
        models.remove(current)
        models.insert(0, current)
    return current, models


def current_model(client: redis.Redis, keys: Keys) -> str | None:
    """The model whose counts the live table (:meth:`Keys.live_counts`) holds: the newest to start
    counting, or the one a ``--reclassify`` was for once it counts; ``None`` before any count."""
    current = client.get(keys.current_model())
    return text(current) if current is not None else None


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
