"""Outcomes of two models meeting in the ledger (issue 23's property-test report), and the live
table (issue 25): ``moments:counts`` and ``moments:ranking`` hold the current model's counts.

Each case is a sequence a mixed fleet or a ``--reclassify`` produces: a consumer of the old model
still holding a job while consumers of the new one run. Against a real Redis and the real script.
"""

from __future__ import annotations

import json

import redis

from aggregator.check import ledger_problems
from moments_stream import ledger
from moments_stream.failures import requeue_failed
from moments_stream.ledger import RecordResult
from moments_stream.outcome import VideoOutcome, counted, failed
from moments_stream.queues import enqueue_videos
from moments_stream.settings import Settings

MODEL_A = "v1-aaaaaaaaaaaa-11111111"
MODEL_B = "v1-bbbbbbbbbbbb-22222222"
VIDEO = "b/v/0.mp4"


def settings_for(redis_url: str) -> Settings:
    return Settings.from_env({"MOMENTS_REDIS_URL": redis_url, "MOMENTS_BUCKET": "b"})


def prediction(model_id: str, top1: str, video: str = VIDEO, fingerprint: str = "1:1") -> VideoOutcome:
    return counted(video, fingerprint, model_id, [(top1, 0.9), ("other", 0.1)], worker="w")


def failure(model_id: str, for_model: str | None, video: str = VIDEO, fingerprint: str = "1:1") -> VideoOutcome:
    return failed(video, fingerprint, "injected", worker="w", model_id=model_id, for_model=for_model)


def failed_record(client: redis.Redis, settings: Settings, video: str = VIDEO) -> dict | None:
    raw = client.hget(settings.keys.failed(), video)
    return None if raw is None else json.loads(raw)


def live_table(client: redis.Redis, settings: Settings) -> tuple[dict[str, int], list[tuple[str, int]]]:
    keys = settings.keys
    counts = {k.decode(): int(v) for k, v in client.hgetall(keys.live_counts()).items()}
    top = [(k.decode(), int(v)) for k, v in client.zrevrange(keys.live_ranking(), 0, 9, withscores=True)]
    return counts, top


def test_a_count_answers_a_job_for_any_model_so_a_late_failure_of_another_model_is_dropped(
        redis_client: redis.Redis, redis_url: str) -> None:
    settings = settings_for(redis_url)
    enqueue_videos(redis_client, settings, {VIDEO: "1:1"}, only_new=True)
    assert ledger.record(redis_client, settings.keys, prediction(MODEL_A, "juggling")) is RecordResult.RECORDED
    # The same job, also taken by a consumer of model B (a lease that ran out), fails there.
    assert ledger.record(redis_client, settings.keys, failure(MODEL_B, None)) is RecordResult.DUPLICATE
    assert failed_record(redis_client, settings) is None
    assert ledger_problems(redis_client, settings) == []


def test_a_late_prediction_of_the_old_model_never_erases_a_reclassify_failure(
        redis_client: redis.Redis, redis_url: str) -> None:
    settings = settings_for(redis_url)
    enqueue_videos(redis_client, settings, {VIDEO: "1:1"}, only_new=True)  # a consumer of A takes it, slowly
    enqueue_videos(redis_client, settings, {VIDEO: "1:1"}, model_id=MODEL_B)  # --reclassify --for-model B
    assert ledger.record(redis_client, settings.keys, failure(MODEL_B, MODEL_B)) is RecordResult.RECORDED
    assert ledger.record(redis_client, settings.keys, prediction(MODEL_A, "juggling")) is RecordResult.RECORDED
    # B's job was answered "failed"; A's late count is A's, and leaves B's answer standing.
    assert (failed_record(redis_client, settings) or {}).get("for_model") == MODEL_B
    assert ledger.pending_count(redis_client, settings.keys) == 0
    assert ledger_problems(redis_client, settings) == []
    assert requeue_failed(redis_client, settings, [VIDEO]) == [VIDEO]
    assert json.loads(redis_client.hget(settings.keys.pending(), VIDEO))["model"] == MODEL_B


def test_a_late_failure_of_a_job_for_any_model_leaves_a_reclassify_waiting(
        redis_client: redis.Redis, redis_url: str) -> None:
    settings = settings_for(redis_url)
    enqueue_videos(redis_client, settings, {VIDEO: "1:1"}, only_new=True)
    enqueue_videos(redis_client, settings, {VIDEO: "1:1"}, model_id=MODEL_B)
    ledger.record(redis_client, settings.keys, failure(MODEL_B, None))  # the first job's outcome, by B
    assert json.loads(redis_client.hget(settings.keys.pending(), VIDEO))["model"] == MODEL_B
    assert ledger.record(redis_client, settings.keys, prediction(MODEL_B, "running")) is RecordResult.RECORDED
    assert ledger.pending_count(redis_client, settings.keys) == 0
    assert failed_record(redis_client, settings) is None  # the job for any model is answered by B's count


def test_the_live_table_follows_the_new_model_and_never_mixes_two(
        redis_client: redis.Redis, redis_url: str) -> None:
    settings = settings_for(redis_url)
    keys = settings.keys
    videos = {f"b/v/{n}.mp4": "1:1" for n in range(4)}
    enqueue_videos(redis_client, settings, videos, only_new=True)
    assert live_table(redis_client, settings) == ({}, [])
    for video, top1 in zip(videos, ["juggling", "juggling", "running"], strict=False):
        ledger.record(redis_client, keys, prediction(MODEL_A, top1, video))
    assert live_table(redis_client, settings) == ({"juggling": 2, "running": 1}, [("juggling", 2), ("running", 1)])
    assert ledger.current_model(redis_client, keys) == MODEL_A

    # Consumers of a new model B start counting: the live table is B's from its first count.
    ledger.record(redis_client, keys, prediction(MODEL_B, "diving", "b/v/3.mp4"))
    assert ledger.current_model(redis_client, keys) == MODEL_B
    assert live_table(redis_client, settings) == ({"diving": 1}, [("diving", 1)])
    # A late prediction of A (a consumer still holding a job) counts under A only.
    enqueue_videos(redis_client, settings, {"b/v/4.mp4": "1:1"}, only_new=True)
    ledger.record(redis_client, keys, prediction(MODEL_A, "running", "b/v/4.mp4"))
    assert ledger.counts(redis_client, keys, MODEL_A) == {"juggling": 2, "running": 2}
    assert ledger.current_model(redis_client, keys) == MODEL_B
    assert live_table(redis_client, settings) == ({"diving": 1}, [("diving", 1)])

    # --reclassify --for-model A (a rollback): A is current again once it answers, even with a
    # prediction it had counted already; the table is rebuilt from A's own counts.
    enqueue_videos(redis_client, settings, {"b/v/0.mp4": "1:1"}, model_id=MODEL_A)
    assert ledger.record(redis_client, keys, prediction(MODEL_A, "juggling", "b/v/0.mp4")) is RecordResult.DUPLICATE
    assert ledger.current_model(redis_client, keys) == MODEL_A
    assert live_table(redis_client, settings) == ({"juggling": 2, "running": 2}, [("running", 2), ("juggling", 2)])
    assert ledger_problems(redis_client, settings) == []


def test_a_failed_replacement_takes_its_count_out_of_the_live_table_and_rankings(
        redis_client: redis.Redis, redis_url: str) -> None:
    settings = settings_for(redis_url)
    keys = settings.keys
    enqueue_videos(redis_client, settings, {VIDEO: "1:1"}, only_new=True)
    ledger.record(redis_client, keys, prediction(MODEL_A, "juggling"))
    enqueue_videos(redis_client, settings, {VIDEO: "2:2"}, only_new=True)  # the file was replaced
    ledger.record(redis_client, keys, failure(MODEL_A, None, fingerprint="2:2"))
    assert live_table(redis_client, settings) == ({}, [])
    assert redis_client.zcard(keys.ranking(MODEL_A)) == 0
    assert ledger.counts(redis_client, keys, MODEL_A) == {}
    assert ledger_problems(redis_client, settings) == []


def test_check_reports_a_live_table_that_is_not_the_current_models(
        redis_client: redis.Redis, redis_url: str) -> None:
    settings = settings_for(redis_url)
    keys = settings.keys
    enqueue_videos(redis_client, settings, {VIDEO: "1:1"}, only_new=True)
    ledger.record(redis_client, keys, prediction(MODEL_A, "juggling"))
    redis_client.hincrby(keys.live_counts(), "running", 1)  # written by something else
    redis_client.zadd(keys.ranking(MODEL_A), {"juggling": 5})
    found = {(problem["invariant"], problem["category"]) for problem in ledger_problems(redis_client, settings)}
    assert found == {("live_counts_differ_from_current_model", "running"), ("ranking_differs_from_counts", "running"),
                     ("ranking_differs_from_counts", "juggling")}
