"""What a batch writer pays per statement for its connection: kept between statements, or taken from the pool and
given back each time (broker/storage/batch.py).

    .venv/bin/python benchmarks/batch_connection.py [--database-url URL] [--calls 2000] [--reps 5]

Sequential `SELECT 1` round trips, one caller at a time (an exchange's nonce claim and log entry are nearly always
alone below a few hundred exchanges a second): on a kept connection, through `pool.fetchval` (acquire, query,
release), and through a `Batcher` as the broker uses it (the hand-off to the writer task included), keeping its
connection (as it does since ecb240f) or acquiring it per statement (as before). The variants
alternate within each repetition; the medians are printed in microseconds per call. It prints figures and never
fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.storage import db
from broker.storage.batch import Batcher


class Probe(Batcher[int, int]):
    name = "probe"

    async def _write(self, conn: asyncpg.Connection, items: Sequence[int]) -> list[int]:
        await conn.fetchval("SELECT 1")
        return list(items)

    def _failed(self, item: int, exc: BaseException | None) -> Exception:
        return RuntimeError(f"item {item} not written: {exc!r}")


class AcquiringProbe(Probe):
    """The writer as it was before it kept its connection: acquired from the pool and released for each statement."""

    async def _statement(self, items: list[int]) -> Sequence[int]:
        async with self._pool.acquire() as conn:
            return await self._write(conn, items)


async def run(dsn: str, calls: int, reps: int) -> dict[str, list[float]]:
    pool = await db.create_pool(dsn, min_size=2, max_size=4)
    kept = await pool.acquire()
    writer, acquiring = Probe(pool), AcquiringProbe(pool)
    variants: dict[str, Callable[[], Awaitable[object]]] = {
        "kept connection": lambda: kept.fetchval("SELECT 1"),
        "pool acquire and release per call": lambda: pool.fetchval("SELECT 1"),
        "through a Batcher, connection kept": lambda: writer.submit(1),
        "through a Batcher, acquired per statement": lambda: acquiring.submit(1),
    }
    timings: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for _ in range(reps):
            for name, call in variants.items():
                start = time.perf_counter()
                for _ in range(calls):
                    await call()
                timings[name].append((time.perf_counter() - start) / calls * 1e6)
    finally:
        await writer.close()
        await acquiring.close()
        await pool.release(kept)
        await pool.close()
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    timings = asyncio.run(run(args.database_url, args.calls, args.reps))
    print(f"{args.reps} x {args.calls:,} sequential SELECT 1, variants alternated; microseconds per call")
    print(f"{'variant':40s} {'median':>8s}   repetitions")
    for name, values in timings.items():
        print(f"{name:40s} {statistics.median(values):8.1f}   {' '.join(f'{v:.0f}' for v in values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
