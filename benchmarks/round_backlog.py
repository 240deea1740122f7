"""What an integration round costs PostgreSQL when a backlog waits: the broker's sessions (JIT off, as
broker/storage/db.py asks) against the same round with the server's JIT on.

    .venv/bin/python benchmarks/round_backlog.py [--admin-url URL] [--backlog 30000] [--rounds 16]

A backlog builds up when rounds stop for a while (an outage of the integrating processes, a slow disk) while
exchanges go on: the queue then holds tens of thousands of entries, the round's queue statement is estimated
dearer, and from PostgreSQL's `jit_above_cost` the server compiles the statement's expressions before running it.
The script makes a fresh database on the server (created, migrated, dropped at the end), commits `--backlog`
entries in batches, then integrates them in rounds of `--batch` entries (the broker's default, 1,000), alternately
on a pool with JIT on and on one as the broker makes it (JIT off), one connection each, so both drain the same
backlog at about the same size. Per round: its wall time and its backend's CPU (`/proc/<pid>/schedstat`). It prints
figures and never fails on them. A server built without LLVM (`pg_jit_available()` false) shows no difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import procs
from integrator_round import backend_cpu, entry, migrate

from broker.storage import db
from broker.tlog import accesslog
from broker.tlog.log import NoteSigner, TransparencyLog

VARIANTS = (("the server's JIT (jit = on)", {"jit": "on"}), ("the broker's sessions (jit = off)", {}))


async def run(dsn: str, backlog: int, rounds: int, batch: int) -> tuple[bool, dict[str, list[tuple[float, float]]]]:
    signer = NoteSigner("bench.dlnuf/log", Ed25519PrivateKey.generate())
    writer = await db.create_pool(dsn, min_size=1, max_size=1)
    try:
        async with writer.acquire() as conn:
            for start in range(0, backlog, 500):
                await accesslog.write(conn, [(entry(n), None) for n in range(start, min(start + 500, backlog))])
            # as autovacuum would after such a batch: the planner then knows how long the queue is
            await conn.execute("ANALYZE")
            # pg_jit_available() is false in a session whose jit is off
            jit_available = bool(await conn.fetchval("SELECT set_config('jit', 'on', false), pg_jit_available()",
                                                     column=1))
    finally:
        await writer.close()
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in VARIANTS}
    logs: list[tuple[str, TransparencyLog, int]] = []
    pools = []
    try:
        for name, settings in VARIANTS:
            pool = await db.create_pool(dsn, min_size=1, max_size=1, settings=settings)
            pools.append(pool)
            async with pool.acquire() as conn:
                pid = conn.get_server_pid()
            logs.append((name, TransparencyLog(pool, signer, max_merge_delay=60, batch=batch), pid))
        for r in range(rounds):
            for name, tlog, pid in logs[:: 1 if r % 2 == 0 else -1]:
                cpu, start = backend_cpu(pid), time.perf_counter()
                done = await tlog.integrate()
                wall, cpu = time.perf_counter() - start, backend_cpu(pid) - cpu
                if done != batch:
                    raise SystemExit(f"round {r}: integrated {done} entries, not {batch}: raise --backlog")
                figures[name].append((wall, cpu))
    finally:
        for pool in pools:
            await pool.close()
    return jit_available, figures


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--backlog", type=int, default=30_000)
    p.add_argument("--rounds", type=int, default=8, help="rounds per variant, alternated")
    p.add_argument("--batch", type=int, default=1000)
    args = p.parse_args(argv)
    if args.backlog < 2 * args.rounds * args.batch:
        p.error("--backlog must hold 2 x --rounds x --batch entries: every round takes a full batch")
    with contextlib.ExitStack() as es:
        dsn = procs.create_database(es, args.admin_url, f"dlnuf_backlog_{secrets.token_hex(3)}")
        asyncio.run(migrate(dsn, None))
        jit_available, figures = asyncio.run(run(dsn, args.backlog, args.rounds, args.batch))
    print(f"rounds of {args.batch} entries from a backlog of {args.backlog:,} draining to "
          f"{args.backlog - 2 * args.rounds * args.batch:,}, {args.rounds} per variant, alternated; "
          f"pg_jit_available() = {jit_available}")
    print(f"{'variant':36s} {'wall ms':>8s} {'PG CPU ms':>10s}  (medians per round)")
    for name, rows in figures.items():
        print(f"{name:36s} {statistics.median(w for w, _ in rows) * 1000:8.1f} "
              f"{statistics.median(c for _, c in rows) * 1000:10.1f}")
    on, off = (figures[name] for name, _ in VARIANTS)
    ratios = [o[1] / n[1] for n, o in zip(on, off, strict=True)]
    print("PG CPU per round, ms, in order: " + "; ".join(
        f"{name.split(' (')[1].rstrip(')')}: " + ", ".join(f"{c * 1000:.0f}" for _, c in rows)
        for (name, _), rows in zip(VARIANTS, (on, off), strict=True)))
    print(f"PG CPU, broker's / JIT on, per round pair then median: {statistics.median(ratios):.2f} "
          f"(lower in {sum(r < 1 for r in ratios)} of {len(ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
