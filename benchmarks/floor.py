"""The latency floor of the broker's guarantees on this machine, measured beside the broker in one run.

    .venv/bin/python benchmarks/floor.py                     # 200/s open loop, 8 repetitions, about 5 minutes
    .venv/bin/python benchmarks/floor.py --rate 200 --reps 12 --json floor.json

Issue 14 asks for at most 5 ms of p99 latency added over a direct call to the provider at 200 requests/s. Two of
the broker's guarantees cost round trips no implementation can skip: a nonce is claimed in PostgreSQL before the
provider is called (a replay never reaches a provider, whichever process or node receives it), and the access-log
row is committed, durably, before the answer leaves. This script measures what those round trips cost here, with
none of the broker's own work around them, so that the broker's p99 splits into what the guarantees cost on this
host and what the broker adds on top.

The reference servers (one Python process, asyncio and asyncpg, the least code that makes the guarantees' round
trips):
- "floor": read the request; claim the nonce of its Signature-Input (one INSERT, committed without waiting for the
  WAL flush, as the broker's claims are; a nonce seen before is refused with a 401 before the upstream is called;
  the signature itself is not verified); GET the provider's answer from the same fast upstream over a kept-alive
  connection; INSERT the answer into a log table, committed durably (synchronous_commit = on: the WAL flush is
  awaited); answer with the provider's bytes;
- "floor, no flush": the same, the log row committed without waiting for the WAL flush. What "floor" costs more is
  the durable commit: the fsync of this machine's disk, as PostgreSQL meets it (a difference between the tails of
  two cells measured one after the other, not the commit's own p99).

The floor is a reference point for those round trips, not a rival implementation: it verifies no signature, its
claim counts no quota, and its log row is a nonce and the answer under one index, where the broker's claim updates
quota counters and its access-log row (with evidence and outbox) goes under six. What it measures is what any
implementation of the guarantees pays on this machine: the loopback round trips to PostgreSQL and the upstream, the
commits, the WAL flush, and one Python process's hop.

Cells, alternated and rotated over `--reps` repetitions: the upstream direct, "floor, no flush", "floor" and the
broker (`--workers`, fast upstream, as benchmarks/exchange.py builds it), each at `--rate` open loop. Printed: the
medians, and per repetition then median, the p99 each adds over the direct upstream. It prints figures and never
fails on them.

Each repetition also times the disk alone: 8 KiB written and `fdatasync`ed at `--rate` in `--fsync-dir` (put it on
the disk of PostgreSQL's WAL), so that a slow durable commit can be told from the disk under it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import asyncpg
import procs
import stack
from loadgen import Endpoint, SignedExchange
from runner import Bench, LoadGenerators, Stats

_TABLES = """
CREATE TABLE IF NOT EXISTS floor_claims (nonce text PRIMARY KEY, claimed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS floor_log (id bigserial PRIMARY KEY, nonce text NOT NULL, answer bytea NOT NULL,
                                      logged_at timestamptz NOT NULL DEFAULT now());
"""


class _Upstream:
    """Kept-alive HTTP/1.1 connections to the fast upstream: a GET, its answer's body (a Content-Length answer,
    as nginx and aiohttp send; anything else is refused rather than misread)."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port = port
        self.request = request
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self) -> bytes:
        # a kept connection the upstream closed meanwhile (its keep-alive timeout) fails at once: one retry on a
        # fresh connection, as an HTTP client does, so that the floor is not charged a failure it would not have
        for attempt in (1, 2):
            reader, writer = (self.idle.pop() if self.idle and attempt == 1
                              else await asyncio.open_connection(stack.HOST, self.port))
            try:
                writer.write(self.request)
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                if attempt == 2:
                    raise
                continue
            length = _content_length(head)
            if length is None:
                writer.close()
                raise RuntimeError("upstream answer without Content-Length")
            body = await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                writer.close()
                raise RuntimeError(f"upstream answered {head[:40]!r}")
            self.idle.append((reader, writer))
            return body
        raise AssertionError("unreachable")


def _content_length(head: bytes) -> int | None:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line[15:])
    return None


_NONCE = re.compile(rb'nonce="([^"]{1,256})"')


def _answer(status: str, body: bytes = b"") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


async def _serve(ports: dict[str, int], dsn: str, upstream_port: int, upstream_request: bytes) -> None:
    claims = await asyncpg.create_pool(dsn, min_size=4, max_size=16, server_settings={"synchronous_commit": "off"})
    logs = {mode: await asyncpg.create_pool(dsn, min_size=4, max_size=16,
                                            server_settings={"synchronous_commit": "on" if mode == "floor" else "off"})
            for mode in ports}
    upstream = _Upstream(upstream_port, upstream_request)

    async def exchange(mode: str, head: bytes) -> bytes:
        # the request's own nonce, from its Signature-Input (not verified: the floor checks no signature), so that
        # a replay is refused before the upstream is called, as the broker refuses it
        found = _NONCE.search(head)
        if found is None:
            return _answer("400 Bad Request")
        nonce = found.group(1).decode("ascii", "replace")
        try:
            await claims.execute("INSERT INTO floor_claims (nonce) VALUES ($1)", nonce)
        except asyncpg.UniqueViolationError:
            return _answer("401 Unauthorized")
        answer = await upstream.get()
        await logs[mode].execute("INSERT INTO floor_log (nonce, answer) VALUES ($1, $2)", nonce, answer)
        return _answer("200 OK", answer)

    def handler(mode: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    await reader.readexactly(_content_length(head) or 0)
                    try:
                        writer.write(await exchange(mode, head))
                    except Exception as exc:  # a failed upstream call or statement: a 502, never a silent close
                        writer.write(_answer("502 Bad Gateway", repr(exc).encode()[:200]))
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                writer.close()
        return one

    servers = [await asyncio.start_server(handler(mode), stack.HOST, port, backlog=1024)
               for mode, port in ports.items()]
    try:
        await asyncio.sleep(24 * 3600)  # bounded; the parent terminates us long before
    finally:
        for server in servers:
            server.close()
        for _, writer in upstream.idle:
            writer.close()
        for pool in (claims, *logs.values()):
            await pool.close()


def serve_floor(ports: dict[str, int], dsn: str, upstream_port: int, upstream_request: bytes) -> None:
    """Entry point of the reference servers' process (127.0.0.1 only, until terminated)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve(ports, dsn, upstream_port, upstream_request))


def _execute(dsn: str, sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def _drop_tables(dsn: str) -> None:
    """The floor's tables go with it: a database the run keeps (exchange.py --database-url) keeps none of them."""
    with contextlib.suppress(OSError, asyncpg.PostgresError):
        _execute(dsn, "DROP TABLE IF EXISTS floor_claims, floor_log")


def start_floor(es: contextlib.ExitStack, st: stack.Stack) -> None:
    """The reference servers beside the stack, on its database and fast upstream, added to its targets."""
    _execute(st.db_dsn, _TABLES)
    es.callback(_drop_tables, st.db_dsn)
    get = (f"GET {stack.stub_path_query()} HTTP/1.1\r\nHost: {stack.HOST}:{st.stub_port}\r\n"
           f"Authorization: Bearer {st.token}\r\nAccept: application/json\r\n\r\n").encode()
    ports = {"floor": procs.free_port(), "floor-noflush": procs.free_port()}
    process = multiprocessing.get_context("spawn").Process(
        target=serve_floor, args=(ports, st.db_dsn, st.stub_port, get), daemon=True, name="floor-servers")
    process.start()
    es.callback(stack.stop_mp, process)
    for target, port in ports.items():
        stack._wait_port(port)
        endpoint = Endpoint(stack.HOST, port)
        # the broker's very request, signature and all: the floor reads as many bytes and claims its nonce,
        # but verifies no signature
        st.extra_targets[target] = ([SignedExchange(endpoint, stack.exchange_body(), st.key.to_jwk())], [endpoint])
    pid = process.pid or 0
    st.extra_pids["floor"] = lambda: [pid]


def fsync_probe(directory: Path, rate: float, seconds: float) -> list[float]:
    """Milliseconds of each 8 KiB write + fdatasync of a file in `directory`, paced at `rate` a second: what the
    disk under PostgreSQL's WAL (when `directory` is on it) does with a commit's flush, without PostgreSQL."""
    fd, name = tempfile.mkstemp(prefix="dlnuf-fsync-", dir=directory)
    block = b"\0" * 8192
    out: list[float] = []
    try:
        # written and flushed once before timing, as PostgreSQL's WAL segments are: an overwrite's fdatasync has no
        # file size to record, an extending write's has
        os.pwrite(fd, block * 128, 0)
        os.fsync(fd)
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t = time.perf_counter()
            os.pwrite(fd, block, (i % 128) * 8192)
            os.fdatasync(fd)
            out.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        os.unlink(name)
    return sorted(out)


TARGETS = ("stub", "floor-noflush", "floor", "broker")
LABELS = {"stub": "upstream direct", "floor-noflush": "floor, log commit not flushed",
          "floor": "floor: claim, upstream, durable commit", "broker": "broker (full pipeline)"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s (default: %(default)s)")
    p.add_argument("--reps", type=int, default=8, help="repetitions of every cell (default: %(default)s)")
    p.add_argument("--open-duration", type=float, default=6.0, help="seconds per cell (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="`serve --workers N` (default: %(default)s)")
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="PostgreSQL on which the run's database is created and dropped (default: %(default)s)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every cell's figures as JSON")
    p.add_argument("--fsync-dir", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the disk probe writes (put it on the disk of PostgreSQL's WAL; default: %(default)s)")
    p.add_argument("--subjects", type=int, default=stack.POPULATION, metavar="N",
                   help="citizens the broker is asked about, one at random per exchange, as exchange.py's "
                        "(default: %(default)s; the floor's own log row holds no subject)")
    args = p.parse_args(argv)
    if not 1 <= args.subjects <= 200_000:
        p.error("--subjects: between 1 and 200,000")
    return args


def report(got: dict[str, list[Stats]], disk: list[list[float]], args: argparse.Namespace) -> str:
    med = statistics.median
    lines = [f"DLNUF latency floor, {time.strftime('%Y-%m-%d %H:%M:%S')}, {stack.source_state()}: open loop at "
             f"{args.rate:g}/s, {args.reps} repetitions of {args.open_duration:g} s, targets alternated; broker "
             f"--workers {args.workers}, {args.subjects:,} citizens asked about",
             "Medians over repetitions; 'p99 added' = target p99 - direct p99 within each repetition, then the "
             "median (and its range).", ""]
    header = (f"{'target':40s} {'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s} {'p99 added':>10s} {'range':>16s} "
              f"{'CPU ms/req':>11s}")
    lines += [header, "-" * len(header)]
    direct = got["stub"]
    for target in TARGETS:
        runs = got[target]
        added = [st.p99 - d.p99 for st, d in zip(runs, direct, strict=True)]
        group = {"stub": "stub", "broker": "broker"}.get(target, "floor")
        lines.append(f"{LABELS[target]:40s} {med([s.p50 for s in runs]):7.2f} {med([s.p99 for s in runs]):7.2f} "
                     f"{med([s.max for s in runs]):7.2f} {med(added):+10.2f} "
                     f"{f'{min(added):+.1f} .. {max(added):+.1f}':>16s} {med([s.cpu_ms(group) for s in runs]):11.3f}")
        errors = sum(s.errors for s in runs)
        if errors:
            lines.append(f"  {errors} answers other than 200")
    flush = [f.p99 - n.p99 for f, n in zip(got["floor"], got["floor-noflush"], strict=True)]
    above = [b.p99 - f.p99 for b, f in zip(got["broker"], got["floor"], strict=True)]
    lines += ["", "the durable commit (floor - floor without flush, a difference of two cells' tails), p99: "
                  f"{med(flush):+.2f} ms "
                  f"(per repetition {', '.join(f'{x:+.1f}' for x in flush)})",
              f"the broker over the floor, p99: {med(above):+.2f} ms "
              f"(per repetition {', '.join(f'{x:+.1f}' for x in above)})"]
    if disk:
        def q(values: list[float], p: float) -> float:
            return values[min(len(values) - 1, int(len(values) * p))]

        lines += [f"the disk alone, 8 KiB write + fdatasync at {args.rate:g}/s in {args.fsync_dir} (medians over "
                  f"repetitions): p50 {med([q(d, 0.5) for d in disk]):.2f} ms, "
                  f"p99 {med([q(d, 0.99) for d in disk]):.2f}, "
                  f"p99.9 {med([q(d, 0.999) for d in disk]):.2f}, max {med([d[-1] for d in disk]):.2f} "
                  f"(max of all {max(d[-1] for d in disk):.2f})"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reps < 1 or args.rate <= 0 or args.open_duration <= 0:
        print("floor.py: --reps, --rate and --open-duration must be positive", file=sys.stderr)
        return 2
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        print("floor.py needs nginx for the fast upstream (Debian package nginx)", file=sys.stderr)
        return 2
    s = stack.Settings(levels=(), reps=args.reps, warmup=0.5, duration=2.0, rate=args.rate,
                       open_duration=args.open_duration, open_connections=64, loadgen_procs=1, brokers=1,
                       basis="information", embedded=False, admin_url=args.admin_url, nginx=nginx, pyspy=None,
                       profile_seconds=0, keep_workdir=False, workers=args.workers, subjects=args.subjects)
    got: dict[str, list[Stats]] = {t: [] for t in TARGETS}
    disk: list[list[float]] = []
    es = contextlib.ExitStack()
    try:
        st = stack.build(es, s)
        print(stack.smoke_test(st), file=sys.stderr)
        start_floor(es, st)
        bench = Bench(st, s, LoadGenerators(es, 1))
        for target in TARGETS:  # warm every path once: connections, pools, caches
            bench.open(target, args.rate, duration=1.0)
        for rep in range(args.reps):
            # rotated, and reversed every other repetition, so that no target always follows the same one (the
            # broker's background work spilling into the next cell would otherwise weigh on one target only)
            order = TARGETS[rep % len(TARGETS):] + TARGETS[:rep % len(TARGETS)]
            for target in order if rep % 2 == 0 else order[::-1]:
                stats = bench.open(target, args.rate)
                got[target].append(stats)
                print(f"  rep {rep + 1} {LABELS[target]:40s} p50 {stats.p50:6.2f} p99 {stats.p99:7.2f} ms "
                      f"(n={stats.count}, errors {stats.errors}, others {stats.others:.2f} cores)", file=sys.stderr)
            disk.append(fsync_probe(args.fsync_dir, args.rate, args.open_duration))
            print(f"  rep {rep + 1} {'disk: write + fdatasync':40s} p99 {disk[-1][int(len(disk[-1]) * 0.99)]:7.2f} ms",
                  file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except procs.SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        with procs.ignoring_interrupts():
            es.close()
    print(report(got, disk, args))
    if args.json is not None:
        args.json.write_text(json.dumps({t: [{"p50_ms": x.p50, "p99_ms": x.p99, "max_ms": x.max, "errors": x.errors,
                                              "others": x.others} for x in runs] for t, runs in got.items()}
                                        | {"disk_fdatasync_ms": disk}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
