"""What the access log's group commit buys (issue 14), side by side with one transaction per exchange.

    .venv/bin/python benchmarks/group_commit.py                  # about a minute
    .venv/bin/python benchmarks/group_commit.py --reps 5 --entries 400
    .venv/bin/python benchmarks/group_commit.py --what claims    # the nonce claims, batched or one by one
    .venv/bin/python benchmarks/group_commit.py --levels 32 --rates 100,400 --reps 7   # arrivals at random times

On a fresh database on the PostgreSQL at --admin-url (dropped at the end), released entries with their outbox row
and evidence, as the pipeline commits them, `--concurrency` exchanges in flight at a time:

- "each": `accesslog.commit`, one statement (one implicit transaction, one synchronous commit, one WAL flush) per
  entry;
- "group": `broker.tlog.groupcommit.GroupCommit`, one writer batching what queued while its last transaction ran.

`--rates` adds open-loop cells: entries arrive at random (exponential gaps, the same sequence for every variant of a
repetition), and each one's wait counts from its arrival, so a commit that queues behind another is charged for it.

With `--what claims`, the exchanges' nonce claims with a consumer and a habilitation quota, on a pool that does not
wait for the WAL flush (as the broker's claims pool): "each" = `nonce_claim_counted`, one statement per claim, as
before; "group" = `broker.service.claims.ClaimBatcher`, one statement per batch.

Per variant and cell: entries/s, p50 and p99 of an exchange's wait for its commit, transactions per entry, and
the CPU of this database's PostgreSQL backends and of this Python process per entry. Repetitions interleaved, the
variant that goes first alternating, medians (ratios within a repetition). It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import procs

from broker.service.claims import Claim, ClaimBatcher
from broker.storage import db
from broker.tlog import accesslog, evidence
from broker.tlog.accesslog import LogEntry
from broker.tlog.groupcommit import GroupCommit


def entry() -> tuple[LogEntry, evidence.Evidence]:
    e = LogEntry(request_id=str(uuid.uuid4()), consumer="21750001600019", kid="bench", dataset="quotient_familial",
                 dataset_version=1, purpose="tarification-restauration-scolaire", recipient="21750001600019",
                 fields_requested=("quotient_familial", "enfants"), fields_released=("quotient_familial",),
                 outcome="released", http_status=200, latency_ms=3.2, subject_key="ab" * 32)
    e.record_payload(b'{"quotient_familial":{"valeur":1234}}')
    e.bind_request(secrets.token_bytes(64))
    ev = evidence.Evidence(e.id, e.logged_at, "sig1", secrets.token_bytes(64), b"x" * 400, "thumb", 200,
                           secrets.token_bytes(64), b"y" * 300, "broker-thumb")
    return e, ev


def backend_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = procs.cpu_times(pid)
        if times is not None:
            total += sum(times)
    return total


SCOPES = (("c:21750001600019:86400", 86400), ("h:bench:86400", 86400))


class _CountedClaims(ClaimBatcher):
    def __init__(self, pool: asyncpg.Pool, commits: list[int]) -> None:
        super().__init__(pool)
        self._commits = commits

    def _written(self, count: int) -> None:
        self._commits[0] += 1


async def run(dsn: str, name: str, variant: str, concurrency: int, entries: int,
              what: str = "log", rate: float | None = None, seed: int = 0) -> dict[str, float]:
    settings = {"synchronous_commit": "off"} if what == "claims" else None
    pool = await db.create_pool(dsn, min_size=min(concurrency, 10), max_size=10, settings=settings)
    commits = [0]

    def counted(n: int) -> None:
        commits[0] += 1

    writer: GroupCommit | ClaimBatcher = GroupCommit(pool, on_commit=counted)
    each: Callable[[], Awaitable[object]]
    if what == "claims":
        writer = claims = _CountedClaims(pool, commits)

        def claim() -> Claim:
            return Claim("bench", secrets.token_urlsafe(16), datetime.now(UTC) + timedelta(minutes=5), SCOPES)

        if variant == "group":
            async def each() -> object:
                return await claims.claim(claim())
        else:
            async def each() -> object:
                c = claim()
                commits[0] += 1
                return await db.fetch(pool, db.queries()["nonce_claim_counted"], c.kid, c.nonce, c.expires_at,
                                      [s for s, _ in c.scopes], [w for _, w in c.scopes])
    else:
        log_writer = writer
        work = [entry() for _ in range(entries)]

        async def each() -> object:
            e, ev = work.pop()
            if variant == "group":
                return await log_writer.commit(e, ev)  # type: ignore[union-attr]
            await accesslog.commit(pool, e, ev)
            commits[0] += 1
            return None

    latencies: list[float] = []
    late: list[float] = []  # open loop: how late the event loop woke each arrival (its timers' resolution)
    queue = list(range(entries))

    async def client() -> None:
        while queue:
            queue.pop()
            start = time.perf_counter()
            await each()
            latencies.append(1000 * (time.perf_counter() - start))

    async def arrival(at: float) -> None:
        await asyncio.sleep(at - time.perf_counter())
        late.append(1000 * (time.perf_counter() - at))
        await each()
        latencies.append(1000 * (time.perf_counter() - at))

    try:
        pids = await _pids(dsn, name)
        pg0, py0, t0 = backend_cpu(pids), time.process_time(), time.perf_counter()
        if rate is None:
            await asyncio.gather(*(client() for _ in range(concurrency)))
        else:
            arrivals, at, draw = [], t0 + 0.01, random.Random(seed)
            for _ in range(entries):
                at += draw.expovariate(rate)
                arrivals.append(at)
            await asyncio.gather(*(arrival(a) for a in arrivals))
        elapsed = time.perf_counter() - t0
        pg = backend_cpu(pids) - pg0
        py = time.process_time() - py0
    finally:
        await writer.close()
        await pool.close()
    latencies.sort()
    late.sort()
    return {"rate": entries / elapsed, "p50": statistics.median(latencies), "p99": _p99(latencies),
            "late_p50": statistics.median(late) if late else 0.0, "late_p99": _p99(late) if late else 0.0,
            "commits_per_entry": commits[0] / entries, "pg_us": 1e6 * pg / entries, "py_us": 1e6 * py / entries}


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def _pids(dsn: str, name: str) -> list[int]:
    conn = await db.connect(dsn)
    try:
        return [r["pid"] for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name)]
    finally:
        await conn.close()


def main() -> int:
    p = argparse.ArgumentParser(prog="benchmarks/group_commit.py", description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_DATABASE_URL",
                                                         "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--levels", default="1,8,32", help="exchanges in flight (default: %(default)s)")
    p.add_argument("--entries", type=int, default=300, help="entries per cell (default: %(default)s)")
    p.add_argument("--reps", type=int, default=3, help="repetitions (default: %(default)s)")
    p.add_argument("--rates", default="", help="open-loop cells: entries arriving at random at these mean rates per "
                                               "second (e.g. 100,400; default: none)")
    p.add_argument("--what", choices=["log", "claims"], default="log",
                   help="the access log's commits, or the nonce claims (default: %(default)s)")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    name = f"dlnuf_groupcommit_{os.getpid()}_{secrets.token_hex(3)}"
    with contextlib.ExitStack() as es:
        dsn = procs.create_database(es, args.admin_url, name)

        async def migrate() -> None:
            conn = await db.connect(dsn)
            try:
                await db.migrate(conn)
            finally:
                await conn.close()

        asyncio.run(migrate())
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        variants = ["each", "group"]
        cells: list[tuple[str, int, float | None]] = [(f"c={level}", level, None) for level in levels]
        cells += [(f"{float(rate):g}/s", 10, float(rate)) for rate in args.rates.split(",") if rate]
        for rep in range(args.reps):
            for n, (cell, level, rate) in enumerate(cells):
                for variant in (variants if (rep + n) % 2 == 0 else variants[::-1]):
                    r = asyncio.run(run(dsn, name, variant, level, args.entries, args.what, rate, seed=rep))
                    results.setdefault((variant, cell), []).append(r)
                    print(f"rep {rep + 1} {variant:6s} {cell:6s} {r['rate']:7.0f}/s p50 {r['p50']:6.2f} ms "
                          f"p99 {r['p99']:6.2f} ms commits/entry {r['commits_per_entry']:.2f} PG {r['pg_us']:5.0f} us "
                          f"Python {r['py_us']:5.0f} us", file=sys.stderr, flush=True)
        subject = ("Access-log commits of released entries (row, outbox row, evidence)" if args.what == "log" else
                   "Nonce claims with two quota scopes (claims pool, no WAL flush wait)")
        print(f"\n{subject}, {args.entries} per cell, "
              f"{args.reps} repetitions, medians; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        print(f"{'variant':8s} {'cell':>6s} {'entries/s':>9s} {'p50 ms':>7s} {'p99 ms':>7s} {'commits/entry':>13s} "
              f"{'PG us/entry':>11s} {'Python us/entry':>15s}")
        for cell, _, rate in cells:
            for variant in variants:
                rs = results[(variant, cell)]

                def med(k: str, rs: list[dict[str, float]] = rs) -> float:
                    return statistics.median(r[k] for r in rs)

                print(f"{variant:8s} {cell:>6s} {med('rate'):9.0f} {med('p50'):7.2f} {med('p99'):7.2f} "
                      f"{med('commits_per_entry'):13.2f} {med('pg_us'):11.0f} {med('py_us'):15.0f}")
            def ratio(a: str, b: str, k: str, cell: str = cell) -> str:
                rs = [x[k] / y[k] for x, y in zip(results[(a, cell)], results[(b, cell)], strict=True)]
                better = sum(1 for r in rs if (r > 1 if k == "rate" else r < 1))
                return f"{statistics.median(rs):.2f} (better in {better}/{len(rs)})"

            if rate is None:
                print(f"  {cell}: group/each entries/s {ratio('group', 'each', 'rate')}, p99 "
                      f"{ratio('group', 'each', 'p99')} (medians of per-repetition ratios)")
            else:  # the rate is the schedule's, the same for both: only the waits tell them apart
                lateness = statistics.median(r["late_p99"] for v in variants for r in results[(v, cell)])
                print(f"  {cell}: group/each p50 {ratio('group', 'each', 'p50')}, p99 {ratio('group', 'each', 'p99')} "
                      f"(medians of per-repetition ratios); the event loop woke arrivals up to {lateness:.2f} ms "
                      "late (p99), counted in both")
    return 0


if __name__ == "__main__":
    sys.exit(main())
