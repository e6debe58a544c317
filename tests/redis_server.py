"""A real redis-server on a free loopback port for one test (or one session)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import redis

from moments_stream.redis_conn import start_redis_server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_redis(data_dir: Path, extra_args: list[str] | None = None, password: str | None = None) -> Iterator[str]:
    port = free_port()
    args = list(extra_args or [])
    if password:
        args += ["--requirepass", password]
    start_redis_server(port, data_dir, args)
    auth = f":{password}@" if password else ""
    try:
        yield f"redis://{auth}127.0.0.1:{port}/0"
    finally:
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis(host="127.0.0.1", port=port, password=password).shutdown(nosave=True)
