"""The Lithops configuration every stage uses, and the results queue they share.

The user's own Lithops config (``LITHOPS_CONFIG_FILE``, ``~/.lithops/config``) is honoured;
what it leaves out defaults to localhost compute and storage with the current interpreter as
runtime (Lithops' default name ``python`` can find another interpreter). The ``redis``
section always comes from ``MOMENTS_REDIS_URL``, so that the lithops Queue and the rest of
the pipeline can never talk to two different servers.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import sys
from typing import Any

import cloudpickle
import lithops
import lithops.config
import redis
from lithops.multiprocessing import Queue
from lithops.multiprocessing import config as mp_config

from . import keys
from .redis_conn import lithops_redis_section
from .settings import Settings


def lithops_config(settings: Settings, workers: int | None = None, execution_timeout: int | None = None) -> dict:
    config: dict[str, Any] = copy.deepcopy(lithops.config.load_config(log=False))
    section = config.setdefault("lithops", {})
    section.setdefault("backend", "localhost")
    section.setdefault("storage", "localhost")
    # Lithops prints INFO lines for every wait and cleanup; users see our events instead, and
    # Lithops' own lines with --verbose (configure_logging sets the "lithops" logger's level).
    lithops_level = max(logging.getLogger("lithops").getEffectiveLevel(), logging.DEBUG)
    section.setdefault("log_level", logging.getLevelName(lithops_level))
    if execution_timeout is not None:
        section["execution_timeout"] = execution_timeout
    if section["backend"] == "localhost":
        localhost = config.setdefault("localhost", {})
        if not str(localhost.get("runtime", "")).startswith("/"):
            localhost["runtime"] = sys.executable
        if workers is not None:
            localhost["worker_processes"] = max(workers, int(localhost.get("worker_processes", 1)))
    config["redis"] = lithops_redis_section(settings.redis_url)
    return config


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


def storage(settings: Settings) -> lithops.Storage:
    return lithops.Storage(config=lithops_config(settings))


def export_for_multiprocessing(config: dict, results_ttl_s: int) -> None:
    """Point lithops.multiprocessing at our Redis (it reads LITHOPS_CONFIG) and lengthen key expiry."""
    os.environ["LITHOPS_CONFIG"] = json.dumps(config)
    mp_config.set_parameter(mp_config.REDIS_EXPIRY_TIME, results_ttl_s)


def results_queue(client: redis.Redis, settings: Settings) -> Queue:
    """The one lithops Queue that consumers publish on and the aggregator drains.

    Lithops names a Queue randomly and deletes its keys when its creator's last reference
    goes; ours must outlive any single process, so it is created once, marked ``managed``
    (no reference counting) and its pickled handle kept in Redis for every later process.
    The handle holds the Redis connection parameters, which Redis itself already knows.
    """
    export_for_multiprocessing(lithops_config(settings), settings.results_ttl_s)
    stored = client.get(keys.results_queue())
    if stored is None:
        queue = Queue()
        queue._ref.managed = True
        if client.set(keys.results_queue(), cloudpickle.dumps(queue), nx=True):
            return queue
        stored = client.get(keys.results_queue())
    return cloudpickle.loads(stored)
