"""``aggregator check``: audit one namespace and list every invariant that does not hold.

Read-only (reads, and rq job hashes fetched by id). Each problem is one dict with ``invariant`` (a
name below) and the fields that locate it:

- ``pending_without_job``: a pending video that no job holds (queued, being dequeued, in flight,
  scheduled for a retry, rq's failed registry) and whose outcome is not in the outbox, seen so in two
  snapshots; ``without_job_since`` is when the reconciler first saw it so (Redis clock), if it has.
- ``pending_only_in_failed_registry``: a pending video whose only job is in rq's failed registry
  (its failure was never recorded: the reconciler leaves such a video alone; ``consumer requeue``
  does not see it either, as it is not failed).
- ``pending_entry_unreadable``: a pending entry that is not a JSON entry (``videos.pending_entry``).
- ``counted_and_failed``: a video with a prediction of a model and a failure for that model (a
  failure that names no model: for any).
- ``counts_differ_from_predictions``: a category whose count is not the number of the model's
  predictions with it as top-1.
- ``outbox_not_recorded``: an outbox entry published longer than ``MOMENTS_RECOVER_AFTER`` ago.
- ``dead_letter_video_not_failed``: a dead letter that names a video which is neither failed nor counted.
- ``jobs_for_a_model_no_consumer_runs``: jobs for a model (``--reclassify``) that no live consumer runs.
"""

from __future__ import annotations

import collections
import json
from typing import Any

import redis

from moments_stream import ledger
from moments_stream.queues import live_consumer_models
from moments_stream.redis_conn import text
from moments_stream.settings import Settings

from .reconcile import PendingEntry, Snapshot, take_snapshot
from .status import redis_now

INVARIANTS = (
    "pending_without_job",
    "pending_only_in_failed_registry",
    "pending_entry_unreadable",
    "counted_and_failed",
    "counts_differ_from_predictions",
    "ranking_differs_from_counts",
    "live_counts_differ_from_current_model",
    "outbox_not_recorded",
    "dead_letter_video_not_failed",
    "jobs_for_a_model_no_consumer_runs",
)


def _json(raw: bytes | str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def pending_problems(client: redis.Redis, settings: Settings) -> tuple[list[dict[str, Any]], dict[str | None, int]]:
    """Pending videos without a job (in two snapshots, as the reconciler), unreadable pending
    entries; and the videos the jobs hold per model."""
    first = take_snapshot(client, settings)
    problems: list[dict[str, Any]] = [{"invariant": "pending_entry_unreadable", "video": video}
                                      for video in first.unreadable]
    orphans = first.without_job()
    in_failed_only = _only_in_failed_registry(first)
    if orphans or in_failed_only:
        second = take_snapshot(client, settings)
        again, failed_again = second.without_job(), _only_in_failed_registry(second)
        stamps = client.hmget(settings.keys.reconcile_orphans(), list(orphans)) if orphans else []
        for (video, entry), stamp in zip(orphans.items(), stamps, strict=True):
            if again.get(video) == entry:
                problems.append({"invariant": "pending_without_job", "video": video, "fingerprint": entry.fingerprint,
                                 "model": entry.model, "without_job_since": float(stamp) if stamp else None})
        for video, entry in in_failed_only.items():
            if failed_again.get(video) == entry:
                problems.append({"invariant": "pending_only_in_failed_registry", "video": video,
                                 "fingerprint": entry.fingerprint, "model": entry.model})
    return problems, first.job_models


def _only_in_failed_registry(snapshot: Snapshot) -> dict[str, PendingEntry]:
    others = snapshot.queued | snapshot.in_flight | snapshot.scheduled | snapshot.outbox
    return {video: entry for video, entry in snapshot.pending.items()
            if video in snapshot.failed_registry and video not in others}


def ledger_problems(client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """Counted and failed at once; counts that are not the histogram of the predictions' top-1."""
    keys = settings.keys
    problems: list[dict[str, Any]] = []
    failures = {text(video): _json(raw) or {} for video, raw in client.hscan_iter(keys.failed(), count=500)}
    for model in ledger.known_models(client, keys):
        histogram: collections.Counter[str] = collections.Counter()
        for video, raw in client.hscan_iter(keys.predictions(model), count=500):
            record = _json(raw) or {}
            top5 = record.get("top5") or [[None]]
            histogram[str(top5[0][0])] += 1
            failure = failures.get(text(video))
            # A model's own failure, or a job for any model's: the count answered that job already.
            if failure is not None and (failure.get("model_id") in (None, model) or (
                    failure.get("for_model") is None and failure.get("fingerprint") == record.get("fingerprint"))):
                problems.append({"invariant": "counted_and_failed", "video": text(video), "model": model,
                                 "counted_fingerprint": record.get("fingerprint"),
                                 "failed_fingerprint": failure.get("fingerprint"), "error": failure.get("error")})
        counts = ledger.counts(client, keys, model)
        for category in sorted(set(counts) | set(histogram)):
            if counts.get(category, 0) != histogram.get(category, 0):
                problems.append({"invariant": "counts_differ_from_predictions", "model": model, "category": category,
                                 "count": counts.get(category, 0), "predictions": histogram.get(category, 0)})
        problems += _ranking_problems(counts, _ranking(client, keys.ranking(model)), model)
    problems += live_table_problems(client, settings)
    return problems


def _ranking(client: redis.Redis, key: str) -> dict[str, int]:
    ranked: list[tuple[bytes, float]] = client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
    return {text(category): int(score) for category, score in ranked}


def _ranking_problems(counts: dict[str, int], ranking: dict[str, int], model: str | None) -> list[dict[str, Any]]:
    return [{"invariant": "ranking_differs_from_counts", "model": model, "category": category,
             "count": counts.get(category, 0), "ranked": ranking.get(category, 0)}
            for category in sorted(set(counts) | set(ranking)) if counts.get(category, 0) != ranking.get(category, 0)]


def live_table_problems(client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """The live table (``moments:counts``, ``moments:ranking``) against the current model's own."""
    keys = settings.keys
    current = ledger.current_model(client, keys)
    expected = ledger.counts(client, keys, current) if current is not None else {}
    live = {text(category): int(value) for category, value in client.hgetall(keys.live_counts()).items()}
    problems: list[dict[str, Any]] = [
        {"invariant": "live_counts_differ_from_current_model", "model": current, "category": category,
         "live": live.get(category, 0), "count": expected.get(category, 0)}
        for category in sorted(set(live) | set(expected)) if live.get(category, 0) != expected.get(category, 0)]
    return problems + _ranking_problems(live, _ranking(client, keys.live_ranking()), None)


def outbox_problems(client: redis.Redis, settings: Settings, now: float) -> list[dict[str, Any]]:
    """Outbox entries published longer than ``MOMENTS_RECOVER_AFTER`` ago (or unreadable)."""
    problems = []
    for entry, raw in ledger.unrecorded_outcomes(client, settings.keys, settings.recover_after_s, now=now):
        document = _json(raw)
        published_at = document.get("published_at") if isinstance(document, dict) else None
        video = document.get("video") if isinstance(document, dict) else None
        age = round(now - published_at, 1) if isinstance(published_at, int | float) else None
        problems.append({"invariant": "outbox_not_recorded", "entry": entry, "video": video or entry, "age_s": age,
                         "recover_after_s": settings.recover_after_s})
    return problems


def _dead_letter_video(letter: Any) -> str | None:
    if not isinstance(letter, dict):
        return None
    if isinstance(letter.get("video"), str):
        return letter["video"]
    excerpt = _json(letter.get("excerpt")) if isinstance(letter.get("excerpt"), str) else None
    video = excerpt.get("video") if isinstance(excerpt, dict) else None
    return video if isinstance(video, str) else None


def dead_letter_problems(client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """Dead letters naming a video (their own ``video`` field, or the outcome in their excerpt)
    that is neither failed nor counted by any model."""
    keys = settings.keys
    models = ledger.known_models(client, keys)
    problems = []
    for entry, raw in client.hscan_iter(keys.dead_letters(), count=500):
        letter = _json(raw)
        video = _dead_letter_video(letter)
        if video is None:
            continue  # names no video (not an outcome at all): nothing to hold against one
        if client.hexists(keys.failed(), video) or any(client.hexists(keys.predictions(m), video) for m in models):
            continue
        problems.append({"invariant": "dead_letter_video_not_failed", "entry": text(entry), "video": video,
                         "reason": letter.get("reason") if isinstance(letter, dict) else None})
    return problems


def model_problems(client: redis.Redis, settings: Settings, job_models: dict[str | None, int]) -> list[dict[str, Any]]:
    running = live_consumer_models(client, settings)
    return [
        {"invariant": "jobs_for_a_model_no_consumer_runs", "model": model, "videos": videos,
         "consumers_run": sorted(running)}
        for model, videos in sorted(job_models.items(), key=lambda item: str(item[0]))
        if model is not None and model not in running
    ]


def check_document(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    """Every invariant that does not hold in the namespace; ``clean`` when none."""
    now = redis_now(client)
    problems, job_models = pending_problems(client, settings)
    problems += ledger_problems(client, settings)
    problems += outbox_problems(client, settings, now)
    problems += dead_letter_problems(client, settings)
    problems += model_problems(client, settings, job_models)
    return {"namespace": settings.namespace, "clean": not problems, "problems": problems,
            "checked": list(INVARIANTS), "redis_time": round(now, 3)}


def format_check(document: dict[str, Any]) -> str:
    if document["clean"]:
        return f"namespace {document['namespace']}: every invariant holds ({len(document['checked'])} checked)"
    lines = [f"namespace {document['namespace']}: {len(document['problems'])} problem(s)"]
    for problem in document["problems"]:
        fields = "  ".join(f"{name}={value}" for name, value in problem.items() if name != "invariant")
        lines.append(f"{problem['invariant']}  {fields}")
    return "\n".join(lines)
