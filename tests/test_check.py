"""``aggregator check`` against a real Redis: clean on a healthy namespace, and each broken
invariant, made by hand, listed (text, --json, exit status)."""

from __future__ import annotations

import json
import os
import time

import pytest
import redis
from rq.registry import FailedJobRegistry
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from aggregator.check import INVARIANTS, check_document, format_check
from moments_stream import ledger, outcome
from moments_stream.queues import enqueue_videos, video_queue
from moments_stream.settings import WORKER_MODEL_FIELD, Settings
from tests.pipeline import run

MODEL = "model-a"
VIDEOS = {f"chk/v/{index}.mp4": f"{index}:1" for index in range(4)}


@pytest.fixture()
def settings(redis_url: str, redis_client: redis.Redis) -> Settings:
    return Settings.from_env({"MOMENTS_REDIS_URL": redis_url, "MOMENTS_BUCKET": "chk", "MOMENTS_RECOVER_AFTER": "30"})


def top5(category: str) -> list[tuple[str, float]]:
    return [(category, 0.9), ("other", 0.1)]


def healthy(client: redis.Redis, settings: Settings) -> None:
    """Four videos enqueued: three counted, one failed, all through the ledger; one more queued."""
    enqueue_videos(client, settings, VIDEOS)
    names = list(VIDEOS)
    outcomes = [outcome.counted(name, VIDEOS[name], MODEL, top5(f"cat-{index % 2}"))
                for index, name in enumerate(names[:3])]
    outcomes.append(outcome.failed(names[3], VIDEOS[names[3]], "corrupt", model_id=MODEL))
    ledger.record_batch(client, settings.keys, outcomes)
    video_queue(client, settings).empty()
    enqueue_videos(client, settings, {"chk/v/waiting.mp4": "9:9"})


def invariants(document: dict) -> list[str]:
    return sorted(problem["invariant"] for problem in document["problems"])


def dump(client: redis.Redis) -> dict[bytes | str, object]:
    return {key: client.dump(key) for key in client.keys("*")}


def cli_env(settings: Settings) -> dict[str, str]:
    return dict(os.environ, MOMENTS_REDIS_URL=settings.redis_url, MOMENTS_EMBEDDED_REDIS="0")


def test_a_healthy_namespace_is_clean(redis_client: redis.Redis, settings: Settings) -> None:
    healthy(redis_client, settings)
    document = check_document(redis_client, settings)
    assert document["clean"] and document["problems"] == [], document
    assert document["checked"] == list(INVARIANTS)
    assert "every invariant holds" in format_check(document)
    done = run(cli_env(settings), "aggregator", "check", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["clean"] is True


def test_each_broken_invariant_is_listed(redis_client: redis.Redis, settings: Settings) -> None:
    healthy(redis_client, settings)
    keys = settings.keys
    names = list(VIDEOS)
    # pending with no job: its job lost
    enqueue_videos(redis_client, settings, {"chk/v/lost.mp4": "5:5"})
    queue = video_queue(redis_client, settings)
    lost_job = queue.job_ids[-1]
    queue.remove(lost_job)
    redis_client.delete(f"rq:job:{lost_job}")
    # pending, its only job in rq's failed registry (its failure never recorded)
    enqueue_videos(redis_client, settings, {"chk/v/unrecorded-failure.mp4": "6:6"})
    failed_job = queue.job_ids[-1]
    queue.remove(failed_job)
    redis_client.zadd(FailedJobRegistry(queue.name, connection=redis_client).key, {failed_job: 1e12})
    # counted and failed at once
    redis_client.hset(keys.failed(), names[0], outcome.failed(names[0], "0:2", "broken", model_id=MODEL).encode())
    # a count the predictions do not have (written outside the ledger: its ranking and the live
    # table, the current model's, do not have it either)
    redis_client.hincrby(keys.counts(MODEL), "cat-1", 1)
    # an outbox entry long past the recovery delay
    stale = outcome.counted("chk/v/stuck.mp4", "7:7", MODEL, top5("cat-0")).published(time.time() - 3600)
    redis_client.hset(keys.outbox(), stale.outbox_field, stale.encode())
    # a dead letter whose video is neither failed nor counted
    letter = {"reason": "missing field", "excerpt": json.dumps({"video": "chk/v/dead.mp4"}), "received_at": 1.0}
    redis_client.hset(keys.dead_letters(), "1.0-abc", json.dumps(letter))
    # jobs for a model no live consumer runs (another model's consumer is alive)
    enqueue_videos(redis_client, settings, {"chk/v/reclassify.mp4": "8:8"}, model_id="model-nobody-runs")
    worker_key = "rq:worker:chk-consumer"
    redis_client.hset(worker_key, mapping={"state": "idle", WORKER_MODEL_FIELD: MODEL})
    redis_client.sadd(WORKERS_BY_QUEUE_KEY % settings.queue_name, worker_key)

    document = check_document(redis_client, settings)
    assert not document["clean"]
    assert invariants(document) == sorted([
        "pending_without_job", "pending_only_in_failed_registry", "counted_and_failed",
        "counts_differ_from_predictions", "ranking_differs_from_counts", "live_counts_differ_from_current_model",
        "outbox_not_recorded",
        "dead_letter_video_not_failed", "jobs_for_a_model_no_consumer_runs"])
    by_name = {problem["invariant"]: problem for problem in document["problems"]}
    assert by_name["pending_without_job"]["video"] == "chk/v/lost.mp4"
    assert by_name["pending_only_in_failed_registry"]["video"] == "chk/v/unrecorded-failure.mp4"
    assert by_name["counted_and_failed"]["video"] == names[0]
    assert (by_name["counts_differ_from_predictions"]["category"], by_name["counts_differ_from_predictions"]["count"],
            by_name["counts_differ_from_predictions"]["predictions"]) == ("cat-1", 2, 1)
    assert by_name["outbox_not_recorded"]["video"] == "chk/v/stuck.mp4"
    assert by_name["outbox_not_recorded"]["age_s"] >= 3600 - 5
    assert by_name["dead_letter_video_not_failed"]["video"] == "chk/v/dead.mp4"
    assert by_name["jobs_for_a_model_no_consumer_runs"]["model"] == "model-nobody-runs"
    assert by_name["jobs_for_a_model_no_consumer_runs"]["consumers_run"] == [MODEL]
    text = format_check(document)
    assert all(name in text for name in invariants(document))

    before = dump(redis_client)
    done = run(cli_env(settings), "aggregator", "check", "--json")
    assert done.returncode == 1, done.stderr
    assert invariants(json.loads(done.stdout)) == invariants(document)
    assert dump(redis_client) == before  # read-only


def test_jobs_for_a_model_a_live_consumer_runs_and_a_resolved_dead_letter_are_fine(
    redis_client: redis.Redis, settings: Settings
) -> None:
    healthy(redis_client, settings)
    enqueue_videos(redis_client, settings, {"chk/v/reclassify.mp4": "8:8"}, model_id=MODEL)
    worker_key = "rq:worker:chk-consumer"
    redis_client.hset(worker_key, mapping={"state": "idle", WORKER_MODEL_FIELD: MODEL})
    redis_client.sadd(WORKERS_BY_QUEUE_KEY % settings.queue_name, worker_key)
    failed_video = list(VIDEOS)[3]
    letter = {"reason": "x", "excerpt": json.dumps({"video": failed_video}), "received_at": 1.0}
    redis_client.hset(settings.keys.dead_letters(), "1.0-abc", json.dumps(letter))
    redis_client.hset(settings.keys.dead_letters(), "2.0-def", json.dumps({"reason": "not JSON", "excerpt": "b'x'"}))
    assert check_document(redis_client, settings)["clean"]
    # the consumer's lease lapses: nobody runs that model now
    redis_client.delete(worker_key)
    assert invariants(check_document(redis_client, settings)) == ["jobs_for_a_model_no_consumer_runs"]


def test_a_pending_entry_that_is_not_a_json_entry_is_listed_and_answers_no_outcome(
    redis_client: redis.Redis, settings: Settings
) -> None:
    healthy(redis_client, settings)
    redis_client.hset(settings.keys.pending(), "chk/v/odd.mp4", "3:3")  # not videos.pending_entry
    problems = check_document(redis_client, settings)["problems"]
    assert [(problem["invariant"], problem["video"]) for problem in problems] == [
        ("pending_entry_unreadable", "chk/v/odd.mp4")]
    prediction = outcome.counted("chk/v/odd.mp4", "3:3", MODEL, top5("cat-0"))
    assert ledger.record(redis_client, settings.keys, prediction) is ledger.RecordResult.RECORDED
    assert redis_client.hget(settings.keys.pending(), "chk/v/odd.mp4") == b"3:3"  # left for the check to list
    assert ledger.unfinished(redis_client, settings.keys, {"chk/v/odd.mp4": "3:3", "chk/v/x.mp4": "1:1"}, None) == {}
