"""Driving the load generator processes, and turning their results into figures.

A measurement is one job per load generator process: each prepares (signs its batch, opens its connections) and
says so; only when all are ready does the CPU meter start and the common start time go out. So the CPU counted
for a cell is the servers' work on that cell's requests, not the signing before it.
"""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing
import statistics
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import loadgen
import procs
import profiling
from loadgen import RunResult, SignedExchange
from stack import HOST, Settings, Stack, stop_mp

TARGET_RATE = 3000.0


@dataclass
class Stats:
    """One measurement: one repetition of one cell."""

    target: str
    rate: float  # completed requests/s in the window
    p50: float  # ms
    p90: float
    p99: float
    max: float
    count: int
    errors: int  # answers other than 200, connection failures, timeouts
    exhausted: bool  # closed loop: the pre-signed batch ran out before the window's end
    dropped: int  # open loop: scheduled requests never sent because the server was too far behind
    cpu: procs.CpuUsage
    handled: int  # requests completed while the CPU meter ran (warm-up included)
    log_commits_per_entry: float | None = None
    """Broker only: access-log transactions per access-log entry during the cell, in the broker process that one
    keep-alive connection reaches (its /metrics: dlnuf_access_log_commits / dlnuf_access_log_entries)."""
    wal_bytes: float | None = None
    """Broker only: bytes of WAL the server wrote per request during the cell, the entries' integration into the
    transparency log included (procs.wal_position); the whole server's, so exact on the embedded one only."""

    def cpu_ms(self, group: str) -> float:
        """Milliseconds of CPU that `group` spent per request."""
        return 1000 * self.cpu.by_group.get(group, 0.0) / max(1, self.handled)

    def wait_ms(self, group: str) -> float:
        """Milliseconds per request that `group` was runnable but waiting for a CPU."""
        return 1000 * self.cpu.waited.get(group, 0.0) / max(1, self.handled)

    def cores(self, group: str) -> float:
        return self.cpu.by_group.get(group, 0.0) / max(self.cpu.wall, 1e-9)

    @property
    def others(self) -> float:
        """Cores kept busy by processes that are not ours: the machine's noise during this measurement."""
        return self.cpu.others / max(self.cpu.wall, 1e-9)


@dataclass
class Results:
    smoke: str = ""
    noise_before: float = 0.0  # cores busy on the machine before anything started
    sign_rate: float = 0.0
    ceiling: dict[str, Stats] = field(default_factory=dict)
    closed: dict[tuple[str, int], list[Stats]] = field(default_factory=dict)
    open: dict[tuple[str, float], list[Stats]] = field(default_factory=dict)
    sustainable_rate: float = 0.0
    profile: profiling.Profile | None = None
    profile_stats: Stats | None = None
    db: dict[str, profiling.Probe] = field(default_factory=dict)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, int(q * len(sorted_values) + 0.999999) - 1))
    return sorted_values[rank]


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class LoadGenerators:
    """`n` long-lived load generator processes, driven through pipes (protocol in `loadgen.worker_main`)."""

    def __init__(self, es: contextlib.ExitStack, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for i in range(n):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=loadgen.worker_main, args=(child,), daemon=True, name=f"loadgen-{i}")
            process.start()
            es.callback(self._stop, parent, process)
            self.pipes.append(parent)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    @staticmethod
    def _stop(pipe: Connection, process: multiprocessing.process.BaseProcess) -> None:
        with contextlib.suppress(OSError):
            pipe.send(None)
        process.join(3)
        stop_mp(process)

    @staticmethod
    def _receive(pipe: Connection, timeout: float) -> Any:
        if not pipe.poll(timeout):
            raise RuntimeError(f"a load generator did not answer within {timeout:.0f}s")
        kind, payload = pipe.recv()
        if kind == "error":
            raise RuntimeError(f"load generator failed: {payload}")
        return payload

    def run(self, kind: str, jobs: list[dict[str, Any]], meter: procs.CpuMeter | None, timeout: float,
            on_ready: Callable[[], None] | None = None) -> list[RunResult]:
        used = self.pipes[: len(jobs)]
        for pipe, job in zip(used, jobs, strict=True):
            pipe.send((kind, job))
        for pipe in used:
            self._receive(pipe, 300)  # signing a batch and connecting: seconds at most
        if on_ready is not None:
            on_ready()
        if meter is not None:
            meter.start()
        start_at = loadgen.now() + 0.05
        for pipe in used:
            pipe.send(("go", start_at))
        return [self._receive(pipe, timeout) for pipe in used]


class Bench:
    """Measurements against the stack's targets: "broker", "stub", "nginx", "trivial"."""

    def __init__(self, stack: Stack, s: Settings, gens: LoadGenerators) -> None:
        self.stack = stack
        self.s = s
        self.gens = gens
        # pre-signed batch sizing: start from the target rate, then follow what was measured
        self.last_rate: dict[str, float] = {}
        self._metrics: http.client.HTTPConnection | None = None

    def meter(self, with_trivial: bool = False) -> procs.CpuMeter:
        st = self.stack
        groups: dict[str, Callable[[], list[int]]] = {
            "broker": st.broker_pids,
            "postgres": st.postgres_pids,
            "stub": st.stub.pids,
            "loadgen": lambda: self.gens.pids,
        }
        if st.nginx is not None:
            groups["nginx"] = st.nginx.pids
        if with_trivial:
            groups["trivial"] = lambda: [st.trivial_pid]
        groups.update(st.extra_pids)
        return procs.CpuMeter(groups)

    def _stats(self, target: str, results: list[RunResult], cpu: procs.CpuUsage) -> Stats:
        latencies = array("d")
        statuses: dict[int, int] = {}
        for r in results:
            latencies.frombytes(r.latencies)
            for k, v in r.statuses.items():
                statuses[k] = statuses.get(k, 0) + v
        values = sorted(latencies)
        elapsed = max(r.elapsed for r in results)
        ms = [1000 * percentile(values, q) for q in (0.5, 0.9, 0.99, 1.0)]
        completed = sum(r.completed for r in results)
        return Stats(target, completed / elapsed if elapsed > 0 else 0.0, ms[0], ms[1], ms[2], ms[3],
                     len(values), sum(v for k, v in statuses.items() if k != 200),
                     any(r.exhausted for r in results), sum(r.dropped for r in results), cpu,
                     sum(r.handled for r in results))

    def closed(self, target: str, concurrency: int, *, duration: float | None = None, inline_sign: bool = False,
               on_ready: Callable[[], None] | None = None) -> Stats:
        s = self.s
        duration = duration or s.duration
        makers, endpoints = self.stack.makers(target)
        if isinstance(makers[0], SignedExchange) and not inline_sign:
            # enough for 2.5x the last rate seen, bounded: at ~40-70 us a signature, 40,000 take 2 to 3 s
            expected = self.last_rate.get(target, TARGET_RATE) * (s.warmup + duration)
            budget = int(max(2000, min(40_000, 2.5 * expected)))
            if target == "trivial":
                # it answers pre-signed requests at 50,000/s or more: 40,000 ran out within the warm-up (the
                # ceiling line read 0/s, n=0); 100,000 leave it about a second of window
                budget = 100_000
        else:
            budget = int(max(2000, min(2_000_000, 100_000 * (s.warmup + duration))))
        n = min(len(self.gens.pipes), concurrency)
        jobs = [dict(makers=makers, endpoints=endpoints, concurrency=c, warmup=s.warmup, duration=duration,
                     budget=b, request_timeout=s.request_timeout, inline_sign=inline_sign)
                for c, b in zip(split(concurrency, n), split(budget, n), strict=True)]
        meter = self.meter(with_trivial=target == "trivial")
        before = self.log_counters() if target == "broker" else None
        wal = self._wal() if target == "broker" else None
        results = self.gens.run("closed", jobs, meter, timeout=s.warmup + duration + s.request_timeout + 60,
                                on_ready=on_ready)
        stats = self._stats(target, results, meter.stop())
        after = self.log_counters() if before is not None else None
        if before is not None and after is not None and after[1] > before[1]:
            stats.log_commits_per_entry = (after[0] - before[0]) / (after[1] - before[1])
        self._wal_per_request(stats, wal)
        if not stats.exhausted:
            self.last_rate[target] = max(self.last_rate.get(target, 0.0) * 0.5, stats.rate)
        return stats

    def open(self, target: str, rate: float, duration: float | None = None,
             on_ready: Callable[[], None] | None = None) -> Stats:
        s = self.s
        duration = duration or s.open_duration
        makers, endpoints = self.stack.makers(target)
        n = len(self.gens.pipes)
        jobs = [dict(makers=makers, endpoints=endpoints, rate=rate / n, warmup=s.warmup, duration=duration,
                     connections=max(1, s.open_connections // n), request_timeout=s.request_timeout,
                     phase=i / rate) for i in range(n)]
        meter = self.meter(with_trivial=target == "trivial")
        wal = self._wal() if target == "broker" else None
        results = self.gens.run("open", jobs, meter, timeout=s.warmup + duration + 2 * s.request_timeout + 60,
                                on_ready=on_ready)
        stats = self._stats(target, results, meter.stop())
        self._wal_per_request(stats, wal)
        return stats

    def _wal(self) -> int | None:
        # once the last cell's entries are integrated (a round a second), so that their rounds count there
        return procs.wal_position(self.stack.db_dsn, self.stack.db_name, wait=5.0) if self.stack.db_dsn else None

    def _wal_per_request(self, stats: Stats, before: int | None) -> None:
        after = self._wal() if before is not None else None
        if before is not None and after is not None and stats.handled:
            stats.wal_bytes = (after - before) / stats.handled

    def log_counters(self) -> tuple[float, float] | None:
        """(access-log commits, entries) so far in the broker process behind one kept-alive connection: with
        `--workers`, the kernel gives a connection to one worker, so both readings of a cell come from the same."""
        text = None
        for _ in range(2):  # the server may have closed an idle connection since the last cell: reconnect once
            if self._metrics is None:
                self._metrics = http.client.HTTPConnection(HOST, self.stack.broker_ports[0], timeout=5)
            try:
                self._metrics.request("GET", "/metrics")
                text = self._metrics.getresponse().read().decode()
                break
            except (OSError, http.client.HTTPException):
                self._metrics.close()
                self._metrics = None
        if text is None:
            return None
        found = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in ("dlnuf_access_log_commits_total", "dlnuf_access_log_entries_total"):
                found[name] = float(value)
        if len(found) != 2:
            return None  # a broker without the group commit
        return found["dlnuf_access_log_commits_total"], found["dlnuf_access_log_entries_total"]

    def signing_rate(self, seconds: float) -> float:
        """Complete signed requests per second, one process, nothing else."""
        makers, _ = self.stack.makers("trivial")
        result = self.gens.run("sign", [dict(maker=makers[0], seconds=seconds)], None, timeout=seconds + 60)[0]
        return result.signed / result.elapsed


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
