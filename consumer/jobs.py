"""The rq job a consumer runs: classify a batch of stored videos, publishing their outcomes.

A worker binds its :class:`~consumer.context.WorkerContext` once; each job then downloads
(:mod:`consumer.download`), classifies and publishes (:mod:`consumer.outcome_buffer`). Its failure
callback is :mod:`consumer.failure_callback`; rq stores both by their path in this module
(``moments_stream.defaults``: ``consumer.jobs.classify_videos``, ``consumer.jobs.on_job_failure``),
so jobs already enqueued keep working.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from rq import get_current_job

from moments_stream import ledger, outcome
from moments_stream.errors import VideoDecodeError
from moments_stream.logs import get_logger
from moments_stream.queues import enqueue_jobs_again
from moments_stream.videos import split_video_id

from . import hooks
from .classify import Prediction
from .context import WorkerContext, current_context
from .download import download
from .failure_callback import (
    note_run,
    note_try,
    on_job_failure,
)
from .outcome_buffer import OutcomeBuffer

# rq's paths: the job and its failure callback (moments_stream.defaults names them here)
__all__ = ["classify_one", "classify_videos", "on_job_failure"]

log = get_logger(__name__)


def _elapsed_ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


def hand_back(context: WorkerContext, videos: dict[str, str], wanted_model: str) -> str:
    """A job for another model than this consumer's: enqueue it again for that model and retire."""
    enqueue_jobs_again(context.client, context.settings, videos, wanted_model)
    context.superseded_by = wanted_model
    log.warning("consumer_superseded", videos=len(videos), first=next(iter(videos)), job_model=wanted_model,
                model_id=context.classifier.model_id,
                fix="start consumers with the weights of the job's model; this one stops after this job")
    return "handed back"


def stop_requested(context: WorkerContext) -> bool:
    """Whether the rq worker running this job should stop (its time limit, ``consumer stop``)."""
    job = get_current_job()
    worker = context.workers.get(job.worker_name) if job is not None and job.worker_name else None
    return worker is not None and bool(worker.should_stop())


def classify_videos(videos: list[list[str]], wanted_model: str | None = None) -> str:
    """rq job: classify a batch of stored videos ([``BUCKET/KEY``, fingerprint] pairs) one by one,
    publishing their outcomes (:class:`OutcomeBuffer`).

    ``wanted_model`` is the model the job is for (``producer enqueue --reclassify``), ``None`` for
    any. A retried batch skips the videos it already published; a consumer told to stop between
    two videos enqueues the rest as a new job. Logs one ``video_processed`` event per video.
    """
    context = current_context()
    batch = {video: fingerprint for video, fingerprint in videos}
    if wanted_model is not None and wanted_model != context.classifier.model_id:
        return hand_back(context, batch, wanted_model)
    job = get_current_job() if len(batch) > 1 else None
    if job is not None:
        note_run(job)
    if len(batch) > 1:
        batch = ledger.unfinished(context.client, context.settings.keys, batch, wanted_model)
    todo = list(batch.items())
    buffer = OutcomeBuffer(context)
    try:
        for index, (video, fingerprint) in enumerate(todo):
            if index and stop_requested(context):
                buffer.flush()
                rest = dict(todo[index:])
                enqueue_jobs_again(context.client, context.settings, rest, wanted_model)
                log.info("batch_handed_back", videos=len(rest), first=todo[index][0], worker=context.worker_id)
                return f"{index} of {len(todo)}, the rest handed back"
            if job is not None:
                note_try(job, video)
            message = classify_one(context, video, fingerprint, wanted_model)
            hooks.run_before_publish(video, buffer.flush)
            buffer.add(message)
    finally:
        buffer.flush()
    return f"{len(todo)} of {len(videos)}"


def classify_one(
    context: WorkerContext, video: str, fingerprint: str, wanted_model: str | None = None
) -> outcome.VideoOutcome:
    """Classify one stored video (``BUCKET/KEY``): its outcome, counted or failed, to publish
    (``wanted_model``: the model its job was for, kept in a failure for ``consumer requeue``)."""
    model_id = context.classifier.model_id
    bucket, key = split_video_id(video)
    started = time.perf_counter()
    # A consumer may run several rq workers (decode threads); the job knows which one runs it.
    job = get_current_job()
    worker_id = job.worker_name if job is not None and job.worker_name else context.worker_id
    fields: dict[str, Any] = {"video": video, "worker": worker_id}
    try:
        with tempfile.TemporaryDirectory(prefix="moments-") as directory:
            local = download(context, bucket, key, directory)
            fields["download_ms"] = _elapsed_ms(started)
            prediction = context.classifier.classify_file(local, name=video)
    except VideoDecodeError as error:
        # Deterministic: retrying cannot help, so it is a failed outcome now, not a failed attempt.
        log.warning("video_processed", outcome="failed", error=error.message, total_ms=_elapsed_ms(started), **fields)
        return outcome.failed(video, fingerprint, error.message, worker_id, model_id, for_model=wanted_model)
    counted = counted_outcome(prediction, fingerprint, worker_id, fields["download_ms"], _elapsed_ms(started))
    log.info("video_processed", outcome="counted", top1=prediction.top1, decode_ms=prediction.decode_ms,
             infer_ms=prediction.infer_ms, total_ms=counted.total_ms, **fields)
    return counted


def counted_outcome(
    prediction: Prediction, fingerprint: str, worker: str, download_ms: float, total_ms: float
) -> outcome.VideoOutcome:
    """The message for a classified video: the prediction, which version of the file, who and how long."""
    return outcome.counted(
        prediction.video,
        fingerprint,
        prediction.model_id,
        prediction.top5,
        worker=worker,
        synthetic_weights=prediction.synthetic_weights,
        frame_count=prediction.frame_count,
        sampling=prediction.sampling,
        codec=prediction.codec,
        download_ms=download_ms,
        decode_ms=prediction.decode_ms,
        infer_ms=prediction.infer_ms,
        total_ms=total_ms,
    )
