"""Consumer liveness: a short lease on each rq worker, and handing back the videos of dead ones.

rq's ``SimpleWorker`` sets its worker key to expire long after the job's timeout, so a consumer
killed mid-video (SIGKILL, OOM, a function past its time limit) would hold its video for
``job_timeout + 60`` seconds. Each consumer instead keeps its rq worker key alive with a short
lease from a heartbeat thread, and every worker's maintenance marks the started jobs of workers
whose key has expired as expired; rq's own abandoned-job handling then retries them (or moves
them to the failed registry, calling our failure callback, when no retry is left).
"""

from __future__ import annotations

import threading

import redis
from rq import Queue, Worker
from rq.executions import Execution
from rq.scheduler import RQScheduler

from moments_stream.logs import get_logger
from moments_stream.redis_conn import REDIS_OUTAGE, text

log = get_logger(__name__)

# Deletes a lock only while ``ARGV[1]`` still holds it (a live scheduler may have taken it since).
_RELEASE_LOCK_OF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def worker_is_alive(connection: redis.Redis, worker_name: str) -> bool:
    return bool(connection.exists(Worker.redis_worker_namespace_prefix + worker_name))


def expire_jobs_of_dead_workers(queue: Queue) -> list[str]:
    """Mark the started jobs whose worker's lease has lapsed as expired; returns their job ids.

    Only marks them, through rq's own ``add_execution`` (an execution whose time to live is 0 has
    expired now): rq's ``StartedJobRegistry.cleanup`` (run under rq's maintenance lock) then retries
    or fails them, so there is one code path for abandoned jobs, rq's.
    """
    connection = queue.connection
    registry = queue.started_job_registry
    expired = []
    for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
        try:
            execution = Execution.fetch(execution_id, job_id, connection)
        except ValueError:
            continue  # no execution record: leave it to rq's own expiry
        if not execution.worker_name or worker_is_alive(connection, execution.worker_name):
            continue
        with connection.pipeline() as pipeline:
            registry.add_execution(execution, pipeline, ttl=0, xx=True)  # xx: never re-adds one that finished
            pipeline.execute()
        expired.append(job_id)
        log.warning("video_returned_to_queue", job=job_id, dead_worker=execution.worker_name)
    return expired


def release_retry_locks_of_dead_workers(queue: Queue) -> None:
    """Free rq's scheduler lock of ``queue`` when the worker holding it is dead.

    Each consumer runs rq's scheduler steps under that lock (named after the worker); it would
    otherwise keep a dead worker's lock for rq's 61 s and delay due retries by as much.
    """
    lock_key = RQScheduler.get_locking_key(queue.name)
    owner = queue.connection.get(lock_key)
    if owner is not None and not worker_is_alive(queue.connection, text(owner)):
        queue.connection.register_script(_RELEASE_LOCK_OF)(keys=[lock_key], args=[text(owner)])


class Heartbeat:
    """Calls ``beat`` every ``interval_s`` on a daemon thread until stopped; Redis errors are logged."""

    def __init__(self, beat, interval_s: float, worker: str) -> None:
        self._beat = beat
        self._interval_s = interval_s
        self._worker = worker
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{worker}", daemon=True)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                self._beat()
            except REDIS_OUTAGE as error:
                log.warning("heartbeat_failed", worker=self._worker, error=str(error))

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
