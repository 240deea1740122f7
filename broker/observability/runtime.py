"""What a running broker process holds: memory, file descriptors, pool connections, asyncio tasks, allocations.

Read by the debug route `GET /_debug/runtime`, which exists only when `DLNUF_DEBUG_RUNTIME=true` (never by
default): a soak run (`benchmarks/soak.py`) polls it to tell a leak from warm-up. Python's allocation tracing is
started by Python's own `PYTHONTRACEMALLOC=<frames>` at process start (it slows every allocation, so it is a
separate choice); without it the snapshot says so and lists nothing.
"""

from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc
from collections.abc import Mapping
from typing import Any, Protocol

_PAGE = os.sysconf("SC_PAGE_SIZE")


class _Pool(Protocol):
    def get_size(self) -> int: ...
    def get_idle_size(self) -> int: ...


def rss_bytes() -> int:
    """Resident set size of this process (Linux `/proc/self/statm`), 0 elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def open_fds() -> int:
    """Open file descriptors of this process (sockets included), -1 where `/proc` is not there."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def snapshot(pools: Mapping[str, _Pool]) -> dict[str, Any]:
    """The counts a soak watches: each should level off, not keep climbing."""
    return {
        "pid": os.getpid(),
        "rss_bytes": rss_bytes(),
        "open_fds": open_fds(),
        "tasks": len(asyncio.all_tasks()),
        "pools": {name: {"size": p.get_size(), "idle": p.get_idle_size()} for name, p in pools.items()},
        "gc_objects": len(gc.get_objects()),
        "gc_counts": list(gc.get_count()),
        "tracemalloc": tracemalloc.is_tracing(),
    }


class AllocationTracer:
    """Top allocations by source line, and their growth since a baseline taken on demand (after warm-up)."""

    def __init__(self) -> None:
        self._baseline: tracemalloc.Snapshot | None = None

    @staticmethod
    def _take() -> tracemalloc.Snapshot:
        # the tracer's own bookkeeping and the import machinery are noise for a leak hunt
        return tracemalloc.take_snapshot().filter_traces((
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        ))

    def mark_baseline(self) -> None:
        if tracemalloc.is_tracing():
            self._baseline = self._take()

    def report(self, top: int) -> dict[str, Any]:
        if not tracemalloc.is_tracing():
            return {"tracing": False, "hint": "start the broker with PYTHONTRACEMALLOC=1 (or more frames)"}
        snap = self._take()
        current, peak = tracemalloc.get_traced_memory()
        out: dict[str, Any] = {
            "tracing": True,
            "traced_bytes": current,
            "peak_bytes": peak,
            "top": [{"where": str(s.traceback), "bytes": s.size, "count": s.count}
                    for s in snap.statistics("lineno")[:top]],
        }
        if self._baseline is not None:
            out["growth"] = [{"where": str(d.traceback), "bytes": d.size_diff, "count": d.count_diff,
                              "total_bytes": d.size}
                             for d in snap.compare_to(self._baseline, "lineno")[:top]]
        return out
