"""Every default and every environment variable of moments-stream, in one place.

Stages never read ``os.environ`` themselves: they take a :class:`Settings` built by
:func:`Settings.from_env` (CLI flags override fields with :meth:`Settings.replace`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .keys import DEFAULT_NAMESPACE, Keys


@dataclass(frozen=True)
class ModelRelease:
    """One published Moments in Time checkpoint and the category list that matches it."""

    name: str
    weights_url: str
    weights_size: int | None
    categories_url: str
    num_classes: int


MODEL_RELEASES: dict[str, ModelRelease] = {
    "v1": ModelRelease(
        name="v1",
        weights_url="http://moments.csail.mit.edu/moments_models/moments_RGB_resnet50_imagenetpretrained.pth.tar",
        weights_size=193_898_685,
        categories_url=(
            "https://raw.githubusercontent.com/zhoubolei/moments_models/"
            "5df0950626aaade0b90f57a7caa52de2282098f1/category_momentsv1.txt"
        ),
        num_classes=339,
    ),
    "v2": ModelRelease(
        name="v2",
        weights_url="http://moments.csail.mit.edu/moments_models/moments_v2_RGB_resnet50_imagenetpretrained.pth.tar",
        weights_size=None,
        categories_url="https://raw.githubusercontent.com/zhoubolei/moments_models/master/category_momentsv2.txt",
        num_classes=305,
    ),
}

DEFAULT_MODEL = "v1"


def packaged_categories(release: ModelRelease) -> Path:
    """The release's category list as shipped in this package (byte for byte the published file)."""
    return Path(__file__).parent / "data" / release.categories_url.rsplit("/", 1)[-1]
# The release's test_video.py samples 16 frames per clip.
DEFAULT_NUM_FRAMES = 16
DEFAULT_PRECISION = "fp32"
PRECISIONS = ("fp32", "bf16", "fp16")
# What runs the forward pass (consumer/engines.py); auto: the fastest exact one for the device.
ENGINES = ("auto", "torch", "openvino", "onnxruntime")
DEFAULT_ENGINE = "auto"
DEFAULT_TOP_K = 5
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_BUCKET = "moments-stream"
DEFAULT_VIDEO_EXTENSIONS = ("mp4", "avi", "mkv", "webm", "mov", "m4v")
# Refuse to download or decode absurd inputs rather than exhausting a function's memory.
DEFAULT_MAX_VIDEO_BYTES = 2 * 1024**3
# Frames of at most this many pixels are decoded: the largest picture an H.264 or HEVC level 6.2
# decoder must take (8192x4352, 8K UHD's 7680x4320 included), about 53 MB a YUV frame, 1 GB or
# so with the frames FFmpeg holds while decoding; a larger stream is refused before decoding.
DEFAULT_MAX_FRAME_PIXELS = 8192 * 4352
# The queue of videos that consumers pull from (an rq queue, so `rq info` shows it): named after
# the namespace, ``<namespace>-videos``, unless MOMENTS_QUEUE names another.
QUEUE_NAME_SUFFIX = "-videos"
DEFAULT_WORKERS = 1
# Lithops localhost kills a function after execution_timeout (default 3600 s); consumers
# stop taking new videos this long before their backend's limit.
DEFAULT_FUNCTION_TIMEOUT_S = 3600
DEFAULT_STOP_MARGIN_S = 120
# On a GPU, this many threads per consumer download and decode videos (each its own rq worker)
# and their frames go through the model together. A CPU consumer classifies one video at a time:
# decode and inference compete for the same cores, and separate processes do better.
DEFAULT_GPU_DECODE_THREADS = 8
# Runtime images (runtime/) bake the weights and categories into this download cache, so cloud
# functions find them instead of downloading 194 MB at every cold start.
RUNTIME_CACHE_DIR = "/opt/moments-stream/cache"
DEFAULT_JOB_TIMEOUT_S = 600
DEFAULT_JOB_RETRIES = 2
# Videos per rq job. One keeps CPU consumers evenly loaded; a GPU fleet, where rq's per-job
# bookkeeping would cost more than the classification, takes them in batches (bench/fleet.py).
DEFAULT_JOB_BATCH = 1
MAX_JOB_BATCH = 1000
# A batch publishes its outcomes together (one round trip for many videos) but holds none longer
# than this, so counts stay live when videos are slow.
DEFAULT_PUBLISH_LINGER_MS = 1000
MAX_PUBLISH_LINGER_MS = 60_000
# Predictions wait on the lithops Queue for the aggregator; its keys expire this long after
# the last put (lithops' own default is 1 h, shorter than an aggregator outage may last).
DEFAULT_RESULTS_TTL_S = 7 * 24 * 3600
# A consumer refreshes its liveness (its rq worker key) every third of this; a video whose
# worker has not been seen for this long goes back on the queue (rq's abandoned-job handling).
DEFAULT_CONSUMER_LEASE_S = 30
# An outcome published this long ago and still not recorded (its queue message was lost with an
# aggregator) is recorded from the outbox.
DEFAULT_RECOVER_AFTER_S = 30
# A pending video that no job holds (not queued, in flight, scheduled for a retry, in rq's failed
# registry, nor awaiting the aggregator in the outbox) for this long is enqueued again by the
# aggregator's reconciler, at most this many times; then it is recorded failed with that reason.
DEFAULT_RECONCILE_AFTER_S = 300
DEFAULT_RECONCILE_ROUNDS = 3
MAX_RECONCILE_ROUNDS = 100
# A consumer whose storage is unreachable retries the download this long before the attempt fails
# (and rq retries it later): an outage of the store is not the video's fault.
DEFAULT_STORAGE_OUTAGE_S = 300
# Frames decoded per video at most where it must be walked (no sane timestamps to seek by): the
# walk stops here (30 minutes at 30 fps). Seekable videos are sampled over their whole length.
DEFAULT_MAX_DECODED_FRAMES = 30 * 60 * 30
# Model ids of random test checkpoints start with this, so no view passes them off as real.
SYNTHETIC_MODEL_PREFIX = "synthetic-"
# How far back the record of recently finished videos (throughput, ETA) reaches.
RECENT_WINDOW_S = 600
# `aggregator status` reports throughput over this last stretch of time.
THROUGHPUT_WINDOW_S = 60
# The stages a consumer times (an outcome's download_ms, decode_ms, infer_ms), and the upper bounds
# in seconds of their histograms' buckets (`aggregator metrics`). The aggregator keeps cumulative
# bucket counts in Redis (Keys.stage_seconds): changing the bounds needs those hashes deleted.
TIMED_STAGES = ("download", "decode", "infer")
STAGE_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def cache_dir_from(env: Mapping[str, str]) -> Path:
    """``MOMENTS_CACHE_DIR``, else ``$XDG_CACHE_HOME/moments-stream`` or ``~/.cache/moments-stream``."""
    if env.get("MOMENTS_CACHE_DIR"):
        return Path(env["MOMENTS_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moments-stream"


def _default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "moments-stream"


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer", fix=f"set {name} to a whole number") from None


@dataclass(frozen=True)
class Settings:
    """Resolved configuration shared by producer, consumer and aggregator."""

    model: str = DEFAULT_MODEL
    weights: str | None = None
    categories: str | None = None
    weights_sha256: str | None = None
    cache_dir: Path = dataclasses.field(default_factory=lambda: cache_dir_from(os.environ))
    data_dir: Path = dataclasses.field(default_factory=lambda: _default_data_dir(os.environ))
    num_frames: int = DEFAULT_NUM_FRAMES
    precision: str = DEFAULT_PRECISION
    engine: str = DEFAULT_ENGINE
    threads: int | None = None
    compile: bool = False
    decode_threads: int | None = None
    device: str = "auto"
    redis_url: str = DEFAULT_REDIS_URL
    # Where the consumer functions reach Redis, when not at redis_url (the launcher's address):
    # e.g. a private address in the cloud, or the Docker bridge's gateway for localhost containers.
    function_redis_url: str | None = None
    embedded_redis: bool = True
    bucket: str = DEFAULT_BUCKET
    namespace: str = DEFAULT_NAMESPACE
    queue: str | None = None
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES
    job_timeout_s: int = DEFAULT_JOB_TIMEOUT_S
    job_retries: int = DEFAULT_JOB_RETRIES
    job_batch: int = DEFAULT_JOB_BATCH
    publish_linger_ms: int = DEFAULT_PUBLISH_LINGER_MS
    results_ttl_s: int = DEFAULT_RESULTS_TTL_S
    consumer_lease_s: int = DEFAULT_CONSUMER_LEASE_S
    recover_after_s: int = DEFAULT_RECOVER_AFTER_S
    reconcile_after_s: int = DEFAULT_RECONCILE_AFTER_S
    reconcile_rounds: int = DEFAULT_RECONCILE_ROUNDS
    max_decoded_frames: int = DEFAULT_MAX_DECODED_FRAMES
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    stop_margin_s: int = DEFAULT_STOP_MARGIN_S
    storage_outage_s: int = DEFAULT_STORAGE_OUTAGE_S
    # Tests only: a directory where a consumer stops before publishing the outcome of a video that
    # has a ``hold-<name>`` file there (see consumer.jobs.hold_for_test), so a fault test can act
    # while a video is known to be in hand. Never set in production.
    test_barrier_dir: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        settings = cls(
            model=env.get("MOMENTS_MODEL", DEFAULT_MODEL),
            weights=env.get("MOMENTS_WEIGHTS") or None,
            categories=env.get("MOMENTS_CATEGORIES") or None,
            weights_sha256=env.get("MOMENTS_WEIGHTS_SHA256") or None,
            cache_dir=cache_dir_from(env),
            data_dir=Path(env["MOMENTS_DATA_DIR"]) if env.get("MOMENTS_DATA_DIR") else _default_data_dir(env),
            num_frames=_int(env, "MOMENTS_NUM_FRAMES", DEFAULT_NUM_FRAMES),
            precision=env.get("MOMENTS_PRECISION", DEFAULT_PRECISION),
            engine=env.get("MOMENTS_ENGINE", DEFAULT_ENGINE),
            threads=_int(env, "MOMENTS_THREADS", 0) or None,
            compile=env.get("MOMENTS_COMPILE", "0") not in ("0", "", "false", "no"),
            decode_threads=_int(env, "MOMENTS_DECODE_THREADS", 0) or None,
            device=env.get("MOMENTS_DEVICE", "auto"),
            redis_url=env.get("MOMENTS_REDIS_URL", DEFAULT_REDIS_URL),
            function_redis_url=env.get("MOMENTS_FUNCTION_REDIS_URL") or None,
            embedded_redis=env.get("MOMENTS_EMBEDDED_REDIS", "1") not in ("0", "false", "no"),
            bucket=env.get("MOMENTS_BUCKET", DEFAULT_BUCKET),
            namespace=env.get("MOMENTS_NAMESPACE") or DEFAULT_NAMESPACE,
            queue=env.get("MOMENTS_QUEUE") or None,
            max_video_bytes=_int(env, "MOMENTS_MAX_VIDEO_BYTES", DEFAULT_MAX_VIDEO_BYTES),
            job_timeout_s=_int(env, "MOMENTS_JOB_TIMEOUT", DEFAULT_JOB_TIMEOUT_S),
            job_retries=_int(env, "MOMENTS_JOB_RETRIES", DEFAULT_JOB_RETRIES),
            job_batch=_int(env, "MOMENTS_JOB_BATCH", DEFAULT_JOB_BATCH),
            publish_linger_ms=_int(env, "MOMENTS_PUBLISH_LINGER_MS", DEFAULT_PUBLISH_LINGER_MS),
            results_ttl_s=_int(env, "MOMENTS_RESULTS_TTL", DEFAULT_RESULTS_TTL_S),
            consumer_lease_s=_int(env, "MOMENTS_CONSUMER_LEASE", DEFAULT_CONSUMER_LEASE_S),
            recover_after_s=_int(env, "MOMENTS_RECOVER_AFTER", DEFAULT_RECOVER_AFTER_S),
            reconcile_after_s=_int(env, "MOMENTS_RECONCILE_AFTER", DEFAULT_RECONCILE_AFTER_S),
            reconcile_rounds=_int(env, "MOMENTS_RECONCILE_ROUNDS", DEFAULT_RECONCILE_ROUNDS),
            max_decoded_frames=_int(env, "MOMENTS_MAX_DECODED_FRAMES", DEFAULT_MAX_DECODED_FRAMES),
            max_frame_pixels=_int(env, "MOMENTS_MAX_FRAME_PIXELS", DEFAULT_MAX_FRAME_PIXELS),
            stop_margin_s=_int(env, "MOMENTS_STOP_MARGIN", DEFAULT_STOP_MARGIN_S),
            storage_outage_s=_int(env, "MOMENTS_STORAGE_OUTAGE", DEFAULT_STORAGE_OUTAGE_S),
            test_barrier_dir=env.get("MOMENTS_TEST_BARRIER_DIR") or None,
        )
        return settings.validated()

    def replace(self, **changes: Any) -> Settings:
        """A copy with the given fields changed; ``None`` values keep the current field."""
        given = {name: value for name, value in changes.items() if value is not None}
        return dataclasses.replace(self, **given).validated()

    def validated(self) -> Settings:
        if self.model not in MODEL_RELEASES:
            raise ConfigError(
                f"unknown model {self.model!r}",
                fix=f"use one of: {', '.join(MODEL_RELEASES)} (MOMENTS_MODEL or --model)",
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}", fix=f"use one of: {', '.join(PRECISIONS)}")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown inference engine {self.engine!r}",
                              fix=f"use one of: {', '.join(ENGINES)} (MOMENTS_ENGINE or --engine)")
        if self.num_frames < 1:
            raise ConfigError(f"num_frames must be at least 1, got {self.num_frames}", fix="use --frames 16")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.namespace):
            raise ConfigError(
                f"namespace {self.namespace!r} is not a plain name",
                fix="set MOMENTS_NAMESPACE to letters, digits, '.', '_' or '-' (at most 64), e.g. moments",
            )
        if not 1 <= self.job_batch <= MAX_JOB_BATCH:
            raise ConfigError(f"MOMENTS_JOB_BATCH={self.job_batch} is out of range",
                              fix=f"videos per job: 1 (CPU consumers) up to {MAX_JOB_BATCH}, e.g. 64 for GPU consumers")
        if not 0 <= self.publish_linger_ms <= MAX_PUBLISH_LINGER_MS:
            raise ConfigError(f"MOMENTS_PUBLISH_LINGER_MS={self.publish_linger_ms} is out of range",
                              fix=f"0 (publish each outcome at once) up to {MAX_PUBLISH_LINGER_MS}; default "
                                  f"{DEFAULT_PUBLISH_LINGER_MS}")
        if self.reconcile_after_s < 1:
            raise ConfigError(f"MOMENTS_RECONCILE_AFTER={self.reconcile_after_s} is too short",
                              fix=f"seconds a pending video may have no job before it is enqueued again: at least 1; "
                                  f"default {DEFAULT_RECONCILE_AFTER_S}")
        if not 0 <= self.reconcile_rounds <= MAX_RECONCILE_ROUNDS:
            raise ConfigError(f"MOMENTS_RECONCILE_ROUNDS={self.reconcile_rounds} is out of range",
                              fix=f"times a video with no job is enqueued again before it is recorded failed: 0 up to "
                                  f"{MAX_RECONCILE_ROUNDS}; default {DEFAULT_RECONCILE_ROUNDS}")
        if self.max_frame_pixels < 1:
            raise ConfigError(f"MOMENTS_MAX_FRAME_PIXELS={self.max_frame_pixels} is out of range",
                              fix=f"pixels a frame may have (width x height); default {DEFAULT_MAX_FRAME_PIXELS:,}")
        if self.consumer_lease_s < 3:
            raise ConfigError(f"consumer lease {self.consumer_lease_s} s is too short", fix="MOMENTS_CONSUMER_LEASE=30")
        return self

    @property
    def keys(self) -> Keys:
        """The Redis key names of this pipeline's namespace."""
        return Keys(self.namespace)

    @property
    def queue_name(self) -> str:
        """The rq queue of videos: ``MOMENTS_QUEUE``, else ``<namespace>-videos``."""
        return self.queue or f"{self.namespace}{QUEUE_NAME_SUFFIX}"

    def for_functions(self) -> Settings:
        """These settings as the consumer functions get them: Redis at the address they reach."""
        return dataclasses.replace(self, redis_url=self.function_redis_url or self.redis_url, function_redis_url=None)

    @property
    def release(self) -> ModelRelease:
        return MODEL_RELEASES[self.model]

    @property
    def weights_source(self) -> str:
        return self.weights or self.release.weights_url

    @property
    def categories_source(self) -> str:
        """``MOMENTS_CATEGORIES``, else the release's list shipped in the package (its source URL is
        ``release.categories_url``; see moments_stream/data/README.md)."""
        return self.categories or str(packaged_categories(self.release))


# The consumer's rq job interface, referenced by dotted path so the producer need not import
# torch: enqueueing must stay light.
CLASSIFY_JOB = "consumer.jobs.classify_videos"
FAILURE_CALLBACK = "consumer.jobs.on_job_failure"
# The field of a consumer's rq worker hash that names the model it runs (`aggregator check` finds
# jobs for a model no live consumer runs); it expires with the worker's lease.
WORKER_MODEL_FIELD = "moments_model"
# rq retries a failed attempt after these many seconds (then gives up: failed registry).
RETRY_INTERVALS_S = (5, 30)
