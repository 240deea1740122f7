"""What a round costs the database as the log grows, with this tree's migrations against another revision's.

    .venv/bin/python benchmarks/round_growth.py [--base 1dde055] [--steps 50] [--rows 1000] [--admin-url URL]

Two fresh databases, never analysed, as a new broker's (and a benchmark's: exchange.py makes a new one): one
migrated by this tree, one by `--base` (checked out in a temporary worktree; its migrations run in a child
process). Each keeps one connection for the whole run, as a broker's pool does, so the plans the trigger functions
make on first use are kept. Each step commits `--rows` entries in statements of 50, then integrates them in one
round (this tree's code on both sides: only the database differs), the two databases alternating; it prints, every
10 steps, the median PostgreSQL backend CPU of the last 10 rounds (/proc/<pid>/schedstat), per side. A round
whose cost grows with the log is a plan reading the log whole. It prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.storage import db  # noqa: E402
from broker.tlog import accesslog  # noqa: E402
from broker.tlog.log import TransparencyLog  # noqa: E402
from tests.tlog.test_tlog import log_entry, signer  # noqa: E402

MIGRATE = """
import asyncio, sys
from broker.storage import db
async def main() -> None:
    conn = await db.connect(sys.argv[1])
    await db.migrate(conn)
    await conn.close()
asyncio.run(main())
"""


def backend_cpu_ms(pid: int) -> float:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e6


def with_database(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def run(admin_url: str, base: str, steps: int, rows: int, tree: Path) -> None:
    names = {side: f"dlnuf_round_growth_{os.getpid()}_{side}" for side in ("base", "head")}
    admin = await asyncpg.connect(admin_url)
    pools: dict[str, asyncpg.Pool] = {}
    try:
        for name in names.values():
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", MIGRATE, with_database(admin_url, names["base"]), cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)}, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        _, err = await child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"migrating the base database failed:\n{err.decode()}")
        conn = await db.connect(with_database(admin_url, names["head"]))
        await db.migrate(conn)
        await conn.close()
        for side, name in names.items():
            pools[side] = await db.create_pool(with_database(admin_url, name), min_size=1, max_size=1)
        logs = {side: TransparencyLog(pool, signer(), max_merge_delay=60, batch=rows) for side, pool in pools.items()}
        pids = {side: int(await pool.fetchval("SELECT pg_backend_pid()")) for side, pool in pools.items()}
        cost: dict[str, list[float]] = {side: [] for side in names}
        every = min(10, steps)
        print(f"round of {rows} entries, PostgreSQL CPU ms (median of the last {every} rounds); base {base}, head "
              "this tree")
        for step in range(steps):
            for side in ("base", "head") if step % 2 == 0 else ("head", "base"):
                async with pools[side].acquire() as conn:
                    for start in range(step * rows, (step + 1) * rows, 50):
                        await accesslog.write(conn, [(log_entry(n), None) for n in range(start, start + 50)])
                before = backend_cpu_ms(pids[side])
                assert await logs[side].integrate() == rows
                cost[side].append(backend_cpu_ms(pids[side]) - before)
            if step % every == every - 1:
                recent = {side: statistics.median(cost[side][-every:]) for side in names}
                print(f"  log of {(step + 1) * rows:>7,} entries: base {recent['base']:7.1f}  head "
                      f"{recent['head']:7.1f}  head/base {recent['head'] / recent['base']:.3f}", flush=True)
    finally:
        for pool in pools.values():
            await pool.close()
        for name in names.values():
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="1dde055", help="the revision whose migrations make the base database")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rows", type=int, default=1000, help="entries per step, integrated in one round")
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), args.base], check=True)
        try:
            asyncio.run(run(args.admin_url, args.base, args.steps, args.rows, tree))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
