"""The Lithops configuration every stage uses (the results queue lives in ``results``).

The user's own Lithops config (``LITHOPS_CONFIG_FILE``, ``~/.lithops/config``) is honoured;
what it leaves out defaults to localhost compute and storage with the current interpreter as
runtime (Lithops' default name ``python`` can find another interpreter). The ``redis``
section always comes from ``MOMENTS_REDIS_URL``.
"""

from __future__ import annotations

import copy
import importlib
import sys
from typing import Any

import lithops
import lithops.config
from lithops.localhost.config import LocalhostEnvironment, get_environment
from redis.connection import SSLConnection, parse_url

from .settings import Settings


def lithops_config(settings: Settings, workers: int | None = None, execution_timeout: int | None = None) -> dict:
    config: dict[str, Any] = copy.deepcopy(lithops.config.load_config(log=False))
    section = config.setdefault("lithops", {})
    section.setdefault("backend", "localhost")
    section.setdefault("storage", "localhost")
    # Lithops' own lines go through our logging (configure_logging sets the "lithops" logger's
    # level: WARNING, DEBUG with --verbose); "none" keeps its executors from installing a
    # plain-text handler of their own on that logger.
    section["log_level"] = "none"
    if execution_timeout is not None:
        section["execution_timeout"] = execution_timeout
    if section["backend"] == "localhost":
        localhost = config.setdefault("localhost", {})
        if not localhost_runs_in_container(config):
            # Lithops' default runtime is an interpreter's name, which PATH may resolve to another
            # Python than this one (without the project installed).
            localhost["runtime"] = sys.executable
        if workers is not None:
            localhost["worker_processes"] = max(workers, int(localhost.get("worker_processes", 1)))
    config["redis"] = lithops_redis_section(settings.redis_url)
    return config


def localhost_runs_in_container(config: dict) -> bool:
    """Whether the localhost backend runs functions in a container image (``localhost.runtime``
    names an image, e.g. the CPU runtime image) rather than an interpreter on this machine."""
    runtime = str(config.get("localhost", {}).get("runtime") or "")
    return bool(runtime) and get_environment(runtime) == LocalhostEnvironment.CONTAINER


def backend_time_limit_s(config: dict) -> int | None:
    """How long the configured backend lets one function run: its ``runtime_timeout`` from the
    user's config, else Lithops' own default for that backend (Lambda: 180 s unless raised, at
    most 900 s); ``None`` for backends without one (localhost, VMs)."""
    backend = config.get("lithops", {}).get("backend", "localhost")
    configured = config.get(backend, {}).get("runtime_timeout")
    if configured is not None:
        return int(configured)
    try:
        defaults = importlib.import_module(f"lithops.serverless.backends.{backend}.config").DEFAULT_CONFIG_KEYS
    except (ImportError, AttributeError):
        return None
    timeout = defaults.get("runtime_timeout")
    return None if timeout is None else int(timeout)


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


def storage(settings: Settings) -> lithops.Storage:
    return lithops.Storage(config=lithops_config(settings))
