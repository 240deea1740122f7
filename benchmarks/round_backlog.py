"""What an integration round costs PostgreSQL when a backlog waits: the broker's sessions (JIT off, as
broker/storage/db.py asks) against the same round with the server's JIT on.

    .venv/bin/python benchmarks/round_backlog.py [--admin-url URL] [--template DB] [--backlog 30000] [--rounds 8]

A backlog builds up when rounds stop for a while (an outage of the integrating processes, a slow disk) while
exchanges go on. The script makes a database (a copy of `--template`, e.g. a log made by `large_log.py generate`,
else a new one, migrated), commits `--backlog` entries without integrating them, analyses it as autovacuum would,
then integrates rounds of `--batch` entries (the broker's default, 1,000), alternately with JIT on and with the
broker's own sessions, on one connection each for the whole run, as a broker keeps its pool's. Per
round: the wall time and the backend's CPU (`/proc/<pid>/schedstat`); it also says from which round each
connection ran the queue's statement with a generic plan, and whether that plan would be compiled with JIT on.
The database is dropped at the end. It prints figures and never fails on them.
JIT only starts above `jit_above_cost`: with custom plans it did not here; PostgreSQL's generic plan of the queue
statement, over `large_log.py`'s 13 monthly partitions, passed it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import procs
from integrator_round import backend_cpu, entry, migrate

from broker.storage import db
from broker.tlog import accesslog
from broker.tlog.log import NoteSigner, TransparencyLog, _q

Round = tuple[float, float, bool]
"""(wall s, PostgreSQL CPU s, whether the queue statement ran a generic plan by then)"""

VARIANTS = (("the server's JIT (jit = on)", {"jit": "on"}), ("the broker's sessions (jit = off)", {}))


async def fill(dsn: str, backlog: int) -> tuple[int, bool]:
    """Commit the backlog and analyse; how many entries wait (a copied log may have had some already), and whether
    this server can JIT at all."""
    writer = await db.create_pool(dsn, min_size=1, max_size=1)
    try:
        async with writer.acquire() as conn:
            for start in range(0, backlog, 500):
                await accesslog.write(conn, [(entry(n), None) for n in range(start, min(start + 500, backlog))])
            await conn.execute("ANALYZE")
            waiting = int(await conn.fetchval("SELECT count(*) FROM tlog_queue"))
            # pg_jit_available() is false in a session whose jit is off
            return waiting, bool(await conn.fetchval("SELECT set_config('jit', 'on', false), pg_jit_available()",
                                                     column=1))
    finally:
        await writer.close()


async def generic_plan_jits(dsn: str, batch: int) -> bool:
    """Whether the queue statement's generic plan (the one PostgreSQL keeps once it finds it no dearer than the
    custom ones) would be compiled, in a session with JIT on."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET jit = on; SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE pending(bigint) AS {_q()['tlog_pending'].rstrip().rstrip(';')}")
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE pending({batch})")
        return "JIT" in (json.loads(raw) if isinstance(raw, str) else raw)[0]
    finally:
        await conn.close()


async def run(dsn: str, backlog: int, rounds: int, batch: int) -> tuple[int, bool, bool, dict[str, list[Round]]]:
    waiting, jit_available = await fill(dsn, backlog)
    generic_jit = await generic_plan_jits(dsn, batch)
    signer = NoteSigner("bench.dlnuf/log", Ed25519PrivateKey.generate())
    figures: dict[str, list[Round]] = {name: [] for name, _ in VARIANTS}
    sides = []
    try:
        # one connection per variant for the whole run, as a broker keeps its pool's: PostgreSQL plans a prepared
        # statement afresh on its first five executions, then may keep a generic plan
        for name, settings in VARIANTS:
            pool = await db.create_pool(dsn, min_size=1, max_size=1, settings=settings)
            sides.append((name, pool, TransparencyLog(pool, signer, max_merge_delay=60, batch=batch)))
        for r in range(rounds):
            for name, pool, tlog in sides[:: 1 if r % 2 == 0 else -1]:
                async with pool.acquire() as conn:
                    pid = conn.get_server_pid()
                cpu, start = backend_cpu(pid), time.perf_counter()
                done = await tlog.integrate()
                wall, cpu = time.perf_counter() - start, backend_cpu(pid) - cpu
                if done != batch:
                    raise SystemExit(f"a round integrated {done} entries, not {batch}: raise --backlog")
                async with pool.acquire() as conn:
                    generic = await conn.fetchval("SELECT generic_plans FROM pg_prepared_statements "
                                                  "WHERE statement = $1", _q()["tlog_pending"])
                figures[name].append((wall, cpu, bool(generic)))
    finally:
        for _, pool, _ in sides:
            await pool.close()
    return waiting, jit_available, generic_jit, figures


def copy_of(stack: contextlib.ExitStack, admin_url: str, template: str) -> str:
    name = f"dlnuf_backlog_{secrets.token_hex(3)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_url, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    stack.callback(lambda: asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')))
    return procs.database_url(admin_url, name)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--template", help="a database to copy (nobody connected to it), e.g. dlnuf_large_300000")
    p.add_argument("--backlog", type=int, default=30_000)
    p.add_argument("--rounds", type=int, default=8, help="rounds per variant, alternated")
    p.add_argument("--batch", type=int, default=1000)
    args = p.parse_args(argv)
    if args.backlog < 2 * args.rounds * args.batch:
        p.error("--backlog must hold 2 x --rounds x --batch entries: every round takes a full batch")
    with contextlib.ExitStack() as es:
        if args.template:
            dsn = copy_of(es, args.admin_url, args.template)
        else:
            dsn = procs.create_database(es, args.admin_url, f"dlnuf_backlog_{secrets.token_hex(3)}")
        asyncio.run(migrate(dsn, None))
        waiting, jit_available, generic_jit, figures = asyncio.run(run(dsn, args.backlog, args.rounds, args.batch))
    print(f"rounds of {args.batch} entries from a backlog of {waiting:,} draining to "
          f"{waiting - 2 * args.rounds * args.batch:,}, {args.rounds} per variant, alternated, one connection "
          f"each; {'a copy of ' + args.template if args.template else 'a new database'}; "
          f"pg_jit_available() = {jit_available}; the queue statement's generic plan "
          f"{'would be' if generic_jit else 'would not be'} compiled with JIT on")
    print(f"{'variant':36s} {'wall ms':>8s} {'PG CPU ms':>10s} {'generic plan':>13s}  (medians per round)")
    for name, rows in figures.items():
        first = next((f"from round {i + 1}" for i, (_, _, g) in enumerate(rows) if g), "never")
        print(f"{name:36s} {statistics.median(w for w, _, _ in rows) * 1000:8.1f} "
              f"{statistics.median(c for _, c, _ in rows) * 1000:10.1f} {first:>13s}")
    on, off = (figures[name] for name, _ in VARIANTS)
    ratios = [o[1] / n[1] for n, o in zip(on, off, strict=True)]
    print(f"PG CPU, broker's / JIT on, per round pair then median: {statistics.median(ratios):.2f} "
          f"(lower in {sum(r < 1 for r in ratios)} of {len(ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
