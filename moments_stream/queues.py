"""The rq queue of videos: how a video becomes a job (producer, requeue) and where workers pull.

Jobs are serialised as JSON (rq's ``JSONSerializer``), not rq's default pickle: a job is plain
data (a function path and strings), and nothing the project reads back from Redis can run code.
Every rq object that reads jobs (queues, workers, registries, ``Job.fetch``) must be given
:data:`JOB_SERIALIZER`; ``rq info`` needs ``--serializer rq.serializers.JSONSerializer`` to show them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import redis
from rq import Callback, Queue, Retry, worker_registration
from rq.serializers import JSONSerializer

from .redis_conn import text
from .settings import CLASSIFY_JOB, FAILURE_CALLBACK, WORKER_MODEL_FIELD, Settings
from .videos import pending_entry

# Failed jobs stay in rq's failed registry (``rq info``) this long.
FAILURE_TTL_S = 30 * 24 * 3600
JOB_SERIALIZER = JSONSerializer


def video_queue(client: redis.Redis, settings: Settings) -> Queue:
    return Queue(
        settings.queue_name, connection=client, default_timeout=settings.job_timeout_s, serializer=JOB_SERIALIZER
    )


def enqueue_videos(
    client: redis.Redis,
    settings: Settings,
    videos: dict[str, str],
    only_new: bool = False,
    model_id: str | None = None,
) -> int:
    """Mark ``videos`` (video id -> fingerprint) seen and pending and enqueue one job each,
    atomically; returns how many were enqueued.

    ``model_id`` names the model the jobs are for (``producer enqueue --reclassify``): consumers
    running another model hand such a job back, and only that model's outcome clears pending.

    With ``only_new``, videos whose fingerprint is already the one last enqueued are left out, and
    that check is part of the atomic write, so producers enqueueing the same prefix at once enqueue
    each video once: the videos are chosen from a read of the seen hash, their jobs built, and one
    script writes them only if every video's seen entry still gives the same choice, field by field
    (else it writes nothing, and the batch is read and built again). A ``WATCH`` on the whole seen
    hash did the same, but any other write to it (another batch, even of the producer's own writer
    processes) aborted the transaction and threw away the jobs built for it.
    """
    if not videos:
        return 0
    if not only_new:
        with client.pipeline(transaction=True) as pipe:
            queue_jobs(pipe, client, settings, videos, model_id)
            pipe.execute()
        return len(videos)
    seen_key = settings.keys.seen()
    while True:
        chosen = _not_seen(client, seen_key, videos)
        if not chosen:
            return 0
        if _write_if_still_chosen(client, settings, videos, chosen, model_id):
            return len(chosen)


def _not_seen(client: redis.Redis, seen_key: str, videos: dict[str, str]) -> dict[str, str]:
    known = client.hmget(seen_key, list(videos))
    return {
        video: fingerprint
        for (video, fingerprint), seen in zip(videos.items(), known, strict=True)
        if seen is None or text(seen) != fingerprint
    }


# Writes a batch of commands only if the "already seen?" choice they were built for still holds for
# every video of the batch: chosen (to enqueue) when its seen entry is missing or another version,
# left out when it is this very version. Returns 1 when written, 0 (nothing written) when not.
# KEYS: the seen hash, then the key of each command. ARGV: the number of videos, a (video,
# fingerprint, "1" chosen / "0" left out) triple each, then per command its name, the number of its
# arguments after the key, and those arguments.
_WRITE_IF_STILL_CHOSEN = """
local videos = tonumber(ARGV[1])
for i = 2, 1 + 3 * videos, 3 do
  local last = redis.call('HGET', KEYS[1], ARGV[i])
  if (last ~= ARGV[i + 1]) ~= (ARGV[i + 2] == '1') then return 0 end
end
local at = 2 + 3 * videos
for k = 2, #KEYS do
  local count = tonumber(ARGV[at + 1])
  redis.call(ARGV[at], KEYS[k], unpack(ARGV, at + 2, at + 1 + count))
  at = at + 2 + count
end
return 1
"""

# What the commands of a batch (seen, pending, rq's jobs) may be: each writes one key, its first
# argument, and reads nothing. Those of :data:`_MERGED` on one key are sent as one call (in order).
_SINGLE_KEY_WRITES = frozenset({"HSET", "RPUSH", "LPUSH", "SADD", "EXPIRE", "PERSIST"})
_MERGED = frozenset({"HSET", "RPUSH", "SADD"})
# Arguments per call at most (after the key): far below Lua's unpack() limit (8,000), and even,
# so that a field and its value stay together.
_MAX_ARGUMENTS = 2000


def _write_if_still_chosen(
    client: redis.Redis, settings: Settings, videos: dict[str, str], chosen: dict[str, str], model_id: str | None
) -> bool:
    """Write the marks and jobs of ``chosen`` in one script call, unless a video of ``videos`` is
    no longer chosen or left out as it was (another producer enqueued it meanwhile)."""
    recorder = client.pipeline(transaction=False)  # never executed: it collects the batch's commands
    queue_jobs(recorder, client, settings, chosen, model_id)
    commands = [args for args, _options in recorder.command_stack]
    recorder.reset()
    script_keys: list[Any] = [settings.keys.seen()]
    script_args: list[Any] = [len(videos)]
    for video, fingerprint in videos.items():
        script_args += (video, fingerprint, "1" if video in chosen else "0")
    for name, key, arguments in _calls(commands):
        script_keys.append(key)
        script_args += (name, len(arguments), *arguments)
    return bool(client.register_script(_WRITE_IF_STILL_CHOSEN)(keys=script_keys, args=script_args))


def _calls(commands: list[tuple[Any, ...]]) -> Iterator[tuple[str, Any, list[Any]]]:
    """The same writes as ``commands`` in fewer calls: grouped by key (each writes its own key and
    reads none, so only their order on one key matters), a run of HSET, RPUSH or SADD on one key
    as one call of at most :data:`_MAX_ARGUMENTS` (rq writes a job's status, then its hash, then
    pushes its id: three calls a job, one here, and one push a batch)."""
    by_key: dict[Any, list[tuple[str, list[Any]]]] = {}
    for name, key, *arguments in commands:
        name = str(name).upper()
        if name not in _SINGLE_KEY_WRITES:
            raise RuntimeError(f"enqueueing writes {name}, which the enqueue script was not written for")
        calls = by_key.setdefault(key, [])
        if calls and calls[-1][0] == name and name in _MERGED:
            calls[-1][1].extend(arguments)
        else:
            calls.append((name, list(arguments)))
    for key, calls in by_key.items():
        for name, arguments in calls:
            if name not in _MERGED:
                yield name, key, arguments
                continue
            for start in range(0, len(arguments), _MAX_ARGUMENTS):
                yield name, key, arguments[start : start + _MAX_ARGUMENTS]


def queue_jobs(
    pipe: redis.client.Pipeline, client: redis.Redis, settings: Settings, videos: dict[str, str], model_id: str | None
) -> None:
    """Queue on ``pipe`` the seen/pending marks of ``videos`` and their rq jobs (one per
    ``MOMENTS_JOB_BATCH`` videos): in a MULTI, they are written together or not at all."""
    keys = settings.keys
    pipe.hset(keys.seen(), mapping={video: fingerprint for video, fingerprint in videos.items()})
    pipe.hset(keys.pending(), mapping={video: pending_entry(fp, model_id) for video, fp in videos.items()})
    video_queue(client, settings).enqueue_many(_jobs(settings, videos, model_id), pipeline=pipe)


def enqueue_jobs_again(
    client: redis.Redis, settings: Settings, videos: dict[str, str], model_id: str | None, batch: int | None = None
) -> None:
    """More jobs for videos already marked seen and pending (a job handed back by a consumer of
    another model or past its time, a failed batch split into single videos). A job for a version
    replaced meanwhile is harmless: its outcome is stale."""
    video_queue(client, settings).enqueue_many(_jobs(settings, videos, model_id, batch))


def _jobs(settings: Settings, videos: dict[str, str], model_id: str | None, batch: int | None = None) -> list:
    """One job per ``batch`` videos (``MOMENTS_JOB_BATCH`` unless given), each a list of
    [video, fingerprint] pairs and the model it is for."""
    retry = Retry(max=settings.job_retries, interval=settings.retry_intervals_s) if settings.job_retries else None
    pairs = [[video, fingerprint] for video, fingerprint in videos.items()]
    size = batch or settings.job_batch
    chunks = [pairs[start : start + size] for start in range(0, len(pairs), size)]
    return [
        Queue.prepare_data(
            CLASSIFY_JOB,
            args=(chunk, model_id),
            description=_describe(chunk, model_id),
            # MOMENTS_JOB_TIMEOUT is per video: a batch gets as much for each of its videos
            timeout=settings.job_timeout_s * len(chunk),
            result_ttl=0,
            failure_ttl=FAILURE_TTL_S,
            retry=retry,
            on_failure=Callback(FAILURE_CALLBACK),
        )
        for chunk in chunks
    ]


def _describe(pairs: list[list[str]], model_id: str | None) -> str:
    what = pairs[0][0] if len(pairs) == 1 else f"{len(pairs)} videos from {pairs[0][0]}"
    return f"classify {what}" + (f" with {model_id}" if model_id else "")


def job_videos(args: Sequence[Any]) -> tuple[dict[str, str], str | None]:
    """The videos (id -> fingerprint) and the model of a classify job's arguments: a list of
    [video, fingerprint] pairs and the model."""
    pairs, *model = args
    return {video: fingerprint for video, fingerprint in pairs}, (model[0] if model else None)


def live_consumer_models(client: redis.Redis, settings: Settings) -> set[str]:
    """The models the live consumers of the video queue run: each consumer's rq workers name theirs
    in their worker hash (:data:`WORKER_MODEL_FIELD`), which lapses with the worker's lease."""
    worker_keys = sorted(worker_registration.get_keys(video_queue(client, settings)))
    if not worker_keys:
        return set()
    with client.pipeline(transaction=False) as pipe:
        for key in worker_keys:
            pipe.hmget(key, [WORKER_MODEL_FIELD, "death"])
        fields = pipe.execute()
    return {text(model) for model, death in fields if model is not None and death is None}
