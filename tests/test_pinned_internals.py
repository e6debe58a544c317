"""The rq internals the consumers extend, pinned (pyproject: rq>=3,<4): each check fails when an
rq release changes what consumer/worker.py or consumer/leases.py rely on. The Lithops internals of
the results queue are pinned the same way in test_results_queue.py."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from rq import SimpleWorker
from rq.executions import Execution
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.scripts import release_lock
from rq.worker import BaseWorker


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_rq_major_version() -> None:
    assert version("rq").split(".")[0] == "3"


def test_worker_hooks_the_consumer_overrides() -> None:
    # ConsumerWorker overrides these; a renamed or re-shaped one would silently stop being called.
    assert parameters(SimpleWorker.dequeue_job_and_maintain_ttl)[:3] == ["self", "timeout", "max_idle_time"]
    assert parameters(SimpleWorker.heartbeat)[:3] == ["self", "timeout", "pipeline"]
    assert parameters(SimpleWorker.execute_job)[:3] == ["self", "job", "queue"]
    for name in ("_install_signal_handlers", "register_death", "clean_registries"):
        assert callable(getattr(SimpleWorker, name)), name
    assert "maintenance_interval" in parameters(BaseWorker.__init__)
    assert isinstance(SimpleWorker.death_penalty_class, type)  # replaced by a time-boxed penalty


def test_stop_flag_set_by_the_shutdown_command(redis_client) -> None:
    worker = SimpleWorker(["pinned"], connection=redis_client)
    assert worker._stop_requested is False  # rq's shutdown command sets it; the consumer reads it


def test_scheduler_and_lease_internals() -> None:
    assert parameters(release_lock) == ["connection", "lock_key", "owner_token"]
    for name in ("acquire_locks", "enqueue_scheduled_jobs", "release_locks", "get_locking_key"):
        assert callable(getattr(RQScheduler, name)), name
    assert callable(Execution.fetch) and hasattr(Execution, "composite_key")
    assert "cleanup" in parameters(StartedJobRegistry.get_job_and_execution_ids)
