"""How many cores this process may use: what `serve --workers auto` starts (one event loop uses one core).

`os.cpu_count()` counts the machine's CPUs, not this process's: a container limited to 2 CPUs on a 64-core node
would start 64 workers, each with its own database pool. So the count is the CPUs the process may be scheduled on
(its affinity mask), lowered to the container's CPU quota (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`) rounded
up, and never below 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """The number of workers `--workers auto` starts."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_quota(cgroup)
    return max(1, count if quota is None else min(count, quota))


def cgroup_quota(cgroup: Path = CGROUP) -> int | None:
    """The CPU quota of this process's cgroup in whole CPUs (rounded up), None when there is none or none is
    readable: cgroup v2 (`cpu.max`, "<quota> <period>" or "max <period>"), else v1 (`cpu/cpu.cfs_quota_us`, -1
    for none, and `cpu/cpu.cfs_period_us`)."""
    try:
        quota, _, period = (cgroup / "cpu.max").read_text().strip().partition(" ")
    except OSError:
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    return quota_cpus(quota, period)


def quota_cpus(quota: str, period: str) -> int | None:
    """Whole CPUs for a quota of `quota` microseconds per `period` ("max" or a negative quota: no limit)."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None  # "max", or a file this code does not understand: no limit known
    if q <= 0 or p <= 0:
        return None
    return max(1, math.ceil(q / p))
