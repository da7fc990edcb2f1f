"""How many CPU threads the learner may use: the process's CPUs, capped by a container's quota.

``run`` and ``evaluate`` size torch's thread pool (:func:`set_cpu_threads`) and decide whether a
second process is worth starting from :func:`usable_cpus`.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Where a container's cgroup files are (its own cgroup, in its cgroup namespace).
CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: its CPU affinity, capped by a container's CPU quota.

    A quota of 1.5 CPUs counts as 1: the second process's work would mostly wait for it.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, int(quota)))
    return cpus


def cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The CPU limit of this process's container in CPUs, or ``None`` without one.

    Read from cgroup v2's ``cpu.max`` (``"150000 100000"`` is 1.5 CPUs, ``"max 100000"`` none),
    else from cgroup v1's ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (a quota of -1: none).
    """
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota_us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def set_cpu_threads(threads: int) -> None:
    """Let torch use ``threads`` CPU threads; the small batched LSTM is fastest on one or two."""
    import torch

    torch.set_num_threads(threads)
