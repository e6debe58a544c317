"""Every environment variable of moments-stream, read and checked in one place.

Stages never read ``os.environ`` themselves: they take a :class:`Settings` built by
:func:`Settings.from_env`. :data:`ENVIRONMENT` lists every ``MOMENTS_*`` variable with the field
it sets and the values it allows; a value outside them is a :class:`ConfigError` that names the
variable and what it allows, raised where the variable is read. :meth:`Settings.replace` is the
one way to change settings afterwards (command-line flags, a consumer's own cache): it checks the
new values the same way. The defaults live in ``moments_stream.defaults`` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .defaults import (
    BUCKET_PATTERN,
    CLASSIFY_JOB,
    DEFAULT_BUCKET,
    DEFAULT_COMPILE,
    DEFAULT_CONSUMER_LEASE_S,
    DEFAULT_DEVICE,
    DEFAULT_EMBEDDED_REDIS,
    DEFAULT_ENGINE,
    DEFAULT_FUNCTION_TIMEOUT_S,
    DEFAULT_GPU_DECODE_THREADS,
    DEFAULT_JOB_BATCH,
    DEFAULT_JOB_RETRIES,
    DEFAULT_JOB_TIMEOUT_S,
    DEFAULT_MAX_DECODED_FRAMES,
    DEFAULT_MAX_FRAME_PIXELS,
    DEFAULT_MAX_VIDEO_BYTES,
    DEFAULT_MODEL,
    DEFAULT_NAMESPACE,
    DEFAULT_NUM_FRAMES,
    DEFAULT_PRECISION,
    DEFAULT_PUBLISH_LINGER_MS,
    DEFAULT_RECONCILE_AFTER_S,
    DEFAULT_RECONCILE_ROUNDS,
    DEFAULT_RECOVER_AFTER_S,
    DEFAULT_REDIS_URL,
    DEFAULT_RESULTS_TTL_S,
    DEFAULT_RETRY_INTERVALS,
    DEFAULT_STOP_MARGIN_S,
    DEFAULT_STORAGE_OUTAGE_S,
    DEFAULT_TOP_K,
    DEFAULT_VIDEO_EXTENSIONS,
    DEFAULT_WORKERS,
    DEVICE_PATTERN,
    ENGINES,
    FAILURE_CALLBACK,
    MAX_JOB_BATCH,
    MAX_JOB_RETRIES,
    MAX_NUM_FRAMES,
    MAX_PUBLISH_LINGER_MS,
    MAX_RECONCILE_ROUNDS,
    MAX_RETRY_INTERVAL_S,
    MAX_THREADS,
    MIN_CONSUMER_LEASE_S,
    MODEL_RELEASES,
    NAMESPACE_PATTERN,
    PRECISIONS,
    QUEUE_NAME_SUFFIX,
    QUEUE_PATTERN,
    RECENT_WINDOW_S,
    REDIS_URL_SCHEMES,
    RUNTIME_CACHE_DIR,
    STAGE_SECONDS_BUCKETS,
    SYNTHETIC_MODEL_PREFIX,
    THROUGHPUT_WINDOW_S,
    TIMED_STAGES,
    WORKER_MODEL_FIELD,
    ModelRelease,
    packaged_categories,
)
from .errors import ConfigError
from .keys import Keys

__all__ = [
    "BUCKET_PATTERN", "CLASSIFY_JOB", "DEFAULT_BUCKET", "DEFAULT_COMPILE", "DEFAULT_CONSUMER_LEASE_S", "DEFAULT_DEVICE",
    "DEFAULT_EMBEDDED_REDIS", "DEFAULT_ENGINE", "DEFAULT_FUNCTION_TIMEOUT_S", "DEFAULT_GPU_DECODE_THREADS",
    "DEFAULT_JOB_BATCH", "DEFAULT_JOB_RETRIES", "DEFAULT_JOB_TIMEOUT_S", "DEFAULT_MAX_DECODED_FRAMES",
    "DEFAULT_MAX_FRAME_PIXELS", "DEFAULT_MAX_VIDEO_BYTES", "DEFAULT_MODEL", "DEFAULT_NAMESPACE", "DEFAULT_NUM_FRAMES",
    "DEFAULT_PRECISION", "DEFAULT_PUBLISH_LINGER_MS", "DEFAULT_RECONCILE_AFTER_S", "DEFAULT_RECONCILE_ROUNDS",
    "DEFAULT_RECOVER_AFTER_S", "DEFAULT_REDIS_URL", "DEFAULT_RESULTS_TTL_S", "DEFAULT_RETRY_INTERVALS",
    "DEFAULT_STOP_MARGIN_S", "DEFAULT_STORAGE_OUTAGE_S", "DEFAULT_TOP_K", "DEFAULT_VIDEO_EXTENSIONS", "DEFAULT_WORKERS",
    "DEVICE_PATTERN", "ENGINES", "ENVIRONMENT", "FAILURE_CALLBACK", "MAX_JOB_BATCH", "MAX_JOB_RETRIES",
    "MAX_NUM_FRAMES", "MAX_PUBLISH_LINGER_MS", "MAX_RECONCILE_ROUNDS", "MAX_RETRY_INTERVAL_S", "MAX_THREADS",
    "MIN_CONSUMER_LEASE_S", "MODEL_RELEASES", "NAMESPACE_PATTERN", "PRECISIONS", "QUEUE_NAME_SUFFIX", "QUEUE_PATTERN",
    "RECENT_WINDOW_S", "REDIS_URL_SCHEMES", "RUNTIME_CACHE_DIR", "STAGE_SECONDS_BUCKETS", "SYNTHETIC_MODEL_PREFIX",
    "THROUGHPUT_WINDOW_S", "TIMED_STAGES", "WORKER_MODEL_FIELD", "EnvVar", "ModelRelease", "Settings", "cache_dir_from",
    "packaged_categories",
]


def cache_dir_from(env: Mapping[str, str]) -> Path:
    """``MOMENTS_CACHE_DIR``, else ``$XDG_CACHE_HOME/moments-stream`` or ``~/.cache/moments-stream``."""
    if env.get("MOMENTS_CACHE_DIR"):
        return Path(env["MOMENTS_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moments-stream"


def _default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "moments-stream"


# --- the kinds of value a variable takes: how its text reads, what it allows ------------------------

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Integer:
    """A whole number from ``low`` to ``high`` (no bound when ``None``); with ``zero_unset``, 0
    means "let the program choose" and reads as ``None``."""

    low: int
    high: int | None = None
    zero_unset: bool = False

    def parse(self, raw: str) -> int | None:
        value = int(raw.strip().replace("_", ""))
        return None if self.zero_unset and value == 0 else value

    def allows(self, value: Any) -> bool:
        if value is None or (value == 0 and self.zero_unset):
            return self.zero_unset
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return value >= self.low and (self.high is None or value <= self.high)

    @property
    def allowed(self) -> str:
        span = (f"a whole number from {self.low} to {self.high}" if self.high is not None
                else f"a whole number, {self.low} or more")
        return f"0 (let the program choose) or {span}" if self.zero_unset else span

    noun = "a whole number"


@dataclass(frozen=True)
class Flag:
    """On or off."""

    def parse(self, raw: str) -> bool:
        word = raw.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError(raw)

    def allows(self, value: Any) -> bool:
        return isinstance(value, bool)

    allowed = "1 or 0 (true/false, yes/no, on/off)"
    noun = "on or off"


@dataclass(frozen=True)
class Choice:
    """One of a few names."""

    values: tuple[str, ...]

    def parse(self, raw: str) -> str:
        return raw.strip()

    def allows(self, value: Any) -> bool:
        return value in self.values

    @property
    def allowed(self) -> str:
        return f"one of: {', '.join(self.values)}"

    noun = "a known name"


@dataclass(frozen=True)
class Name:
    """Text matching ``pattern`` (a bucket, a namespace, a device); ``None`` when unset and optional."""

    pattern: str
    allowed: str
    optional: bool = False

    def parse(self, raw: str) -> str:
        return raw.strip()

    def allows(self, value: Any) -> bool:
        if value is None:
            return self.optional
        return isinstance(value, str) and re.fullmatch(self.pattern, value) is not None

    noun = "a valid name"


@dataclass(frozen=True)
class RedisUrl:
    """A redis-py URL: ``redis://``, ``rediss://`` (TLS) or ``unix://``."""

    optional: bool = False
    allowed = f"a Redis URL ({', '.join(scheme + '://' for scheme in REDIS_URL_SCHEMES)}), e.g. {DEFAULT_REDIS_URL}"
    noun = "a Redis URL"

    def parse(self, raw: str) -> str:
        return raw.strip()

    def allows(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if not isinstance(value, str):
            return False
        try:
            parsed = urllib.parse.urlsplit(value)
            parsed.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError:
            return False
        if parsed.scheme not in REDIS_URL_SCHEMES:
            return False
        return bool(parsed.path) if parsed.scheme == "unix" else bool(parsed.hostname)


@dataclass(frozen=True)
class Source:
    """A file: a local path or an http(s) URL; ``None`` when unset."""

    allowed = "a local path or an http(s) URL"
    noun = "a path or URL"

    def parse(self, raw: str) -> str:
        return raw.strip()

    def allows(self, value: Any) -> bool:
        if value is None:
            return True
        if not isinstance(value, str) or not value or "\0" in value:
            return False
        if "://" in value:
            parsed = urllib.parse.urlsplit(value)
            return parsed.scheme in ("http", "https") and bool(parsed.netloc)
        return True


@dataclass(frozen=True)
class Directory:
    """A local directory; it need not exist yet, but nothing else may stand at its path."""

    allowed = "a directory (or a path where one can be made, not a file)"
    noun = "a directory"

    def parse(self, raw: str) -> Path:
        return Path(raw.strip()).expanduser()

    def allows(self, value: Any) -> bool:
        if not isinstance(value, Path) or "\0" in str(value):
            return False
        try:
            return value.is_dir() or not value.exists()
        except OSError:
            return False


@dataclass(frozen=True)
class Seconds(Name):
    """Comma-separated whole seconds (``5,30``), each at most ``high``; read without spaces."""

    high: int = MAX_RETRY_INTERVAL_S

    def parse(self, raw: str) -> str:
        return re.sub(r"\s+", "", raw)

    def allows(self, value: Any) -> bool:
        return super().allows(value) and all(int(part) <= self.high for part in value.split(","))

    noun = "a list of seconds"


Kind = Integer | Flag | Choice | Name | RedisUrl | Source | Directory


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: the :class:`Settings` field it sets, the kind of value it takes,
    its documented default (as README shows it), what it means, the command-line option that sets
    the field too."""

    name: str
    field: str
    kind: Kind
    default: str
    meaning: str = ""
    flag: str | None = None
    # What the error says the value is, for a name outside a Choice ("inference engine").
    what: str = ""
    # Said in the fix instead of the kind's generic range.
    allowed: str = ""

    @property
    def fix(self) -> str:
        where = f"{self.name} or {self.flag}" if self.flag else self.name
        meaning = f" ({self.meaning})" if self.meaning else ""
        return f"set {where}{meaning} to {self.allowed or self.kind.allowed}; default {self.default}"

    def error(self, shown: str) -> ConfigError:
        """The error for a value this variable does not allow (``shown`` as the user gave it)."""
        if isinstance(self.kind, Choice):
            return ConfigError(f"unknown {self.what or self.field} {shown} ({self.name})", fix=self.fix)
        if isinstance(self.kind, Integer):
            try:
                int(shown.strip().replace("_", ""))
            except ValueError:
                return ConfigError(f"{self.name}={shown!r} is not a whole number", fix=self.fix)
            return ConfigError(f"{self.name}={shown.strip()} is out of range", fix=self.fix)
        return ConfigError(f"{self.name}={shown!r} is not {self.kind.noun}", fix=self.fix)

    def read(self, raw: str) -> Any:
        """The field's value for the variable's text (a :class:`ConfigError` naming it if not allowed)."""
        try:
            value = self.kind.parse(raw)
        except ValueError:
            raise self.error(raw) from None
        if not self.kind.allows(value):
            raise self.error(raw if not isinstance(self.kind, Choice) else repr(raw.strip()))
        return value

    def check(self, value: Any) -> None:
        if not self.kind.allows(value):
            raise self.error(repr(value) if isinstance(self.kind, Choice) else str(value))


_PLAIN = "letters, digits, '.', '_' or '-', starting with a letter or a digit"

# Every MOMENTS_* variable, in README's order (the settings table and the model section).
ENVIRONMENT: tuple[EnvVar, ...] = (
    EnvVar("MOMENTS_REDIS_URL", "redis_url", RedisUrl(), DEFAULT_REDIS_URL, flag="--redis-url"),
    EnvVar("MOMENTS_EMBEDDED_REDIS", "embedded_redis", Flag(), "1",
           meaning="0 keeps the commands from starting a redis-server of their own"),
    EnvVar("MOMENTS_DATA_DIR", "data_dir", Directory(), "~/.local/share/moments-stream",
           meaning="where the embedded Redis keeps its append-only file"),
    EnvVar("MOMENTS_BUCKET", "bucket", Name(BUCKET_PATTERN, f"a bucket name: {_PLAIN} (at most 255)"),
           DEFAULT_BUCKET, flag="--bucket"),
    EnvVar("MOMENTS_NAMESPACE", "namespace", Name(NAMESPACE_PATTERN, f"{_PLAIN} (at most 64), e.g. moments"),
           DEFAULT_NAMESPACE, meaning="the prefix of every Redis key"),
    EnvVar("MOMENTS_QUEUE", "queue", Name(QUEUE_PATTERN, f"an rq queue name: {_PLAIN} or ':' (at most 128)",
                                          optional=True),
           f"<namespace>{QUEUE_NAME_SUFFIX}"),
    EnvVar("MOMENTS_MAX_VIDEO_BYTES", "max_video_bytes", Integer(1), str(DEFAULT_MAX_VIDEO_BYTES),
           meaning="bytes a video may have"),
    EnvVar("MOMENTS_JOB_TIMEOUT", "job_timeout_s", Integer(1), str(DEFAULT_JOB_TIMEOUT_S),
           meaning="seconds one video may take"),
    EnvVar("MOMENTS_JOB_RETRIES", "job_retries", Integer(0, MAX_JOB_RETRIES), str(DEFAULT_JOB_RETRIES),
           meaning="rq retries of a failed attempt"),
    EnvVar("MOMENTS_RETRY_INTERVALS", "retry_intervals",
           Seconds(r"[0-9]{1,6}(,[0-9]{1,6}){0,99}",
                   f"whole seconds from 0 to {MAX_RETRY_INTERVAL_S}, comma-separated, one a retry (the last "
                   "repeats; 0 retries at once), e.g. 5,30"),
           DEFAULT_RETRY_INTERVALS, meaning="seconds before each rq retry"),
    EnvVar("MOMENTS_JOB_BATCH", "job_batch", Integer(1, MAX_JOB_BATCH), str(DEFAULT_JOB_BATCH),
           meaning="videos per job", allowed=f"1 (CPU consumers) up to {MAX_JOB_BATCH}, e.g. 64 for GPU consumers"),
    EnvVar("MOMENTS_PUBLISH_LINGER_MS", "publish_linger_ms", Integer(0, MAX_PUBLISH_LINGER_MS),
           str(DEFAULT_PUBLISH_LINGER_MS), allowed=f"0 (publish each outcome at once) up to {MAX_PUBLISH_LINGER_MS}"),
    EnvVar("MOMENTS_RESULTS_TTL", "results_ttl_s", Integer(1), str(DEFAULT_RESULTS_TTL_S),
           meaning="seconds the results queue's keys live after the last put"),
    EnvVar("MOMENTS_CONSUMER_LEASE", "consumer_lease_s", Integer(MIN_CONSUMER_LEASE_S), str(DEFAULT_CONSUMER_LEASE_S),
           meaning="seconds after which a silent consumer counts as dead"),
    EnvVar("MOMENTS_RECOVER_AFTER", "recover_after_s", Integer(1), str(DEFAULT_RECOVER_AFTER_S),
           meaning="seconds after which an outcome never recorded is recorded from the outbox"),
    EnvVar("MOMENTS_RECONCILE_AFTER", "reconcile_after_s", Integer(1), str(DEFAULT_RECONCILE_AFTER_S),
           meaning="seconds a pending video may have no job before it is enqueued again"),
    EnvVar("MOMENTS_RECONCILE_ROUNDS", "reconcile_rounds", Integer(0, MAX_RECONCILE_ROUNDS),
           str(DEFAULT_RECONCILE_ROUNDS),
           meaning="times a video with no job is enqueued again before it is recorded failed"),
    EnvVar("MOMENTS_STORAGE_OUTAGE", "storage_outage_s", Integer(0), str(DEFAULT_STORAGE_OUTAGE_S),
           meaning="seconds a download is retried while storage is unreachable"),
    EnvVar("MOMENTS_STOP_MARGIN", "stop_margin_s", Integer(0), str(DEFAULT_STOP_MARGIN_S),
           meaning="seconds a consumer's last video has before its function's time limit"),
    EnvVar("MOMENTS_MAX_DECODED_FRAMES", "max_decoded_frames", Integer(1), str(DEFAULT_MAX_DECODED_FRAMES),
           meaning="frames decoded per video at most"),
    EnvVar("MOMENTS_MAX_FRAME_PIXELS", "max_frame_pixels", Integer(1), str(DEFAULT_MAX_FRAME_PIXELS),
           meaning="pixels a frame may have (width x height)"),
    EnvVar("MOMENTS_FUNCTION_REDIS_URL", "function_redis_url", RedisUrl(optional=True), "MOMENTS_REDIS_URL",
           meaning="the Redis address the consumer functions reach"),
    # The model (README's "Model" section).
    EnvVar("MOMENTS_MODEL", "model", Choice(tuple(MODEL_RELEASES)), DEFAULT_MODEL, flag="--model",
           what="model"),
    EnvVar("MOMENTS_WEIGHTS", "weights", Source(), "the release's URL", flag="--weights"),
    EnvVar("MOMENTS_CATEGORIES", "categories", Source(), "the release's list (packaged)", flag="--categories"),
    EnvVar("MOMENTS_WEIGHTS_SHA256", "weights_sha256", Name("[0-9A-Fa-f]{64}", "64 hexadecimal digits", optional=True),
           "none (the release's own for its URL)", meaning="the weights' SHA-256"),
    EnvVar("MOMENTS_CACHE_DIR", "cache_dir", Directory(), "$XDG_CACHE_HOME/moments-stream (~/.cache/moments-stream)",
           meaning="the download cache"),
    EnvVar("MOMENTS_NUM_FRAMES", "num_frames", Integer(1, MAX_NUM_FRAMES), str(DEFAULT_NUM_FRAMES), flag="--frames",
           meaning="frames sampled per video"),
    EnvVar("MOMENTS_PRECISION", "precision", Choice(PRECISIONS), DEFAULT_PRECISION, flag="--precision",
           what="precision"),
    EnvVar("MOMENTS_ENGINE", "engine", Choice(ENGINES), DEFAULT_ENGINE, flag="--engine", what="inference engine"),
    EnvVar("MOMENTS_THREADS", "threads", Integer(1, MAX_THREADS, zero_unset=True), "0 (the CPUs each consumer gets)",
           flag="--threads", meaning="torch threads per model"),
    EnvVar("MOMENTS_COMPILE", "compile", Flag(), "0", flag="--compile", meaning="torch.compile the model"),
    EnvVar("MOMENTS_DECODE_THREADS", "decode_threads", Integer(1, MAX_THREADS, zero_unset=True),
           f"0 ({DEFAULT_GPU_DECODE_THREADS} per GPU consumer, 1 on a CPU)", meaning="decode threads per consumer"),
    EnvVar("MOMENTS_DEVICE", "device", Name(DEVICE_PATTERN, "auto, cpu, cuda or cuda:N"), DEFAULT_DEVICE,
           flag="--device"),
)
_BY_FIELD = {variable.field: variable for variable in ENVIRONMENT}


_UNSET = object()


def _read(env: Mapping[str, str], field: str) -> Any:
    """The field's value from its variable, if set (an empty variable counts as unset)."""
    variable = _BY_FIELD[field]
    raw = env.get(variable.name)
    if raw is None or raw.strip() == "":
        return _UNSET
    return variable.read(raw)


@dataclass(frozen=True)
class Settings:
    """Resolved configuration shared by producer, consumer and aggregator (fields: see ENVIRONMENT)."""

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
    compile: bool = DEFAULT_COMPILE
    decode_threads: int | None = None
    device: str = DEFAULT_DEVICE
    redis_url: str = DEFAULT_REDIS_URL
    # Where the consumer functions reach Redis, when not at redis_url (the launcher's address):
    # e.g. a private address in the cloud, or the Docker bridge's gateway for localhost containers.
    function_redis_url: str | None = None
    embedded_redis: bool = DEFAULT_EMBEDDED_REDIS
    bucket: str = DEFAULT_BUCKET
    namespace: str = DEFAULT_NAMESPACE
    queue: str | None = None
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES
    job_timeout_s: int = DEFAULT_JOB_TIMEOUT_S
    job_retries: int = DEFAULT_JOB_RETRIES
    retry_intervals: str = DEFAULT_RETRY_INTERVALS
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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Every ``MOMENTS_*`` variable of ``env`` (default ``os.environ``), each checked as it is
        read: a :class:`ConfigError` names the first variable whose value is not allowed."""
        env = os.environ if env is None else env
        given = {name: value for name in _BY_FIELD if (value := _read(env, name)) is not _UNSET}
        given.setdefault("cache_dir", cache_dir_from(env))
        given.setdefault("data_dir", _default_data_dir(env))
        return cls(**given).validated()

    def replace(self, **changes: Any) -> Settings:
        """A copy with the given fields changed (``None`` included: it unsets an optional field),
        each new value checked as if its variable had been set: the one way to change settings."""
        return dataclasses.replace(self, **changes).validated()

    def validated(self) -> Settings:
        """These settings, if every field holds a value its variable allows (else a ConfigError
        naming the variable)."""
        for variable in ENVIRONMENT:
            variable.check(getattr(self, variable.field))
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
        return self.replace(redis_url=self.function_redis_url or self.redis_url, function_redis_url=None)

    @property
    def retry_intervals_s(self) -> list[int]:
        """``MOMENTS_RETRY_INTERVALS`` as rq's ``Retry(interval=...)`` takes it."""
        return [int(part) for part in self.retry_intervals.split(",")]

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
