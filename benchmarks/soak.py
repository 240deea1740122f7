"""Soak: the full exchange pipeline at a steady share of its measured capacity, watched for leaks.

    .venv/bin/python benchmarks/soak.py --minutes 60 --share 0.3 --output soak.txt
    .venv/bin/python benchmarks/soak.py --minutes 3                       # a quick look

Starts what `exchange.py` starts (stack.py: the API Particulier sandbox as the provider, a fresh database, one
`python -m broker serve` with a registry written for the run) with the broker's debug route switched on
(`DLNUF_DEBUG_RUNTIME=true`, see `broker/observability/runtime.py`) and Python's allocation tracing
(`PYTHONTRACEMALLOC`, unless `--no-tracemalloc`). It measures the broker's capacity (closed loop, c=16), then
sends signed exchanges in an open loop at `--share` of it, in windows of `--interval` seconds, until `--minutes`
have passed (it stops by itself; Ctrl-C and SIGTERM stop it early and clean up). After every window it prints the
broker's RSS, open file descriptors, database pool connections (main and claims pools: size/idle), asyncio tasks
and live objects, beside the window's rate, latency and errors. At the end: the RSS slope of the first and the
last quarter (MB/hour; a leak keeps its slope, warm-up flattens), and the top allocations by source line with
their growth since the end of the first window. Nothing asserts: it prints figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procs
import stack
from runner import Bench, LoadGenerators, Stats
from stack import HOST, Settings


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the load started
    rss: int
    fds: int
    tasks: int
    objects: int
    pools: dict[str, dict[str, int]]
    window: Stats | None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/soak.py", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0, help="how long to load (default: %(default)s)")
    p.add_argument("--share", type=float, default=0.3, help="share of the measured capacity (default: %(default)s)")
    p.add_argument("--rate", type=float,
                   help="exchanges/s instead of a share: on a shared machine the capacity measured in 5 s may be "
                        "another run's noise")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between samples (default: %(default)s)")
    p.add_argument("--tracemalloc-frames", type=int, default=1,
                   help="frames per traced allocation, 0 to leave tracing off (default: %(default)s)")
    p.add_argument("--top", type=int, default=15, help="allocation lines to print at the end (default: 15)")
    p.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_DATABASE_URL",
                                                         "postgresql://postgres@127.0.0.1:5432/postgres"),
                   help="PostgreSQL on which the run's database is created and dropped (default: %(default)s)")
    p.add_argument("--embedded", action="store_true", help="use the broker's embedded PostgreSQL")
    p.add_argument("--output", type=Path, help="also append every printed line to this file")
    return p.parse_args(argv)


class Out:
    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __call__(self, text: str) -> None:
        print(text, flush=True)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(text + "\n")


def debug(port: int, query: str = "", timeout: float = 30.0) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/_debug/runtime{query}", timeout=timeout) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def sample(port: int, t: float, window: Stats | None, query: str = "",
           timeout: float = 30.0) -> tuple[Sample, dict[str, Any]]:
    doc = debug(port, query, timeout)
    return Sample(t, doc["rss_bytes"], doc["open_fds"], doc["tasks"], doc["gc_objects"], doc["pools"], window), doc


def line(s: Sample) -> str:
    pools = " ".join(f"{n} {p['size']}/{p['idle']}" for n, p in s.pools.items())
    w = s.window
    load = (f"{w.rate:6.1f}/s p50 {w.p50:6.2f} ms p99 {w.p99:7.2f} ms errors {w.errors} unsent {w.dropped} "
            f"broker {w.cpu_ms('broker'):.2f} ms CPU/req others {w.others:.2f} cores") if w else "(before load)"
    return (f"{s.t / 60:6.1f} min  RSS {s.rss / 2**20:7.2f} MB  fds {s.fds:4d}  tasks {s.tasks:4d}  "
            f"objects {s.objects:8d}  pools(size/idle) {pools}  | {load}")


def slope_mb_per_hour(points: Sequence[Sample]) -> float:
    if len(points) < 2:
        return float("nan")
    xs = [p.t / 3600 for p in points]
    ys = [p.rss / 2**20 for p in points]
    return statistics.linear_regression(xs, ys).slope


def summary(samples: list[Sample], out: Out) -> None:
    loaded = [s for s in samples if s.window is not None]
    if len(loaded) < 4:
        out("too few samples for a trend (run longer than 4 intervals)")
        return
    q = max(2, len(loaded) // 4)
    first, last = loaded[:q], loaded[-q:]
    total = sum(s.window.count for s in loaded if s.window)
    errors = sum(s.window.errors for s in loaded if s.window)
    out(f"\n== summary: {len(loaded)} windows, {total:,} exchanges scheduled, {errors} errors")
    for name, pts in (("first quarter", first), ("last quarter", last), ("whole run", loaded)):
        out(f"  {name:14s} RSS {statistics.mean(p.rss for p in pts) / 2**20:7.2f} MB mean, slope "
            f"{slope_mb_per_hour(pts):+7.2f} MB/hour; fds {min(p.fds for p in pts)}-{max(p.fds for p in pts)}; "
            f"tasks {min(p.tasks for p in pts)}-{max(p.tasks for p in pts)}; objects "
            f"{statistics.mean(p.objects for p in pts):,.0f} mean")
    growth = (last[-1].rss - first[0].rss) / 2**20
    out(f"  RSS from {first[0].rss / 2**20:.2f} MB to {last[-1].rss / 2**20:.2f} MB ({growth:+.2f} MB, "
        f"{100 * growth * 2**20 / max(1, first[0].rss):+.1f} %)")


def allocations(doc: dict[str, Any], out: Out) -> None:
    alloc = doc.get("allocations") or {}
    if not alloc.get("tracing"):
        out("\n(no allocation tracing in the broker)")
        return
    out(f"\n== tracemalloc: {alloc['traced_bytes'] / 2**20:.2f} MB traced (peak {alloc['peak_bytes'] / 2**20:.2f})")
    out("  top allocations by line:")
    for a in alloc["top"]:
        out(f"    {a['bytes'] / 1024:10.1f} KiB {a['count']:8d} blocks  {a['where']}")
    if "growth" in alloc:
        out("  growth since the end of the first window:")
        for a in alloc["growth"]:
            out(f"    {a['bytes'] / 1024:+10.1f} KiB {a['count']:+8d} blocks  {a['where']}")


def run(args: argparse.Namespace, out: Out) -> int:
    env: list[tuple[str, str]] = [("DLNUF_DEBUG_RUNTIME", "true")]
    if args.tracemalloc_frames > 0:
        env.append(("PYTHONTRACEMALLOC", str(args.tracemalloc_frames)))
    s = Settings(levels=(16,), reps=1, warmup=0.0, duration=5.0, rate=100.0, open_duration=args.interval,
                 open_connections=32, loadgen_procs=1, brokers=1, basis="information", embedded=args.embedded,
                 admin_url=args.admin_url, nginx=None, pyspy=None, profile_seconds=0.0, keep_workdir=False,
                 broker_env=tuple(env))
    es = contextlib.ExitStack()
    try:
        st = stack.build(es, s)
        out(f"code {stack.source_state()}; smoke test: {stack.smoke_test(st)}")
        port = st.broker_ports[0]
        bench = Bench(st, s, LoadGenerators(es, 1))
        bench.closed("broker", 16, duration=3.0)  # warm-up
        capacity = bench.closed("broker", 16, duration=5.0)
        rate = args.rate or max(5.0, args.share * capacity.rate)
        share = 100 * rate / max(1e-9, capacity.rate)
        out(f"capacity (closed loop, c=16, 5 s): {capacity.rate:.0f}/s, p50 {capacity.p50:.1f} ms; soak at "
            f"{rate:.0f}/s ({share:.0f} %) for {args.minutes:g} min, a sample every {args.interval:g} s; "
            f"tracemalloc {'off' if args.tracemalloc_frames <= 0 else f'{args.tracemalloc_frames} frame(s)'}")
        started = time.monotonic()
        deadline = started + 60 * args.minutes
        samples = [sample(port, 0.0, None)[0]]
        out(line(samples[0]))
        while time.monotonic() + args.interval / 2 < deadline:
            window = bench.open("broker", rate, duration=min(args.interval, deadline - time.monotonic()))
            first = len(samples) == 1  # the allocation baseline: after one window of warm-up
            current = sample(port, time.monotonic() - started, window, "?baseline=1" if first else "")[0]
            samples.append(current)
            out(line(current))
        summary(samples, out)
        # a snapshot of a traced heap, compared with the baseline, takes the broker seconds to minutes on a busy
        # machine (an hour's run on 2 shared cores timed out at 30 s): the load has stopped, wait for it
        try:
            _, doc = sample(port, time.monotonic() - started, None, f"?top={max(1, min(100, args.top))}",
                            timeout=600)
        except OSError as exc:
            out(f"\n(no allocation report: {type(exc).__name__}: {exc})")
        else:
            allocations(doc, out)
        return 0
    finally:
        with procs.ignoring_interrupts():
            es.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rate is not None and not 1 <= args.rate <= 10_000:
        print("--rate between 1 and 10,000", file=sys.stderr)
        return 2
    if not 0.5 <= args.minutes <= 24 * 60 or not 0.01 <= args.share <= 1.0 or not 5 <= args.interval <= 600:
        print("--minutes between 0.5 and 1440, --share between 0.01 and 1, --interval between 5 and 600",
              file=sys.stderr)
        return 2
    out = Out(args.output)
    with procs.sigterm_as_interrupt():
        try:
            return run(args, out)
        except KeyboardInterrupt:
            out("interrupted")
            return 130
        except procs.SetupError as exc:
            out(f"setup failed: {exc}")
            return 2


if __name__ == "__main__":
    sys.exit(main())
