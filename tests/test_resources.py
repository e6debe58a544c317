"""CPU and memory sizing of consumers: never more torch threads than cores."""

from __future__ import annotations

import os

import pytest

from consumer.launcher import with_threads_for
from moments_stream.resources import (
    CONSUMER_MEMORY_BYTES,
    available_cpus,
    cpus_from_cgroup_v1,
    cpus_from_cgroup_v2,
    default_local_workers,
    threads_per_worker,
)
from moments_stream.settings import Settings


@pytest.mark.parametrize(("text", "cpus"), [("max 100000\n", None), ("200000 100000\n", 2.0), ("50000 100000", 0.5)])
def test_cgroup_v2_quota(text: str, cpus: float | None) -> None:
    assert cpus_from_cgroup_v2(text) == cpus


def test_cgroup_v1_quota() -> None:
    assert cpus_from_cgroup_v1("-1\n", "100000\n") is None
    assert cpus_from_cgroup_v1("150000", "100000") == 1.5


def test_available_cpus_is_within_the_affinity_mask() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("cpus", "workers", "threads"), [(2, 2, 1), (2, 1, 2), (8, 2, 4), (2, 4, 1), (1, 1, 1)])
def test_threads_per_worker(cpus: int, workers: int, threads: int) -> None:
    assert threads_per_worker(cpus, workers) == threads


def test_default_local_workers_fit_cpus_and_memory() -> None:
    assert default_local_workers(2, 24 * 2**30) == 2
    assert default_local_workers(64, 16 * CONSUMER_MEMORY_BYTES) == 16
    assert default_local_workers(4, CONSUMER_MEMORY_BYTES // 2) == 1
    assert default_local_workers(4, None) == 4


def test_local_consumers_share_the_cpus_unless_threads_are_set() -> None:
    settings = Settings.from_env({})
    assert with_threads_for(settings, workers=2, cpus=2).threads == 1
    assert with_threads_for(settings, workers=1, cpus=2).threads == 2
    assert with_threads_for(settings.replace(threads=3), workers=2, cpus=2).threads == 3
