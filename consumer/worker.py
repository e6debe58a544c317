"""The long-running consumer function that Lithops runs: load the model once, pull until told to stop."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from typing import Any

import psutil
import redis
from rq import Queue, SimpleWorker, worker_registration
from rq.exceptions import InvalidJobOperation, StopRequested
from rq.registry import StartedJobRegistry, clean_registries
from rq.scheduler import RQScheduler
from rq.timeouts import JobTimeoutException, TimerDeathPenalty
from rq.utils import now as rq_now

from moments_stream.backoff import Backoff
from moments_stream.lithops_env import storage as lithops_storage
from moments_stream.logs import configure_logging, get_logger
from moments_stream.queues import JOB_SERIALIZER, video_queue
from moments_stream.redis_conn import REDIS_OUTAGE, connect
from moments_stream.results import open_results_queue
from moments_stream.settings import DEFAULT_GPU_DECODE_THREADS, WORKER_MODEL_FIELD, Settings, cache_dir_from

from .classify import load_classifier
from .context import WorkerContext, bind_context, current_context_or_none
from .failure_callback import TimeLimitCut
from .leases import Heartbeat, expire_jobs_of_dead_workers, release_retry_locks_of_dead_workers

log = get_logger(__name__)

# How often an idle worker looks at the stop flag and its deadline, and moves due retries back to
# the queue: rq's maintenance interval, and how long one dequeue waits for a job.
POLL_S = 2
# Kept free at the end of a function's time limit: publishing the last outcome and leaving rq
# cleanly, and the few moments between the backend starting its clock and this process starting.
EXIT_SLACK_S = 15
# Deletes a job's hash only when it holds no status: what rq's heartbeat at the end of a late
# execution recreated (``last_heartbeat`` alone) after another worker had finished and deleted it.
_DELETE_STATUSLESS_JOB = """
if redis.call('HEXISTS', KEYS[1], 'status') == 0 then return redis.call('DEL', KEYS[1]) end
return 0
"""


def process_started() -> float:
    """When this process began, on the ``time.monotonic`` clock. The backend's time limit runs
    from about then (Lithops starts each call in a new process), and imports before the function
    body (torch, ~5 s; far longer on a busy machine or a cold start) already count against it."""
    try:
        age_s = time.time() - psutil.Process().create_time()
    except psutil.Error:
        age_s = 0.0
    return time.monotonic() - max(0.0, age_s)


def time_boxed_penalty(hard_deadline: float) -> type[TimerDeathPenalty]:
    """rq's job timer (a thread's timer: Lithops may run the function off the main thread, where
    SIGALRM cannot be used), cut short where the function's own time limit, ``hard_deadline`` on the
    ``time.monotonic`` clock, comes first: the video is then handed back (:class:`TimeLimitCut`,
    not a failed attempt) and retried by another consumer instead of the backend killing this one
    mid-video. A class, as rq's ``death_penalty_class`` is, one per worker."""

    class TimeBoxedDeathPenalty(TimerDeathPenalty):
        def __init__(self, timeout: Any, exception: type = JobTimeoutException, **kwargs: Any) -> None:
            seconds_left = max(1, int(hard_deadline - time.monotonic()))
            if timeout is None or timeout < 0 or seconds_left < timeout:
                if exception is JobTimeoutException:
                    exception = TimeLimitCut
                timeout = seconds_left
            super().__init__(timeout, exception, **kwargs)

    return TimeBoxedDeathPenalty


class ConsumerWorker(SimpleWorker):
    """An rq worker that also stops at a deadline or when ``consumer stop`` sets the stop flag.

    Built on rq's public extension points: the constructor's ``maintenance_interval`` (the poll,
    :data:`POLL_S`), ``death_penalty_class`` (:func:`time_boxed_penalty`), the overridable
    ``run_maintenance_tasks``, ``clean_registries``, ``heartbeat``, ``handle_warm_shutdown_request``,
    ``dequeue_job_and_maintain_ttl`` and ``execute_job``, and rq's ``StopRequested`` to leave the work
    loop. One private member is overridden, ``_install_signal_handlers`` (README, "rq internals").
    """

    # Lithops may run the function off the main thread, where SIGALRM cannot be used.
    death_penalty_class = TimerDeathPenalty

    def __init__(
        self, queues: list[Queue], *, deadline: float, hard_deadline: float, lease_s: int, stop_key: str, **kwargs: Any
    ) -> None:
        self.death_penalty_class = time_boxed_penalty(hard_deadline)
        super().__init__(queues, maintenance_interval=POLL_S, serializer=JOB_SERIALIZER, **kwargs)
        self.stop_key = stop_key
        self.deadline = deadline
        self.hard_deadline = hard_deadline
        self.lease_s = lease_s
        # rq's registries are cleaned (and dead workers' jobs handed back) every lease, on the
        # time.monotonic clock; the other maintenance runs every POLL_S.
        self.registries_cleaned_at: float | None = None
        # Set when rq's shutdown command (``consumer stop``) or SIGINT/SIGTERM reached this worker.
        self.warm_shutdown_requested = False
        self.death_registered = False
        # rq schedules retries with an interval (MOMENTS_RETRY_INTERVALS) and moves them back to the queue
        # from its scheduler; that normally forks a process, which a Lithops function holding a
        # model should not do, so each worker runs the same scheduler steps in its poll loop.
        self.retry_scheduler = RQScheduler(self.queues, connection=self.connection, name=self.name,
                                           logging_level="WARNING")
        self.exit_reason = "idle"
        self.jobs_run = 0

    def _install_signal_handlers(self) -> None:
        """rq installs its SIGINT/SIGTERM handlers at the start of ``work()``, unconditionally, and
        ``signal.signal`` raises off the main thread (decode threads; Lithops may call the function
        off it): there, the worker takes its stop requests from the stop flag alone. rq has no
        public switch for this (README, "rq internals")."""
        if threading.current_thread() is threading.main_thread():
            super()._install_signal_handlers()

    def handle_warm_shutdown_request(self) -> None:
        """rq's hook for a warm shutdown (its shutdown command, SIGINT, SIGTERM): remembered, so that
        a batch in hand stops between videos as for the stop flag."""
        self.warm_shutdown_requested = True
        super().handle_warm_shutdown_request()

    def serialize(self) -> dict:
        """rq's worker hash, and the model this consumer runs (``aggregator check`` reads it)."""
        data = super().serialize()
        context = current_context_or_none()
        if context is not None:
            data[WORKER_MODEL_FIELD] = context.classifier.model_id
        return data

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        # Every heartbeat (rq's own and the lease thread's) sets the same short lease, so the
        # worker key outlives this process by at most lease_s.
        super().heartbeat(self.lease_s, pipeline=pipeline)

    def keep_alive(self) -> None:
        """The lease thread's beat: only between birth and death, so it never recreates the key."""
        if self.birth_date is not None and not self.death_registered:
            self.heartbeat()


    def register_death(self) -> None:
        self.death_registered = True
        self.retry_scheduler.release_locks()
        super().register_death()

    def enqueue_due_retries(self) -> None:
        try:
            if self.retry_scheduler.acquire_locks():
                self.retry_scheduler.enqueue_scheduled_jobs()
        except REDIS_OUTAGE as error:
            log.warning("redis_unreachable_retrying", worker=self.name, error=str(error))

    def run_maintenance_tasks(self) -> None:
        """Every ``maintenance_interval`` (POLL_S, busy or idle, between jobs): leave the work loop
        when told to stop or past the deadline (rq's ``StopRequested``), move due retries back to the
        queue, and every lease run rq's own maintenance (:meth:`clean_registries`)."""
        if self.should_stop():
            raise StopRequested()
        self.enqueue_due_retries()
        if self.registries_cleaned_at is None or time.monotonic() - self.registries_cleaned_at >= self.lease_s:
            self.registries_cleaned_at = time.monotonic()
            super().run_maintenance_tasks()
        self.last_cleaned_at = rq_now()  # type: ignore[assignment]  # what rq times maintenance_interval from

    def clean_registries(self) -> None:
        """rq's maintenance (``Worker.clean_registries``), with the abandoned jobs' failure callbacks
        timed by a timer: rq's registries time them with SIGALRM, which raises off the main thread
        (decode threads, Lithops), and rq logs and swallows that, so a job abandoned on its last
        attempt landed in rq's failed registry without its video ever being recorded failed."""
        for queue in self.queues:
            expire_jobs_of_dead_workers(queue)
            release_retry_locks_of_dead_workers(queue)
            if queue.acquire_maintenance_lock():
                try:
                    # This worker has no exception handlers of its own (rq's default handling only).
                    StartedJobRegistry(queue=queue, death_penalty_class=TimerDeathPenalty).cleanup()
                    clean_registries(queue)  # the other registries (the started one is clean)
                    worker_registration.clean_worker_registry(queue)
                    queue.intermediate_queue.cleanup(self, queue)
                finally:
                    queue.release_maintenance_lock()
        self.last_cleaned_at = rq_now()  # type: ignore[assignment]

    def stop_was_requested(self) -> bool:
        # rq's shutdown command (sent by `consumer stop`) reaches a worker on the main thread; the
        # flag covers the others, and workers that were between commands when it was sent.
        if self.warm_shutdown_requested:
            return True
        try:
            return bool(self.connection.exists(self.stop_key))
        except REDIS_OUTAGE:
            return False  # Redis is restarting: rq's dequeue loop waits for it with back-off

    def should_stop(self) -> bool:
        if self.stop_was_requested():
            self.exit_reason = "stopped"
            return True
        context = current_context_or_none()
        if context is not None and context.superseded_by is not None:
            self.exit_reason = "superseded"
            return True
        if time.monotonic() >= self.deadline:
            self.exit_reason = "deadline"
            return True
        return False

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        """rq's dequeue, each wait for a job at most POLL_S long (rq's ``timeout``: rq passes its
        ``dequeue_timeout``, minutes), so that its loop runs the maintenance (the stop check, due
        retries) every POLL_S while idle. ``max_idle_time`` keeps its meaning: rq's idle exit."""
        return super().dequeue_job_and_maintain_ttl(None if timeout is None else min(timeout, POLL_S),
                                                    max_idle_time)

    def handle_job_success(self, job: Any, queue: Any, started_job_registry: Any, execution: Any) -> None:
        """rq's success handling, except for a job that no longer exists: this worker's lease lapsed
        mid-job (cut off, paused), another consumer took the job over, finished it and deleted it
        (``result_ttl=0``). rq's clean-up of the late success then cannot read the job's status
        (``InvalidJobOperation``) and would treat the success as a failed attempt and retry the job,
        classifying the video yet again. The outcome this worker published is a duplicate the ledger
        ignores; the late success ends here, quietly, with this execution's records removed."""
        try:
            super().handle_job_success(job, queue, started_job_registry, execution)
        except InvalidJobOperation:
            if self.connection.hexists(job.key, "status"):
                raise  # the job exists: not the late success of one finished elsewhere
            with self.connection.pipeline() as pipeline:
                self.cleanup_execution(job, pipeline=pipeline, execution=execution)
                pipeline.execute()
            self.connection.register_script(_DELETE_STATUSLESS_JOB)(keys=[job.key])
            log.warning("late_success_of_finished_job", job=job.id, worker=self.name,
                        meaning="this worker's lease lapsed mid-job and another consumer finished the job; "
                                "the outcome published here is a duplicate, and the job is not retried")

    def execute_job(self, job: Any, queue: Any) -> None:
        super().execute_job(job, queue)
        self.jobs_run += 1
        if self.should_stop():
            raise StopRequested()  # rq's way out of its work loop: no other job is taken


def connect_with_backoff(url: str, attempts: int = 8) -> redis.Redis:
    backoff = Backoff()
    for attempt in range(1, attempts + 1):
        try:
            return connect(url)
        except Exception as error:
            if attempt == attempts:
                raise
            backoff.wait(error, attempt=attempt)
    raise AssertionError("unreachable")


def decode_threads_for(settings: Settings, device: str) -> int:
    """rq workers (download + decode threads) sharing one model in a consumer: one on a CPU, where
    decode and inference compete for the same cores; several on a GPU, to keep it fed."""
    if settings.decode_threads:
        return settings.decode_threads
    return DEFAULT_GPU_DECODE_THREADS if device.startswith("cuda") else 1


def combined_exit_reason(reasons: list[str]) -> str:
    """Why a consumer with several workers stopped: a stop request, outdated weights or its deadline
    outrank idleness (the launcher relaunches a consumer that stopped for its deadline only)."""
    for reason in ("stopped", "superseded", "deadline"):
        if reason in reasons:
            return reason
    return "idle"


def work_until_done(worker: ConsumerWorker, idle_exit_s: int | None) -> None:
    """Run one rq worker, its lease renewed by a heartbeat thread, until it stops."""
    with Heartbeat(worker.keep_alive, worker.lease_s / 3, worker.name):
        worker.work(max_idle_time=idle_exit_s, logging_level="WARNING")
    if worker.exit_reason == "idle" and worker.stop_was_requested():
        worker.exit_reason = "stopped"


class LaunchLease:
    """Holds ``key`` (the consumer's worker id, expiring after ``lease_s``) while in use: set on
    entry, renewed by a heartbeat thread a third of the lease apart."""

    def __init__(self, client: redis.Redis, key: str, worker_id: str, lease_s: int) -> None:
        self._client, self._key, self._worker_id, self._lease_s = client, key, worker_id, lease_s
        self._heartbeat = Heartbeat(self.renew, lease_s / 3, worker_id)

    def renew(self) -> None:
        self._client.set(self._key, self._worker_id, ex=self._lease_s)

    def __enter__(self) -> LaunchLease:
        self.renew()
        self._heartbeat.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._heartbeat.__exit__(*exc)


def run_consumer(
    settings: Settings,
    max_runtime_s: float,
    function_timeout_s: float,
    idle_exit_s: int | None = None,
    launch_id: str | None = None,
) -> dict[str, Any]:
    """The Lithops function body. Returns a summary of what this worker did and why it stopped.

    It takes videos for ``max_runtime_s`` and never runs one past ``function_timeout_s`` (less a
    few seconds to publish and exit), so it ends before its backend's limit would kill it.
    """
    configure_logging()
    started = process_started()
    # The download cache is the function's own: a runtime image bakes the weights into it
    # (MOMENTS_CACHE_DIR in runtime/), where the launcher's machine may keep them elsewhere.
    settings = settings.replace(cache_dir=cache_dir_from(os.environ))
    worker_id = f"moments-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    client = connect_with_backoff(settings.redis_url)
    classifier = load_classifier(settings, progress=False)
    context = WorkerContext(
        classifier, client, lithops_storage(settings), open_results_queue(client, settings), settings, worker_id
    )
    bind_context(context)
    decode_threads = decode_threads_for(settings, classifier.options.device)
    if decode_threads > 1:
        classifier.share_across_threads(max_videos=decode_threads)
    names = [worker_id] if decode_threads == 1 else [f"{worker_id}-{index}" for index in range(decode_threads)]
    workers = [
        ConsumerWorker(
            [video_queue(client, settings)],
            connection=client,
            name=name,
            deadline=started + max_runtime_s,
            hard_deadline=started + function_timeout_s - EXIT_SLACK_S,
            lease_s=settings.consumer_lease_s,
            stop_key=settings.keys.stop_consumers(),
        )
        for name in names
    ]
    context.workers.update((worker.name, worker) for worker in workers)
    log.info("consumer_started", worker=worker_id, model_id=classifier.model_id, decode_threads=decode_threads,
             load_ms=round((time.monotonic() - started) * 1000))
    # The launcher's lease on this whole consumer (consumer.launcher.LaunchLeases), renewed until
    # its last worker thread is done, whichever thread that is.
    launch_lease = None if launch_id is None else LaunchLease(client, settings.keys.consumer_launch(launch_id),
                                                               worker_id, settings.consumer_lease_s)
    with launch_lease or contextlib.nullcontext():
        if len(workers) == 1:
            work_until_done(workers[0], idle_exit_s)
        else:
            threads = [threading.Thread(target=work_until_done, args=(worker, idle_exit_s), name=worker.name)
                       for worker in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if classifier.batcher is not None:
                classifier.batcher.close()
    summary = {
        "worker": worker_id,
        "jobs": sum(worker.jobs_run for worker in workers),
        "reason": combined_exit_reason([worker.exit_reason for worker in workers]),
        "runtime_s": round(time.monotonic() - started, 1),
    }
    log.info("consumer_stopped", **summary)
    bind_context(None)
    return summary
