"""What the producer does, as functions of the settings: upload a folder, enqueue what is new
under a prefix once, or keep enqueueing new uploads. ``producer.cli`` and the ``pipeline`` app
call these; the pieces they combine are ``listing``, ``enqueue`` and ``upload``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from moments_stream.backoff import Backoff
from moments_stream.embedded_redis import ensure_redis
from moments_stream.errors import ConfigError, MomentsError
from moments_stream.ledger import known_models
from moments_stream.lithops_env import storage as lithops_storage
from moments_stream.logs import get_logger
from moments_stream.queues import live_consumer_models
from moments_stream.redis_conn import REDIS_OUTAGE
from moments_stream.resources import available_cpus
from moments_stream.settings import Settings

from .enqueue import EnqueueReport, enqueue_objects
from .listing import StoredObject, iter_objects
from .upload import UploadReport, upload_directory

log = get_logger(__name__)


def normalise_prefix(prefix: str) -> str:
    prefix = prefix.lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def enqueue_pass(
    client: redis.Redis,
    storage: Any,
    settings: Settings,
    prefix: str,
    reclassify: bool = False,
    model_id: str | None = None,
) -> tuple[EnqueueReport, int]:
    """List ``prefix`` once and enqueue what is new; returns the report and how many objects were listed."""
    listed = 0

    def counted() -> Iterator[StoredObject]:
        nonlocal listed
        for item in iter_objects(storage, settings.bucket, prefix):
            listed += 1
            yield item

    report = enqueue_objects(
        client, settings, counted(), reclassify=reclassify, processes=available_cpus(), model_id=model_id
    )
    return report, listed


def reclassify_target(settings: Settings, requested: str | None, client: redis.Redis | None = None) -> str:
    """The model a ``--reclassify`` is for: the one named, else the one this producer's model settings
    (MOMENTS_WEIGHTS, MOMENTS_CATEGORIES, MOMENTS_MODEL) name, identified as a consumer would.

    A named model must be one a live consumer runs or one that has counted videos (checked on
    ``client``): jobs for any other model would be handed back by every consumer, each of which then
    retires for good, and the videos would wait for a model nobody runs."""
    if requested:
        if client is not None:
            check_model_known(client, settings, requested)
        return requested
    from consumer.classify import configured_model_id  # torch: only --reclassify needs it

    try:
        return configured_model_id(settings)
    except MomentsError as error:
        raise ConfigError(
            f"--reclassify needs the model the videos are for; the configured weights cannot be read: {error.message}",
            fix="make MOMENTS_WEIGHTS readable here, or name the model with --for-model ID (as `consumer classify "
            "--json` or the consumers' model_loaded event prints it)",
        ) from None


def check_model_known(client: redis.Redis, settings: Settings, model_id: str) -> None:
    """Refuse a model id no live consumer runs and none has counted with (:func:`reclassify_target`)."""
    running = live_consumer_models(client, settings)
    counted = known_models(client, settings.keys)
    if model_id in running or model_id in counted:
        return
    known = ", ".join(sorted(running | set(counted))) or "none yet"
    raise ConfigError(
        f"--for-model {model_id!r} is not a model any live consumer runs or that has counted videos "
        f"(known: {known}); consumers would hand its jobs back and stop",
        fix="start consumers with that model's weights first (their model_loaded event prints its id) and name "
        "it again, or leave out --for-model and set MOMENTS_WEIGHTS to the new weights",
    )


def enqueue_prefix(
    settings: Settings, prefix: str, reclassify: bool = False, model_id: str | None = None
) -> EnqueueReport:
    """Enqueue what is new under ``prefix``; with ``reclassify``, every video again, for ``model_id``
    (default: the model the settings name; a model named must be known, :func:`reclassify_target`)."""
    client = ensure_redis(settings)
    target = reclassify_target(settings, model_id, client) if reclassify else None
    storage = lithops_storage(settings)
    report, listed = enqueue_pass(client, storage, settings, prefix, reclassify, target)
    if listed == 0:
        raise ConfigError(
            f"no objects under prefix {prefix!r} in bucket {settings.bucket!r}",
            fix="check the prefix and --bucket/MOMENTS_BUCKET; `producer upload DIR PREFIX` copies local files in",
        )
    log.info("enqueued", prefix=prefix, bucket=settings.bucket, enqueued=report.enqueued,
             skipped=report.skipped, ignored=report.ignored, model_id=target)
    return report


def watch_prefix(settings: Settings, prefix: str, interval_s: float, stop: threading.Event) -> EnqueueReport:
    """Enqueue new uploads under ``prefix`` every ``interval_s`` until ``stop`` is set.

    A missing bucket or a refused Redis fails the first pass, as ``enqueue`` does; later, Redis
    outages and storage errors are logged and the next pass tries again.
    """
    client = ensure_redis(settings)
    storage = lithops_storage(settings)
    total = EnqueueReport()
    passes = 0
    backoff = Backoff()
    while not stop.is_set():
        try:
            report, listed = enqueue_pass(client, storage, settings, prefix)
        except REDIS_OUTAGE as error:
            backoff.wait(error)
            continue
        except Exception:
            if passes == 0:
                raise
            log.exception("watch_pass_failed", prefix=prefix, bucket=settings.bucket)
        else:
            backoff.reset()
            total.add(report)
            level = log.info if report.enqueued else log.debug
            level("watch_pass", prefix=prefix, listed=listed, enqueued=report.enqueued, skipped=report.skipped)
        passes += 1
        stop.wait(interval_s)
    log.info("watch_stopped", prefix=prefix, passes=passes, enqueued=total.enqueued)
    return total


def upload(settings: Settings, directory: Path, prefix: str) -> UploadReport:
    """Copy the videos of a local folder into the settings' bucket under ``prefix``."""
    report = upload_directory(lithops_storage(settings), settings.bucket, directory, prefix)
    log.info("uploaded", directory=str(directory), prefix=prefix, bucket=settings.bucket,
             uploaded=report.uploaded, unchanged=report.unchanged)
    return report
