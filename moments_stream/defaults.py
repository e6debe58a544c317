"""Every default of moments-stream, in one place (rq's ``rq/defaults.py`` style).

The first part holds the default and the allowed range of each environment setting
(``moments_stream.settings`` reads and checks the variables; README's settings table documents
them). The second part holds the constants that are no setting at all: the published model
releases and their URLs, the job functions rq imports by dotted path, the views' time windows.
``moments_stream.settings`` re-exports all of them, so ``from moments_stream.settings import X``
keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .keys import DEFAULT_NAMESPACE as DEFAULT_NAMESPACE

# --- defaults and limits of the environment settings (MOMENTS_*) ------------------------------------

DEFAULT_MODEL = "v1"
# The release's test_video.py samples 16 frames per clip.
DEFAULT_NUM_FRAMES = 16
MAX_NUM_FRAMES = 1024
DEFAULT_PRECISION = "fp32"
PRECISIONS = ("fp32", "bf16", "fp16")
# What runs the forward pass (consumer/engines.py); auto: the fastest exact one for the device.
ENGINES = ("auto", "torch", "openvino", "onnxruntime")
DEFAULT_ENGINE = "auto"
# auto: cuda when torch sees a GPU, else cpu; or cpu, cuda, cuda:N.
DEFAULT_DEVICE = "auto"
DEVICE_PATTERN = r"auto|cpu|cuda(:[0-9]+)?"
# Threads per model and decode threads per GPU consumer: 0 (unset) lets the consumer choose.
MAX_THREADS = 1024
DEFAULT_COMPILE = False
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_URL_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_EMBEDDED_REDIS = True
DEFAULT_BUCKET = "moments-stream"
# Bucket, namespace and queue names: letters, digits, '.', '_' or '-', starting with a letter or a
# digit (no '/', no '..': a localhost bucket is a directory).
BUCKET_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}"
NAMESPACE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
QUEUE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
# Refuse to download or decode absurd inputs rather than exhausting a function's memory.
DEFAULT_MAX_VIDEO_BYTES = 2 * 1024**3
# Frames of at most this many pixels are decoded: the largest picture an H.264 or HEVC level 6.2
# decoder must take (8192x4352, 8K UHD's 7680x4320 included), about 53 MB a YUV frame, 1 GB or
# so with the frames FFmpeg holds while decoding; a larger stream is refused before decoding.
DEFAULT_MAX_FRAME_PIXELS = 8192 * 4352
# Frames decoded per video at most where it must be walked (no sane timestamps to seek by): the
# walk stops here (30 minutes at 30 fps). Seekable videos are sampled over their whole length.
DEFAULT_MAX_DECODED_FRAMES = 30 * 60 * 30
DEFAULT_JOB_TIMEOUT_S = 600
DEFAULT_JOB_RETRIES = 2
MAX_JOB_RETRIES = 100
# rq retries a failed attempt after these many seconds (MOMENTS_RETRY_INTERVALS, one a retry, the
# last repeating; 0 queues the retry at once), then gives up (rq's failed registry).
DEFAULT_RETRY_INTERVALS = "5,30"
MAX_RETRY_INTERVAL_S = 24 * 3600
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
MIN_CONSUMER_LEASE_S = 3
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
# Lithops localhost kills a function after execution_timeout (default 3600 s); consumers
# stop taking new videos this long before their backend's limit.
DEFAULT_FUNCTION_TIMEOUT_S = 3600
DEFAULT_STOP_MARGIN_S = 120

# --- defaults of command-line options -----------------------------------------------------------------

DEFAULT_WORKERS = 1
DEFAULT_TOP_K = 5
DEFAULT_VIDEO_EXTENSIONS = ("mp4", "avi", "mkv", "webm", "mov", "m4v")
# On a GPU, this many threads per consumer download and decode videos (each its own rq worker)
# and their frames go through the model together. A CPU consumer classifies one video at a time:
# decode and inference compete for the same cores, and separate processes do better.
DEFAULT_GPU_DECODE_THREADS = 8

# --- constants that are no setting -------------------------------------------------------------------


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


def packaged_categories(release: ModelRelease) -> Path:
    """The release's category list as shipped in this package (byte for byte the published file)."""
    return Path(__file__).parent / "data" / release.categories_url.rsplit("/", 1)[-1]


# The consumer's rq job interface, referenced by dotted path so the producer need not import
# torch: enqueueing must stay light.
CLASSIFY_JOB = "consumer.jobs.classify_videos"
FAILURE_CALLBACK = "consumer.jobs.on_job_failure"
# The field of a consumer's rq worker hash that names the model it runs (`aggregator check` finds
# jobs for a model no live consumer runs); it expires with the worker's lease.
WORKER_MODEL_FIELD = "moments_model"
# The queue of videos that consumers pull from (an rq queue, so `rq info` shows it): named after
# the namespace, ``<namespace>-videos``, unless MOMENTS_QUEUE names another.
QUEUE_NAME_SUFFIX = "-videos"
# Runtime images (runtime/) bake the weights and categories into this download cache, so cloud
# functions find them instead of downloading 194 MB at every cold start.
RUNTIME_CACHE_DIR = "/opt/moments-stream/cache"
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
