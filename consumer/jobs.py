"""The rq job a consumer runs for each video, and its failure callback.

A worker binds its :class:`WorkerContext` (the model it holds, storage, the results queue)
once; each job then only downloads, classifies and publishes.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import redis
from lithops.storage.utils import StorageNoSuchKeyError
from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.timeouts import JobTimeoutException

from moments_stream import ledger, outcome, results
from moments_stream.backoff import Backoff
from moments_stream.errors import MomentsError, StorageUnavailableError, VideoDecodeError
from moments_stream.logs import get_logger
from moments_stream.queues import enqueue_jobs_again
from moments_stream.settings import Settings
from moments_stream.videos import split_video_id

from .classify import Classifier, Prediction

log = get_logger(__name__)


@dataclass
class WorkerContext:
    classifier: Classifier
    client: redis.Redis
    storage: Any
    results: Any  # lithops.multiprocessing.Queue
    settings: Settings
    worker_id: str
    # Set when a job for another model arrived: this consumer's weights are out of date, so it
    # hands the job back and leaves (its workers stop after the job in hand).
    superseded_by: str | None = None


_context: WorkerContext | None = None


def bind_context(context: WorkerContext | None) -> None:
    global _context
    _context = context


def current_context_or_none() -> WorkerContext | None:
    return _context


def current_context() -> WorkerContext:
    if _context is None:
        raise RuntimeError("classify_video runs inside a moments-stream consumer worker (consumer start)")
    return _context


def safe_local_name(key: str) -> str:
    """A file name for ``key`` that cannot escape the temporary directory it is joined to."""
    base = key.rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "video"
    return cleaned[-100:]


def storage_outage_errors() -> tuple[type[BaseException], ...]:
    """What a storage client raises when the store cannot be reached (not when an object is bad)."""
    errors: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
        from urllib3.exceptions import HTTPError

        errors += (BotoConnectionError, HTTPClientError, HTTPError)
    except ImportError:  # a storage backend without botocore
        pass
    return errors


def download(context: WorkerContext, bucket: str, key: str, directory: str) -> str:
    """:func:`download_once`, retried with back-off while storage is unreachable, for up to
    ``MOMENTS_STORAGE_OUTAGE`` seconds: an outage is not the video's fault, so it must not use up
    the video's attempts (the worker's lease stays alive meanwhile)."""
    deadline = time.monotonic() + context.settings.storage_outage_s
    backoff = Backoff(first_s=1, max_s=15, event="storage_unreachable_retrying")
    unreachable = storage_outage_errors()
    while True:
        try:
            return download_once(context, bucket, key, directory)
        except unreachable as error:
            if time.monotonic() + backoff.delay_s >= deadline:
                raise StorageUnavailableError(
                    f"storage unreachable for {context.settings.storage_outage_s} s while downloading {key!r}: {error}",
                    fix="check the storage endpoint and the network; the video is retried (MOMENTS_STORAGE_OUTAGE)",
                ) from None
            backoff.wait(error, video=key)


def download_once(context: WorkerContext, bucket: str, key: str, directory: str) -> str:
    """Stream ``key`` of ``bucket`` into ``directory`` with a size cap; returns the local path."""
    limit = context.settings.max_video_bytes
    path = os.path.join(directory, safe_local_name(key))
    try:
        body = context.storage.get_object(bucket, key, stream=True)
    except StorageNoSuchKeyError:
        raise VideoDecodeError(key, "the object no longer exists in storage (deleted after enqueue)") from None
    written = 0
    with open(path, "wb") as out:
        while chunk := body.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise VideoDecodeError(key, f"larger than the {limit:,}-byte limit (MOMENTS_MAX_VIDEO_BYTES)")
            out.write(chunk)
    return path


def hold_for_test(settings: Settings, key: str) -> None:
    """Tests only (``MOMENTS_TEST_BARRIER_DIR``): stop before publishing ``key``'s outcome while a
    ``hold-<name>`` file exists there, after writing ``reached-<name>``, so that a fault test acts
    while this video is known to be in this worker's hands."""
    if settings.test_barrier_dir is None:
        return
    name = safe_local_name(key)
    hold = os.path.join(settings.test_barrier_dir, f"hold-{name}")
    if not os.path.exists(hold):
        return
    with open(os.path.join(settings.test_barrier_dir, f"reached-{name}"), "w") as reached:
        reached.write(f"{os.getpid()}\n")
    log.warning("test_barrier_holding", video=key, hold=hold)
    while os.path.exists(hold):
        time.sleep(0.05)


def _elapsed_ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


def hand_back(context: WorkerContext, video: str, fingerprint: str, wanted_model: str) -> str:
    """A job for another model than this consumer's: enqueue it again for that model and retire."""
    enqueue_jobs_again(context.client, context.settings, {video: fingerprint}, wanted_model)
    context.superseded_by = wanted_model
    log.warning("consumer_superseded", video=video, job_model=wanted_model, model_id=context.classifier.model_id,
                fix="start consumers with the weights of the job's model; this one stops after this job")
    return "handed back"


def classify_video(video: str, fingerprint: str, wanted_model: str | None = None) -> str:
    """rq job: classify one stored video (``BUCKET/KEY``) and publish the outcome for the aggregator.

    ``wanted_model`` is the model the job is for (``producer enqueue --reclassify``), ``None`` for
    any. Logs one ``video_processed`` event per video with its outcome and timings.
    """
    context = current_context()
    model_id = context.classifier.model_id
    if wanted_model is not None and wanted_model != model_id:
        return hand_back(context, video, fingerprint, wanted_model)
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
        # Deterministic: retrying cannot help, so it is published as a failure right away.
        failure = outcome.failed(video, fingerprint, error.message, worker_id, model_id)
        results.publish(context.client, context.settings.keys, context.results, failure)
        log.warning("video_processed", outcome="failed", error=error.message, total_ms=_elapsed_ms(started), **fields)
        return "failed"
    counted = counted_outcome(prediction, fingerprint, worker_id, fields["download_ms"], _elapsed_ms(started))
    hold_for_test(context.settings, video)
    results.publish(context.client, context.settings.keys, context.results, counted)
    log.info("video_processed", outcome="counted", top1=prediction.top1, decode_ms=prediction.decode_ms,
             infer_ms=prediction.infer_ms, total_ms=counted.total_ms, **fields)
    return prediction.top1


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


def failure_message(exc_type: type, exc_value: BaseException) -> str:
    """What went wrong, in words a user can act on."""
    if isinstance(exc_value, MomentsError):
        return exc_value.message
    if issubclass(exc_type, AbandonedJobError):
        return ("its consumer died while classifying it on every attempt (killed, out of memory, or past the "
                "function's time limit): see MOMENTS_MAX_VIDEO_BYTES / MOMENTS_JOB_TIMEOUT")
    if issubclass(exc_type, JobTimeoutException):
        return f"took longer than the job timeout on every attempt (MOMENTS_JOB_TIMEOUT): {exc_value}"
    return f"{exc_type.__name__}: {exc_value}" if str(exc_value) else exc_type.__name__


def on_job_failure(job: Any, connection: redis.Redis, exc_type: type, exc_value: BaseException, tb: Any) -> None:
    """rq failure callback: on the last attempt, publish the video as failed with its error.

    The failure takes the same path as every other outcome (outbox, then the results queue), so an
    aggregator records it; abandoned jobs are failed by whichever consumer cleans up, which runs
    the same model (or the job names its model).
    """
    video, fingerprint, wanted_model = job.args
    message = failure_message(exc_type, exc_value)
    if job.retries_left:
        log.warning("video_attempt_failed", video=video, error=message, retries_left=job.retries_left)
        return
    if _context is None:  # rq's own worker, not a consumer: the outbox alone (an aggregator recovers it)
        failure = outcome.failed(video, fingerprint, message, model_id=wanted_model)
        ledger.stage_in_outbox(connection, Settings.from_env().keys, failure)
    else:
        model_id = wanted_model or _context.classifier.model_id
        failure = outcome.failed(video, fingerprint, message, model_id=model_id)
        results.publish(connection, _context.settings.keys, _context.results, failure)
    log.error("video_processed", outcome="failed", video=video, error=message, attempts="all")
