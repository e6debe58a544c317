"""rq's failure callback for the classify job (``on_job_failure``), and what it needs: the attempts
of a batch counted per video, and the time-limit cut that is no failed attempt."""

from __future__ import annotations

from typing import Any

import redis
from rq.exceptions import AbandonedJobError
from rq.timeouts import JobTimeoutException

from moments_stream import ledger, outcome
from moments_stream.errors import MomentsError
from moments_stream.logs import get_logger
from moments_stream.queues import enqueue_jobs_again, job_videos
from moments_stream.settings import Settings

from .context import current_context_or_none

log = get_logger(__name__)


class TimeLimitCut(JobTimeoutException):
    """A job cut short because its consumer's function reaches its time limit (``EXIT_SLACK_S``
    before it), not because the job took too long: the failure callback hands the job back
    without using up an attempt, as a consumer told to stop does."""


def note_run(job: Any) -> None:
    """A batch job's attempts are counted per video (``meta``: ``runs`` of the job, ``tries`` of each
    video), so that a video its batch-mates' failures kept from being tried is not failed "on every
    attempt" (:func:`on_job_failure`)."""
    job.meta["runs"] = int(job.meta.get("runs", 0)) + 1
    job.save_meta()


def note_try(job: Any, video: str) -> None:
    tries = job.meta.setdefault("tries", {})
    tries[video] = int(tries.get(video, 0)) + 1
    job.save_meta()


def tried_on_every_run(job: Any, video: str) -> bool:
    """Whether ``video`` was tried on every run of its batch job that :func:`note_run` counted (none
    counted: a job that failed before its first run began, which tried no video either)."""
    runs = int(job.meta.get("runs", 0))
    return int(job.meta.get("tries", {}).get(video, 0)) >= runs


def failure_message(exc_type: type, exc_value: BaseException) -> str:
    """What went wrong, in words a user can act on."""
    if isinstance(exc_value, MomentsError):
        return exc_value.message
    if issubclass(exc_type, AbandonedJobError):
        return ("its consumer died while classifying it on every attempt (killed, out of memory, or past the "
                "function's time limit): see MOMENTS_MAX_VIDEO_BYTES / MOMENTS_JOB_TIMEOUT")
    if issubclass(exc_type, TimeLimitCut):
        return (f"still running when its consumer's function reached its time limit, {FREE_TIME_LIMIT_CUTS + 1} "
                "times and on every attempt: raise the function's time limit or MOMENTS_STOP_MARGIN")
    if issubclass(exc_type, JobTimeoutException):
        return f"took longer than the job timeout on every attempt (MOMENTS_JOB_TIMEOUT): {exc_value}"
    return f"{exc_type.__name__}: {exc_value}" if str(exc_value) else exc_type.__name__


# How often a job cut short by its function's time limit is handed back at no attempt's cost; past
# this, further cuts are failed attempts (a video that needs more than a whole function's time
# must not go round for ever: see MOMENTS_JOB_TIMEOUT and the function's time limit).
FREE_TIME_LIMIT_CUTS = 3
# How often a job whose failure callback could not record its videos is retried for that alone
# (rq logs and swallows a callback's exception, leaving the videos pending with no job); past this,
# the job stays in rq's failed registry and the error in the log.
CALLBACK_RETRIES = 5


def on_job_failure(job: Any, connection: redis.Redis, exc_type: type, exc_value: BaseException, tb: Any) -> None:
    """rq failure callback: on the last attempt, publish each video still unfinished as failed with
    the error, or, when a batch has several, give each its own job (the batch's failure may be one
    video's doing: a video that kills its consumer must not fail the others).

    The failure takes the same path as every other outcome (outbox, then the results queue), so an
    aggregator records it; abandoned jobs are failed by whichever consumer cleans up, which runs
    the same model (or the job names its model). rq swallows a callback's exception, so none
    escapes: a failure the results queue refuses is left in the outbox alone (an aggregator
    recovers it), and when even that fails the job is retried rather than left with its videos
    pending and nothing to record them.
    """
    try:
        _handle_job_failure(job, connection, exc_type, exc_value)
    except Exception as error:
        failures = int(job.meta.get("callback_failures", 0)) + 1
        job.meta["callback_failures"] = failures  # saved with the job when rq retries it
        if failures > CALLBACK_RETRIES:
            log.exception("failure_callback_failed", job=job.id, error=str(error), retried=False,
                          fix="the job's videos stay pending: see the error, then `consumer requeue` or the reconciler")
            return
        job.retries_left = (job.retries_left or 0) + 1  # rq retries the job once this callback returns
        log.exception("failure_callback_failed", job=job.id, error=str(error), retried=True,
                      meaning="the job's failure could not be recorded; the job is tried again")


def _handle_job_failure(job: Any, connection: redis.Redis, exc_type: type, exc_value: BaseException) -> None:
    context = current_context_or_none()
    videos, wanted_model = job_videos(job.args)
    message = failure_message(exc_type, exc_value)
    first = next(iter(videos))
    if issubclass(exc_type, TimeLimitCut) and int(job.meta.get("time_limit_cuts", 0)) < FREE_TIME_LIMIT_CUTS:
        # Not the video's doing: rq retries the job (another consumer takes it) at no attempt's cost.
        job.meta["time_limit_cuts"] = int(job.meta.get("time_limit_cuts", 0)) + 1  # saved with the retried job
        job.retries_left = (job.retries_left or 0) + 1
        log.warning("job_handed_back_at_time_limit", video=first, videos=len(videos), job=job.id,
                    meaning="this consumer's function reaches its time limit; the job is tried again, "
                            "not counted as a failed attempt")
        return
    if job.retries_left:
        log.warning("video_attempt_failed", video=first, videos=len(videos), error=message,
                    retries_left=job.retries_left)
        return
    settings = Settings.from_env() if context is None else context.settings
    left = ledger.unfinished(connection, settings.keys, videos, wanted_model) if len(videos) > 1 else videos
    if len(left) > 1:
        enqueue_jobs_again(connection, settings, left, wanted_model, batch=1)
        log.warning("batch_split", videos=len(left), first=next(iter(left)), error=message,
                    meaning="each video of the failed batch is tried in its own job")
        return
    if len(videos) > 1 and left and not tried_on_every_run(job, next(iter(left))):
        enqueue_jobs_again(connection, settings, left, wanted_model, batch=1)
        log.warning("batch_video_tried_alone", video=next(iter(left)), error=message,
                    meaning="its batch-mates used up attempts it was not tried in: it gets a job of its own")
        return
    for video, fingerprint in left.items():
        model_id = wanted_model if context is None else wanted_model or context.classifier.model_id
        failure = outcome.failed(video, fingerprint, message, model_id=model_id, for_model=wanted_model)
        publish_failure(connection, settings, failure)
        log.error("video_processed", outcome="failed", video=video, error=message, attempts="all")


def publish_failure(connection: redis.Redis, settings: Settings, failure: outcome.VideoOutcome) -> None:
    """Hand a final failure to the aggregator: through the results queue from a consumer, else (rq's
    own worker, or a queue that refuses it) in the outbox alone, which an aggregator recovers."""
    context = current_context_or_none()
    if context is not None:
        try:
            context.results.publish([failure])
            return
        except Exception as error:
            log.warning("failure_publish_failed", video=failure.video, error=f"{type(error).__name__}: {error}",
                        meaning="left in the outbox alone; an aggregator records it from there")
    ledger.stage_in_outbox(connection, settings.keys, failure)
