"""The rq job a consumer runs for each video, and its failure callback.

A worker binds its :class:`WorkerContext` (the model it holds, storage, the results queue it
publishes on) once; each job then only downloads, classifies and publishes.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from lithops.constants import LITHOPS_TEMP_DIR
from lithops.storage.utils import StorageNoSuchKeyError
from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.timeouts import JobTimeoutException

from moments_stream import ledger, outcome
from moments_stream.backoff import Backoff
from moments_stream.errors import MomentsError, StorageUnavailableError, VideoDecodeError
from moments_stream.logs import get_logger
from moments_stream.queues import enqueue_jobs_again, job_videos
from moments_stream.results import ResultsQueue
from moments_stream.settings import Settings
from moments_stream.videos import split_video_id

from . import hooks
from .classify import Classifier, Prediction

log = get_logger(__name__)


class TimeLimitCut(JobTimeoutException):
    """A job cut short because its consumer's function reaches its time limit (``EXIT_SLACK_S``
    before it), not because the job took too long: the failure callback hands the job back
    without using up an attempt, as a consumer told to stop does."""


@dataclass
class WorkerContext:
    classifier: Classifier
    client: redis.Redis
    storage: Any
    results: ResultsQueue  # where this consumer's outcomes go (and the list's expiry)
    settings: Settings
    worker_id: str
    # Set when a job for another model arrived: this consumer's weights are out of date, so it
    # hands the job back and leaves (its workers stop after the job in hand).
    superseded_by: str | None = None
    # This consumer's rq workers by name: a batch asks the one running it, between videos, whether
    # to stop (time limit, ``consumer stop``) and hand the rest back.
    workers: dict[str, Any] = field(default_factory=dict)


_context: WorkerContext | None = None


def bind_context(context: WorkerContext | None) -> None:
    global _context
    _context = context


def current_context_or_none() -> WorkerContext | None:
    return _context


def current_context() -> WorkerContext:
    if _context is None:
        raise RuntimeError("classify_videos runs inside a moments-stream consumer worker (consumer start)")
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


def unsafe_key_reason(bucket: str, key: str) -> str | None:
    """Why ``bucket``/``key`` must not be read, or ``None``: a job names them, and a job is Redis
    content, so untrusted. Lithops' localhost storage joins them to a directory, so an absolute
    key (``/etc/passwd``) or a ``..`` segment (``../../x``) would read a file of the host."""
    if bucket in ("", ".", "..") or "/" in bucket or "\\" in bucket:
        return f"the bucket name {bucket!r} is not a bucket"
    if key.startswith(("/", "\\")) or os.path.isabs(key):
        return "the key is an absolute path"
    if ".." in re.split(r"[/\\]", key):
        return "the key has a '..' path segment"
    if "\0" in key:
        return "the key holds a NUL byte"
    return None


def _too_large(key: str, size: int, limit: int) -> VideoDecodeError:
    return VideoDecodeError(key, f"{size:,} bytes, larger than the {limit:,}-byte limit (MOMENTS_MAX_VIDEO_BYTES)")


def _unreadable(key: str, error: OSError) -> VideoDecodeError:
    """A stored object the consumer may not read (permissions): named as such, not as missing."""
    return VideoDecodeError(key, f"storage refused to read it ({type(error).__name__}: {error.strerror or error})")


def download_once(context: WorkerContext, bucket: str, key: str, directory: str) -> str:
    """Stream ``key`` of ``bucket`` into ``directory``; returns the local path.

    A key that could name a host file is refused before any read (:func:`unsafe_key_reason`).
    The object's size is checked against ``MOMENTS_MAX_VIDEO_BYTES`` before a byte of it is read
    (a stat on localhost, a HEAD elsewhere), and again while streaming (it may be replaced
    between the two). Localhost storage is read here in chunks, not through Lithops, whose
    ``get_object`` reads the whole file into memory and reports every error as a missing key."""
    reason = unsafe_key_reason(bucket, key)
    if reason is not None:
        raise VideoDecodeError(key, f"refused, never read: {reason}")
    limit = context.settings.max_video_bytes
    path = os.path.join(directory, safe_local_name(key))
    if getattr(context.storage, "backend", None) == "localhost":
        return _copy_localhost(bucket, key, path, limit)
    head = getattr(context.storage, "head_object", None)  # every Lithops Storage has it
    try:
        if head is not None:
            metadata = head(bucket, key)
            size = metadata.get("content-length") if isinstance(metadata, dict) else None
            if size is not None and int(size) > limit:
                raise _too_large(key, int(size), limit)
        body = context.storage.get_object(bucket, key, stream=True)
    except StorageNoSuchKeyError:
        raise VideoDecodeError(key, "the object no longer exists in storage (deleted after enqueue)") from None
    with open(path, "wb") as out:
        _copy_capped(body, out, key, limit)
    return path


def _copy_capped(body: Any, out: Any, key: str, limit: int) -> None:
    written = 0
    while chunk := body.read(1 << 20):
        written += len(chunk)
        if written > limit:
            raise VideoDecodeError(key, f"larger than the {limit:,}-byte limit (MOMENTS_MAX_VIDEO_BYTES)")
        out.write(chunk)


def _copy_localhost(bucket: str, key: str, path: str, limit: int) -> str:
    """Lithops localhost storage's object (a file under its bucket directory) copied in chunks,
    its size checked first; each error reported as what it is."""
    root = os.path.realpath(os.path.join(LITHOPS_TEMP_DIR, bucket))
    source = os.path.join(root, key)
    if not os.path.realpath(source).startswith(root + os.sep):  # a symbolic link out of the bucket
        raise VideoDecodeError(key, "refused, never read: the object links outside its bucket")
    try:
        body = open(source, "rb")  # noqa: SIM115 (closed below; the size is checked before reading)
    except (FileNotFoundError, NotADirectoryError):
        raise VideoDecodeError(key, "the object no longer exists in storage (deleted after enqueue)") from None
    except IsADirectoryError:
        raise VideoDecodeError(key, "the key names a folder in storage, not an object") from None
    except PermissionError as error:
        raise _unreadable(key, error) from None
    with body:
        size = os.fstat(body.fileno()).st_size
        if size > limit:
            raise _too_large(key, size, limit)
        with open(path, "wb") as out:
            _copy_capped(body, out, key, limit)
    return path


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


@dataclass
class OutcomeBuffer:
    """Outcomes a batch has not yet handed to the aggregator, published in one round trip when the
    oldest has waited ``MOMENTS_PUBLISH_LINGER_MS``, when the batch ends, and before it stops or
    fails (an outcome lost with a crashed consumer is only classified again: the ledger counts it
    once)."""

    context: WorkerContext
    clock: Callable[[], float] = time.monotonic
    outcomes: list[outcome.VideoOutcome] = field(default_factory=list)
    oldest_at: float = 0.0

    def add(self, message: outcome.VideoOutcome) -> None:
        if not self.outcomes:
            self.oldest_at = self.clock()
        self.outcomes.append(message)
        if (self.clock() - self.oldest_at) * 1000 >= self.context.settings.publish_linger_ms:
            self.flush()

    def flush(self) -> None:
        if self.outcomes:
            self.context.results.publish(self.outcomes)
            self.outcomes = []


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
    """Whether ``video`` was tried on every run of its batch job (a job of a release before, which
    kept no count, counts as tried)."""
    runs = int(job.meta.get("runs", 0))
    return int(job.meta.get("tries", {}).get(video, 0)) >= runs


def classify_video(video: str, fingerprint: str, wanted_model: str | None = None) -> str:
    """rq job of releases before batches (one video): still in queues during an upgrade."""
    return classify_videos([[video, fingerprint]], wanted_model)


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
    settings = Settings.from_env() if _context is None else _context.settings
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
        model_id = wanted_model if _context is None else wanted_model or _context.classifier.model_id
        failure = outcome.failed(video, fingerprint, message, model_id=model_id, for_model=wanted_model)
        publish_failure(connection, settings, failure)
        log.error("video_processed", outcome="failed", video=video, error=message, attempts="all")


def publish_failure(connection: redis.Redis, settings: Settings, failure: outcome.VideoOutcome) -> None:
    """Hand a final failure to the aggregator: through the results queue from a consumer, else (rq's
    own worker, or a queue that refuses it) in the outbox alone, which an aggregator recovers."""
    if _context is not None:
        try:
            _context.results.publish([failure])
            return
        except Exception as error:
            log.warning("failure_publish_failed", video=failure.video, error=f"{type(error).__name__}: {error}",
                        meaning="left in the outbox alone; an aggregator records it from there")
    ledger.stage_in_outbox(connection, settings.keys, failure)
