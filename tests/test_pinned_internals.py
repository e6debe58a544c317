"""What the consumers rely on rq (pyproject: rq>=3,<4) for, checked by behaviour against a real Redis:
each test fails when an rq release stops doing what consumer/worker.py or consumer/leases.py extend,
whatever the shape of rq's code. The one private member they override, ``_install_signal_handlers``,
is named in the README ("rq internals") with the reason. What the results queue relies on Lithops
for is checked in test_results_queue.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import redis
from rq import Queue, Retry, SimpleWorker
from rq.job import JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.scheduler import RQScheduler

from consumer.failure_callback import TimeLimitCut
from consumer.leases import expire_jobs_of_dead_workers, release_retry_locks_of_dead_workers
from consumer.worker import ConsumerWorker
from moments_stream.queues import JOB_SERIALIZER

REPO = Path(__file__).resolve().parents[1]
QUEUE = "pinned"
STOP_KEY = "pinned:stop"
FOREVER_S = 3600


# Jobs (rq imports them by name in the worker).
def finish() -> str:
    return "done"


def ask_to_stop_by_signal() -> str:
    """What ``consumer stop``'s shutdown command does to a consumer on the main thread: SIGINT
    (rq's handler runs here, at once, on the main thread that runs this job)."""
    os.kill(os.getpid(), signal.SIGINT)
    return "asked"


def set_stop_flag() -> str:
    redis.Redis.from_url(os.environ["PINNED_REDIS_URL"]).set(STOP_KEY, "1")
    return "flagged"


def run_for_a_minute() -> None:
    """Runs Python bytecode until the death penalty's exception interrupts it (a timer thread raises
    it here, asynchronously, between two bytecodes)."""
    for _ in range(600):
        time.sleep(0.1)


@pytest.fixture()
def queue(redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Queue:
    monkeypatch.setenv("PINNED_REDIS_URL", redis_url)
    return Queue(QUEUE, connection=redis_client, serializer=JOB_SERIALIZER)


def consumer_worker(queue: Queue, deadline_s: float = FOREVER_S, hard_deadline_s: float = FOREVER_S,
                    lease_s: int = 30) -> ConsumerWorker:
    now = time.monotonic()
    return ConsumerWorker([queue], connection=queue.connection, name=f"pinned-{time.time_ns()}",
                          deadline=now + deadline_s, hard_deadline=now + hard_deadline_s, lease_s=lease_s,
                          stop_key=STOP_KEY)


def work_on_a_thread(worker: ConsumerWorker, **options: object) -> None:
    thread = threading.Thread(target=worker.work, kwargs={"logging_level": "WARNING", **options})
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the worker did not leave its work loop"


def test_rq_major_version() -> None:
    assert version("rq").split(".")[0] == "3"


MAIN_THREAD_WORKER = """
import json, sys
import redis
from rq import Queue
from moments_stream.queues import JOB_SERIALIZER
from tests.test_pinned_internals import QUEUE, ask_to_stop_by_signal, consumer_worker, finish
queue = Queue(QUEUE, connection=redis.Redis.from_url(sys.argv[1]), serializer=JOB_SERIALIZER)
first, second = queue.enqueue(ask_to_stop_by_signal), queue.enqueue(finish)
worker = consumer_worker(queue)
worker.work(logging_level="WARNING")
print(json.dumps([first.get_status(), second.get_status(), worker.warm_shutdown_requested, worker.exit_reason,
                  worker.jobs_run]))
"""


def test_a_shutdown_request_on_the_main_thread_finishes_the_job_in_hand_and_exits(queue: Queue, redis_url: str) -> None:
    """rq's own signal handlers (installed through ``_install_signal_handlers`` on the main thread)
    reach ``handle_warm_shutdown_request``: the job in hand finishes, the next stays queued. In a
    process of its own, as a consumer function is (its main thread, its signal handlers)."""
    done = subprocess.run([sys.executable, "-c", MAIN_THREAD_WORKER, redis_url], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second, shutdown_requested, exit_reason, jobs_run = json.loads(done.stdout.splitlines()[-1])
    assert (first, second) == (JobStatus.FINISHED, JobStatus.QUEUED)
    assert (shutdown_requested, exit_reason, jobs_run) == (True, "stopped", 1)


def test_off_the_main_thread_the_worker_runs_and_a_stop_request_finishes_the_job_and_exits(queue: Queue) -> None:
    """Off the main thread rq's handlers cannot be installed (``signal.signal`` raises there): the
    worker runs all the same, and the stop flag set during a job ends it after that job."""
    first = queue.enqueue(set_stop_flag)
    second = queue.enqueue(finish)
    worker = consumer_worker(queue)
    work_on_a_thread(worker)
    assert first.get_status() == JobStatus.FINISHED and second.get_status() == JobStatus.QUEUED
    assert (worker.exit_reason, worker.jobs_run) == ("stopped", 1)


def test_an_idle_worker_notices_the_stop_flag_and_its_deadline(queue: Queue, redis_client: redis.Redis) -> None:
    """rq's maintenance runs while the worker waits for a job (``maintenance_interval``), and
    ``StopRequested`` raised there ends rq's work loop; with no idle limit, nothing else would."""
    stopped = consumer_worker(queue)
    redis_client.set(STOP_KEY, "1")
    work_on_a_thread(stopped)
    redis_client.delete(STOP_KEY)
    past_its_deadline = consumer_worker(queue, deadline_s=0)
    work_on_a_thread(past_its_deadline)
    assert (stopped.exit_reason, past_its_deadline.exit_reason) == ("stopped", "deadline")
    assert stopped.jobs_run == past_its_deadline.jobs_run == 0


def test_an_idle_worker_leaves_after_its_idle_time(queue: Queue) -> None:
    worker = consumer_worker(queue)
    work_on_a_thread(worker, max_idle_time=1)
    assert (worker.exit_reason, worker.jobs_run) == ("idle", 0)


def test_the_job_timeout_fires_off_the_main_thread(queue: Queue) -> None:
    """The death penalty class is a timer, not SIGALRM: it interrupts a job on a worker thread."""
    job = queue.enqueue(run_for_a_minute, job_timeout=1)
    work_on_a_thread(consumer_worker(queue), burst=True)
    assert job.get_status() == JobStatus.FAILED
    assert "JobTimeoutException" in (job.latest_result().exc_string or "")


def test_the_function_time_limit_cuts_a_job_short_as_a_time_limit_cut(queue: Queue) -> None:
    """Where the function's own time limit comes before the job's timeout, the death penalty fires
    at the limit and says so (``TimeLimitCut``: the job is handed back, not failed)."""
    job = queue.enqueue(run_for_a_minute, job_timeout=600)
    work_on_a_thread(consumer_worker(queue, hard_deadline_s=1), burst=True)
    assert job.get_status() == JobStatus.FAILED
    assert TimeLimitCut.__name__ in (job.latest_result().exc_string or "")


def test_a_dead_workers_job_is_handed_back_by_rqs_abandoned_job_handling(
    queue: Queue, redis_client: redis.Redis
) -> None:
    """A started job whose worker's key has lapsed is marked expired (rq's ``add_execution``), and
    rq's ``StartedJobRegistry.cleanup`` retries it; a live worker's job is left alone."""
    dead, live = SimpleWorker([queue], connection=redis_client, name="pinned-dead"), SimpleWorker(
        [queue], connection=redis_client, name="pinned-live")
    abandoned = queue.enqueue(finish, retry=Retry(max=1))
    running = queue.enqueue(finish, retry=Retry(max=1))
    for worker, job in ((dead, abandoned), (live, running)):
        queue.pop_job_id()
        worker.prepare_execution(job)
        job.set_status(JobStatus.STARTED)
    redis_client.delete(dead.key)  # its lease lapsed
    assert expire_jobs_of_dead_workers(queue) == [abandoned.id]
    StartedJobRegistry(queue=queue).cleanup()
    abandoned.refresh()
    assert abandoned.get_status() == JobStatus.QUEUED and abandoned.retries_left == 0
    assert running.get_status() == JobStatus.STARTED
    assert StartedJobRegistry(queue=queue).get_job_ids(cleanup=False) == [running.id]
    assert FailedJobRegistry(queue=queue).count == 0


def test_a_dead_workers_scheduler_lock_is_released_and_a_live_ones_kept(queue: Queue,
                                                                         redis_client: redis.Redis) -> None:
    lock = RQScheduler.get_locking_key(queue.name)
    live = SimpleWorker([queue], connection=redis_client, name="pinned-live")
    live.register_birth()
    redis_client.set(lock, live.name)
    release_retry_locks_of_dead_workers(queue)
    assert redis_client.get(lock) == live.name.encode()
    redis_client.set(lock, "pinned-dead")
    release_retry_locks_of_dead_workers(queue)
    assert redis_client.get(lock) is None
    scheduler = RQScheduler([queue], connection=redis_client, name=live.name)
    assert scheduler.acquire_locks() == {queue.name}  # rq's scheduler takes the freed lock by that key
