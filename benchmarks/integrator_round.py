"""What one integration round costs the database, with the access-log guard of migration 0029 and of 0030.

    .venv/bin/python benchmarks/integrator_round.py [--admin-url URL] [--rows 200] [--reps 7]

A round (broker/tlog/log.py `TransparencyLog.integrate`) gives each pending access-log row its index in one
UPDATE, and the guard trigger checks every updated row. At 200 exchanges/s a round holds about 200 rows, and the
exchanges' own statements wait behind it on a small server. In a fresh database (created, migrated, dropped at the
end), each repetition commits `--rows` entries, then integrates them once under each guard (the other's rows
committed anew), the two alternating: the round's wall time, its PostgreSQL backend's CPU (from /proc), per
round and per row. The 0029 guard is taken from its migration file and installed for its turn only. It prints
figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import procs

from broker.storage import db
from broker.tlog import accesslog, leaves
from broker.tlog.accesslog import LogEntry
from broker.tlog.log import NoteSigner, TransparencyLog

MIGRATIONS = Path(__file__).resolve().parent.parent / "broker" / "storage" / "sql" / "migrations"
CONSUMER = "21750001600019"


def guard(migration: str) -> str:
    """The CREATE OR REPLACE FUNCTION access_log_guard() statement of a migration file."""
    text = next(MIGRATIONS.glob(f"{migration}_*.sql")).read_text()
    found = re.search(r"CREATE OR REPLACE FUNCTION access_log_guard\(\).*?\$\$;", text, re.S)
    if found is None:
        raise SystemExit(f"no access_log_guard in migration {migration}")
    return found.group(0)


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


async def run(dsn: str, rows: int, reps: int) -> dict[str, list[tuple[float, float]]]:
    pool = await db.create_pool(dsn, min_size=1, max_size=1)  # one backend: its CPU is the round's
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn)
            pid = conn.get_server_pid()
        tlog = TransparencyLog(pool, NoteSigner("bench.dlnuf/log", Ed25519PrivateKey.generate()),
                               max_merge_delay=60, batch=rows)
        await tlog.ensure_checkpoint()
        guards = {"0029 (rows compared as jsonb)": guard("0029"), "0030 (rows compared as records)": guard("0030")}
        got: dict[str, list[tuple[float, float]]] = {name: [] for name in guards}
        n = 0
        for rep in range(reps):
            for name in list(guards)[:: 1 if rep % 2 == 0 else -1]:
                await pool.execute(guards[name])
                for _ in range(rows):
                    await accesslog.commit(pool, entry(n))
                    n += 1
                cpu, start = backend_cpu(pid), time.perf_counter()
                done = await tlog.integrate()
                wall, cpu = time.perf_counter() - start, backend_cpu(pid) - cpu
                if done != rows:
                    raise SystemExit(f"integrated {done} rows, expected {rows}")
                got[name].append((wall, cpu))
        await pool.execute(guards["0030 (rows compared as records)"])
        return got
    finally:
        await pool.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    with contextlib.ExitStack() as es:
        dsn = procs.create_database(es, args.admin_url, f"dlnuf_round_{secrets.token_hex(3)}")
        got = asyncio.run(run(dsn, args.rows, args.reps))
    print(f"integration rounds of {args.rows} rows, {args.reps} per guard, alternated; medians per round "
          "(PostgreSQL CPU: the round's backend, from /proc/<pid>/schedstat)")
    print(f"{'guard':34s} {'wall ms':>8s} {'PG CPU ms':>10s} {'PG CPU us/row':>14s}")
    for name, values in got.items():
        wall = statistics.median(w for w, _ in values) * 1000
        cpu = statistics.median(c for _, c in values) * 1000
        print(f"{name:34s} {wall:8.1f} {cpu:10.1f} {cpu * 1000 / args.rows:14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
