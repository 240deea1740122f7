"""What one integration round costs the database: as the broker does it, against as it did before migration 0031.

    .venv/bin/python benchmarks/integrator_round.py [--admin-url URL] [--rows 200] [--reps 7]

A round (broker/tlog/log.py `TransparencyLog.integrate`) gives each pending entry its leaf index. Since migration
0031 it inserts one narrow line per entry into tlog_entries and takes the entry off the queue (tlog_queue, written
with the entry); before, it updated the access-log row itself (`UPDATE access_log SET log_index`: a new version of
the whole row, an entry in five of its indexes, a dead version for autovacuum). Two fresh databases (created,
migrated, dropped at the end): one at the latest migration with the broker's statements, and one migrated up to
0030 with the statements of that time (tests/tlog/before_0031.py). Each repetition commits `--rows` entries one by one
(one exchange each, as at low load), then integrates them in one round, in each database, the order alternating:
the round's wall time, its PostgreSQL backend's CPU (from /proc), and the WAL the round wrote, and the WAL the
entries' own commits wrote (pg_current_wal_insert_lsn, which is the whole server's: run it on a quiet server).
It prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import procs

from broker.storage import db
from broker.tlog import accesslog, leaves
from broker.tlog.accesslog import LogEntry
from broker.tlog.log import NoteSigner, TransparencyLog
from tests.tlog import before_0031

CONSUMER = "21750001600019"
BROKER_BATCH = 1000  # DLNUF_LOG_BATCH's default (broker/config.py)


def entry(n: int) -> LogEntry:
    """A released exchange's entry, as the pipeline fills it."""
    e = LogEntry(request_id=str(uuid.uuid4()), leaf_version=leaves.V2)
    e.consumer, e.kid, e.dataset, e.dataset_version = CONSUMER, f"{CONSUMER}-ed25519", "quotient_familial", 1
    e.purpose, e.recipient = "tarification-restauration-scolaire", CONSUMER
    e.fields_requested = e.fields_released = ("quotient_familial", "enfants")
    e.subject_key = secrets.token_hex(16)
    e.latency_ms = 3.0 + n / 1000
    e.outcome, e.http_status = "released", 200
    e.record_payload(f'{{"quotient_familial":{n}}}'.encode())
    return e


def backend_cpu(pid: int) -> float:
    """Seconds the backend ran on a CPU (/proc/<pid>/schedstat: nanoseconds, not /proc/<pid>/stat's 10 ms ticks)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


async def _wal(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"))


@dataclass
class Variant:
    name: str
    dsn: str
    old: bool
    pool: asyncpg.Pool | None = None
    tlog: TransparencyLog | None = None
    pid: int = 0
    rounds: list[tuple[float, float, int, int]] = field(default_factory=list)
    """(wall s, PostgreSQL CPU s, WAL bytes of the round, WAL bytes of the entries' commits)"""

    def statements(self) -> contextlib.AbstractContextManager[None]:
        return before_0031.old_statements() if self.old else contextlib.nullcontext()


async def run(variants: list[Variant], rows: int, reps: int) -> None:
    for v in variants:
        # one backend: its CPU is the round's
        v.pool = await db.create_pool(v.dsn, min_size=1, max_size=1)
        async with v.pool.acquire() as conn:
            v.pid = conn.get_server_pid()
        # the broker's batch (DLNUF_LOG_BATCH), not `rows`: the round's LIMIT is part of what the planner weighs
        v.tlog = TransparencyLog(v.pool, NoteSigner("bench.dlnuf/log", Ed25519PrivateKey.generate()),
                                 max_merge_delay=60, batch=max(rows, BROKER_BATCH))
        with v.statements():
            await v.tlog.ensure_checkpoint()
    try:
        n = 0
        for rep in range(reps):
            for v in variants[:: 1 if rep % 2 == 0 else -1]:
                assert v.pool is not None and v.tlog is not None
                with v.statements():
                    async with v.pool.acquire() as conn:
                        wal0 = await _wal(conn)
                    for _ in range(rows):
                        await accesslog.commit(v.pool, entry(n))
                        n += 1
                    async with v.pool.acquire() as conn:
                        wal1 = await _wal(conn)
                    cpu, start = backend_cpu(v.pid), time.perf_counter()
                    done = await v.tlog.integrate()
                    wall, cpu = time.perf_counter() - start, backend_cpu(v.pid) - cpu
                    async with v.pool.acquire() as conn:
                        wal2 = await _wal(conn)
                if done != rows:  # one round takes them all (the batch is at least `rows`)
                    raise SystemExit(f"{v.name}: integrated {done} rows, expected {rows}")
                v.rounds.append((wall, cpu, wal2 - wal1, wal1 - wal0))
    finally:
        for v in variants:
            if v.pool is not None:
                await v.pool.close()


async def migrate(dsn: str, upto: int | None) -> None:
    every = db.migrations
    if upto is not None:
        db.migrations = lambda package="broker.storage": [m for m in every(package) if m.version <= upto]
    try:
        conn = await db.connect(dsn)
        try:
            await db.migrate(conn)
        finally:
            await conn.close()
    finally:
        db.migrations = every


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    variants = []
    with contextlib.ExitStack() as es:
        for name, upto in (("before 0031: UPDATE access_log SET log_index", 30),
                           ("now: INSERT INTO tlog_entries, queue", None)):
            dsn = procs.create_database(es, args.admin_url, f"dlnuf_round_{secrets.token_hex(3)}")
            asyncio.run(migrate(dsn, upto))
            variants.append(Variant(name, dsn, old=upto is not None))
        asyncio.run(run(variants, args.rows, args.reps))
    print(f"integration rounds of {args.rows} entries, {args.reps} per variant, alternated; medians per round "
          "(PostgreSQL CPU: the round's backend, from /proc/<pid>/schedstat; WAL: pg_current_wal_insert_lsn)")
    print(f"{'variant':46s} {'wall ms':>8s} {'PG CPU ms':>10s} {'CPU us/row':>11s} {'WAL kB':>8s} {'WAL B/row':>10s}"
          f" {'entries WAL B/row':>18s}")
    for v in variants:
        wall, cpu, wal, entries = (statistics.median(r[i] for r in v.rounds) for i in range(4))
        print(f"{v.name:46s} {wall * 1000:8.1f} {cpu * 1000:10.1f} {cpu * 1e6 / args.rows:11.1f} {wal / 1000:8.1f}"
              f" {wal / args.rows:10.0f} {entries / args.rows:18.0f}")
    pairs = list(zip(variants[0].rounds, variants[1].rounds, strict=True))
    print("ratios now / before 0031, per repetition then median: "
          + ", ".join(f"{name} {statistics.median(n[i] / o[i] for o, n in pairs):.2f}"
                      for i, name in ((1, "PG CPU"), (2, "round WAL"), (3, "entries WAL"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
