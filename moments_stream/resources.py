"""How many CPUs this process may really use, so torch never runs more threads than cores.

``os.cpu_count()`` reports the host's CPUs, not a container's quota (a Kubernetes pod limited to
one CPU on a 64-core node), and more torch threads than cores collapses throughput.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cpus_from_cgroup_v2(cpu_max: str) -> float | None:
    """``cpu.max`` holds "QUOTA PERIOD" or "max PERIOD" (no limit)."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return int(parts[0]) / int(parts[1])


def cpus_from_cgroup_v1(quota_us: str, period_us: str) -> float | None:
    quota = int(quota_us)
    return None if quota <= 0 else quota / int(period_us)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_cpu_limit() -> float | None:
    cpu_max = _read(CGROUP_V2_CPU_MAX)
    if cpu_max is not None:
        return cpus_from_cgroup_v2(cpu_max)
    quota, period = _read(CGROUP_V1_QUOTA), _read(CGROUP_V1_PERIOD)
    if quota is not None and period is not None:
        return cpus_from_cgroup_v1(quota, period)
    return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by its container's CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.floor(limit)))
    return max(1, cpus)


def threads_per_worker(cpus: int, workers: int) -> int:
    """Torch threads for each of ``workers`` model processes sharing ``cpus``: never oversubscribed.

    Measured on 2 cores: two 1-thread processes beat one 2-thread process by 10-15 %.
    """
    return max(1, cpus // max(1, workers))


# What one consumer holds resident (fp32 ResNet50, torch, a clip's frames), measured on localhost.
CONSUMER_MEMORY_BYTES = 1_200_000_000


def total_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_local_workers(cpus: int, memory_bytes: int | None) -> int:
    """Consumers for one machine: one per CPU (each with one torch thread), as many as memory holds."""
    if memory_bytes is None:
        return cpus
    return max(1, min(cpus, memory_bytes // CONSUMER_MEMORY_BYTES))
