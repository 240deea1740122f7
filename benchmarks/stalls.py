"""What the slowest exchanges wait for: the database's wait events and the machine's CPU during them.

    .venv/bin/python benchmarks/stalls.py [--rate 200] [--seconds 30] [--workers 2] [--reps 1]

The p99 of an open loop is made of a few episodes in which many exchanges are slow at once. This run says what
was going on during them. It starts the stack of exchange.py (stack.py: the broker with --workers, the fast
upstream, a fresh database on --admin-url), sends signed exchanges at --rate for --seconds from this process, and
meanwhile samples, from two other processes, every --interval seconds:
- pg_stat_activity of the run's database and the server's own processes (WAL writer, checkpointer...): what each
  backend is doing and waiting for (wait_event_type and wait_event: IO/WALSync is a WAL flush, LWLock/WALWrite
  another flush waited for, Lock a row or table lock, Client/ClientRead the broker's side);
- every process's run time and run-queue wait (/proc/<pid>/schedstat), so how many cores were busy.
The requests at or above the run's p99 are grouped into episodes (overlapping in time). For each of the longest,
and for all of them together against the whole run, it prints the share of samples in which each wait was seen,
and the cores busy. Samplers cost CPU too (about 5 % of a core at 10 ms): the figures describe a slightly busier
machine than exchange.py's.

Last, the exchanges' own account: each released exchange's log line says how long it took in the broker (`ms`) and
what it waited for on the way (`claim_ms`, `provider_ms`, `log_ms`: docs/operations.md, "Where an exchange's time
goes"); for the slowest 1 % by `ms`, against all, it prints those medians and the rest (the broker's own work and its
waits for a CPU). It prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import loadgen
import stack
from stack import Settings

Wait = tuple[str, str]  # (who, wait): "backend: exchange statement", "IO/WALSync"


def _label(query: str, backend_type: str) -> str:
    if backend_type != "client backend":
        return backend_type
    first = query.lstrip().split("\n", 1)[0]
    # the broker's statements start with their query file's comment: a few words say which
    return "backend: " + (first[3:40] if first.startswith("--") else first[:37])


def sample_activity(out: str, dsn: str, until: float, interval: float) -> None:
    async def run() -> list[tuple[float, list[Wait]]]:
        conn = await asyncpg.connect(dsn)
        rows: list[tuple[float, list[Wait]]] = []
        try:
            while (t := time.monotonic()) < until:
                found = await conn.fetch(
                    "SELECT backend_type, coalesce(query, '') AS query, wait_event_type, wait_event FROM "
                    "pg_stat_activity WHERE pid <> pg_backend_pid() AND (datname = current_database() OR datname "
                    "IS NULL) AND (state IS DISTINCT FROM 'idle' OR backend_type <> 'client backend')")
                rows.append((t, [(_label(r["query"], r["backend_type"]),
                                  f"{r['wait_event_type']}/{r['wait_event']}" if r["wait_event_type"] else "running")
                                 for r in found]))
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - t)))
        finally:
            await conn.close()
        return rows
    Path(out).write_text(json.dumps(asyncio.run(run())))


def sample_cpu(out: str, until: float, interval: float) -> None:
    """Every process's cumulated run time (ns), read from file descriptors kept open (pread: cheap enough for
    100 samples a second)."""
    fds: dict[int, int] = {}
    rows: list[tuple[float, int]] = []
    scanned = 0.0
    while (t := time.monotonic()) < until:
        if t - scanned > 0.1:
            for name in os.listdir("/proc"):
                if name.isdigit() and int(name) not in fds:
                    with contextlib.suppress(OSError):
                        fds[int(name)] = os.open(f"/proc/{name}/schedstat", os.O_RDONLY)
            scanned = t
        total = 0
        for pid, fd in list(fds.items()):
            try:
                total += int(os.pread(fd, 64, 0).split()[0])
            except (OSError, IndexError, ValueError):
                os.close(fd)
                del fds[pid]
        rows.append((t, total))
        time.sleep(max(0.0, interval - (time.monotonic() - t)))
    Path(out).write_text(json.dumps(rows))


@dataclass
class Episode:
    start: float
    end: float
    slow: int


def episodes(trace: Sequence[tuple[float, float]], threshold: float) -> list[Episode]:
    found: list[Episode] = []
    for start, done in sorted(t for t in trace if t[1] - t[0] >= threshold):
        if found and start <= found[-1].end:
            found[-1].end = max(found[-1].end, done)
            found[-1].slow += 1
        else:
            found.append(Episode(start, done, 1))
    return found


class Samples:
    def __init__(self, activity: list[tuple[float, list[list[str]]]], cpu: list[tuple[float, int]]) -> None:
        self.activity, self.cpu = activity, cpu
        self.a_times = [t for t, _ in activity]
        self.c_times = [t for t, _ in cpu]

    def waits(self, start: float, end: float) -> tuple[Counter[Wait], int]:
        i, j = bisect.bisect_left(self.a_times, start), bisect.bisect_right(self.a_times, end)
        seen: Counter[Wait] = Counter()
        for _, rows in self.activity[i:j]:
            seen.update({(who, wait) for who, wait in rows})  # once per sample, however many backends
        return seen, j - i

    def cores(self, start: float, end: float) -> float | None:
        i, j = bisect.bisect_left(self.c_times, start), bisect.bisect_right(self.c_times, end) - 1
        if j <= i:
            return None
        return (self.cpu[j][1] - self.cpu[i][1]) / 1e9 / (self.c_times[j] - self.c_times[i])


def report(trace: list[tuple[float, float]], samples: Samples, show: int) -> None:
    latencies = sorted(done - start for start, done in trace)
    p99 = latencies[int(len(latencies) * 0.99)]
    print(f"{len(trace):,} exchanges: p50 {statistics.median(latencies) * 1000:.2f} ms, "
          f"p99 {p99 * 1000:.2f} ms, max {latencies[-1] * 1000:.1f} ms")
    found = episodes(trace, p99)
    whole, n_whole = samples.waits(trace[0][0], trace[-1][1])
    cores = samples.cores(trace[0][0], trace[-1][1])
    print(f"{sum(e.slow for e in found)} exchanges at or above the p99, in {len(found)} episodes; "
          f"cores busy over the run {cores or 0:.2f} of {os.cpu_count()}")
    print("'seen' = share of the samples in which some backend or server process was in that state")
    for e in sorted(found, key=lambda e: e.start - e.end)[:show]:
        seen, n = samples.waits(e.start, e.end)
        busy = samples.cores(e.start, e.end)
        print(f"\nepisode at {e.start - trace[0][0]:6.2f} s: {(e.end - e.start) * 1000:.0f} ms, {e.slow} slow "
              f"exchanges, cores busy {'-' if busy is None else f'{busy:.2f}'}, {n} samples")
        for (who, wait), k in seen.most_common(8):
            if not wait.startswith("Activity/"):  # the server processes' idle loops
                run_share = whole[(who, wait)] / max(1, n_whole)
                print(f"   {k / max(1, n):5.0%} (whole run {run_share:5.0%})  {wait:24s} {who}")
    total: Counter[Wait] = Counter()
    n_total, busy_sum, span = 0, 0.0, 0.0
    for e in found:
        seen, n = samples.waits(e.start, e.end)
        total.update(seen)
        n_total += n
        busy = samples.cores(e.start, e.end)
        if busy is not None:
            busy_sum, span = busy_sum + busy * (e.end - e.start), span + (e.end - e.start)
    print(f"\nall episodes together ({span * 1000:.0f} ms): cores busy {busy_sum / max(span, 1e-9):.2f}; waits seen, "
          "episodes against the whole run:")
    for (who, wait), k in total.most_common(12):
        if not wait.startswith("Activity/"):
            run_share = whole[(who, wait)] / max(1, n_whole)
            print(f"   {k / max(1, n_total):5.0%} against {run_share:5.0%}  {wait:24s} {who}")


STEPS = ("claim_ms", "provider_ms", "log_ms")


def own_account(lines: list[dict[str, Any]]) -> list[str]:
    """The slowest 1 % of released exchanges by their own time against all of them: medians of each wait and of the
    rest, from the exchanges' log lines."""
    done = [x for x in lines if x.get("event") == "exchange released" and all(k in x for k in ("ms", *STEPS))]
    if len(done) < 100:
        return [f"the exchanges' own account: {len(done)} log lines with their waits, too few"]
    done.sort(key=lambda x: x["ms"])
    slow = done[int(len(done) * 0.99):]
    out = [f"the exchanges' own account (their log lines, {len(done):,} released): time in the broker's handler p50 "
           f"{statistics.median(x['ms'] for x in done):.2f} ms, p99 {slow[0]['ms']:.2f} ms; medians, ms:",
           f"   {'':28s} {'claim':>7s} {'provider':>9s} {'log':>7s} {'rest':>7s} {'whole':>7s}"]
    for label, group in (("all", done), (f"slowest 1 % ({len(slow)})", slow)):
        rest = [x["ms"] - sum(x[k] for k in STEPS) for x in group]
        figures = [statistics.median(x[k] for x in group) for k in STEPS]
        out.append(f"   {label:28s} {figures[0]:7.2f} {figures[1]:9.2f} {figures[2]:7.2f} "
                   f"{statistics.median(rest):7.2f} {statistics.median(x['ms'] for x in group):7.2f}")
    out.append("   'rest' = the broker's own work on the exchange and its waits for a CPU (and a consent's statements, "
               "under that basis)")
    return out


def broker_lines(logs: Sequence[Path], since: datetime, until: datetime) -> list[dict[str, Any]]:
    """The brokers' JSON log lines of exchanges that started at or after `since` (the line is written when the
    exchange ends, `ms` after it started: a warm-up exchange still running at `since` is left out) and ended by
    `until`."""
    lines: list[dict[str, Any]] = []
    for path in logs:
        for text in path.read_text("utf-8", "replace").splitlines():
            with contextlib.suppress(ValueError, TypeError):
                line = json.loads(text)
                if not isinstance(line, dict):
                    continue
                ended = datetime.fromisoformat(line.get("timestamp", ""))
                if since <= ended - timedelta(milliseconds=line.get("ms", 0)) and ended <= until:
                    lines.append(line)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/stalls.py", description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--interval", type=float, default=0.01, help="sampling interval, seconds (default: 0.01)")
    p.add_argument("--show", type=int, default=5, help="the longest episodes shown one by one (default: 5)")
    p.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_DATABASE_URL",
                                                         "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--broker-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--subjects", type=int, default=stack.POPULATION, metavar="N",
                   help="citizens asked about, one at random per exchange (default: %(default)s)")
    p.add_argument("--tmpfs", action="store_true",
                   help="the broker's embedded PostgreSQL with its data in /dev/shm (no disk waits; stack.py)")
    args = p.parse_args(argv)
    if not 1 <= args.subjects <= 200_000:
        p.error("--subjects: between 1 and 200,000")
    s = Settings(levels=(1,), reps=1, warmup=1.0, duration=args.seconds, rate=args.rate, open_duration=args.seconds,
                 open_connections=64, loadgen_procs=1, brokers=1, basis="information", embedded=args.tmpfs,
                 tmpfs=args.tmpfs, admin_url=args.admin_url, nginx=shutil.which("nginx"), pyspy=None, profile_seconds=0,
                 keep_workdir=False, workers=args.workers, subjects=args.subjects,
                 broker_env=tuple((e.partition("=")[0], e.partition("=")[2]) for e in args.broker_env))
    with contextlib.ExitStack() as es, tempfile.TemporaryDirectory() as tmp:
        st = stack.build(es, s)
        print(stack.smoke_test(st), file=sys.stderr)
        makers, endpoints = st.makers("broker")
        asyncio.run(loadgen.open_loop(makers, endpoints, rate=args.rate, warmup=0.5, duration=3.0, connections=64,
                                      request_timeout=10))  # warm-up: connections, caches, the first rounds
        until = time.monotonic() + 1.0 + args.seconds + 3.0
        fork = multiprocessing.get_context("fork")
        samplers = [fork.Process(target=sample_activity, args=(f"{tmp}/activity.json", st.db_dsn, until,
                                                                args.interval)),
                    fork.Process(target=sample_cpu, args=(f"{tmp}/cpu.json", until, args.interval))]
        for sampler in samplers:
            sampler.start()
        time.sleep(0.5)
        trace: list[tuple[float, float]] = []
        asyncio.run(loadgen.open_loop(makers, endpoints, rate=args.rate, warmup=0.5, duration=args.seconds,
                                      connections=64, request_timeout=10, trace=trace))
        # the trace's clock (loadgen.now, monotonic) to the log lines' (UTC): the window's exchanges only
        wall = time.time() - loadgen.now()
        since, until = (datetime.fromtimestamp(min(t for t, _ in trace) + wall, UTC),
                        datetime.fromtimestamp(max(d for _, d in trace) + wall + 0.05, UTC))
        account = own_account(broker_lines(sorted(st.workdir.glob("broker-*.log")), since, until))
        for sampler in samplers:
            sampler.join()
        activity: Any = json.loads(Path(f"{tmp}/activity.json").read_text())
        cpu: Any = json.loads(Path(f"{tmp}/cpu.json").read_text())
    print(f"stalls at {args.rate:.0f}/s for {args.seconds:.0f} s, broker --workers {args.workers}, "
          f"{args.subjects:,} citizens, sampling every "
          f"{args.interval * 1000:.0f} ms")
    report(sorted(trace), Samples(activity, cpu), args.show)
    print("\n" + "\n".join(account))
    return 0


if __name__ == "__main__":
    sys.exit(main())
