"""What the quota check costs an exchange (issue 13), measured side by side with what it replaced.

    .venv/bin/python benchmarks/quota_cost.py            # about a minute
    .venv/bin/python benchmarks/quota_cost.py --calls 500 --reps 3

The quota adds no round trip: the exchange's nonce claim became `nonce_claim_counted`, one statement that claims
the nonce and counts the exchange in each quota scope, run on a pool whose commits do not wait for the WAL flush
(broker/service/quotas.py says why that is safe, and why it is needed: the counter's row lock is held until
commit). What changes is the statement's work in PostgreSQL, its commit, and a little Python (reading the body's
dataset, finding the scopes, the RateLimit fields). Measured here on a fresh database on the PostgreSQL at
--admin-url (dropped at the end), through asyncpg pools as the broker uses them:

1. one call at a time (latency) and `--concurrency` calls in flight, all for one consumer (its counter row is the
   hot spot: calls/s), for: `nonce_claim` with a synchronous commit (before), `nonce_claim_counted` with one scope
   (the consumer's quota) and two (consumer and habilitation) as shipped, and for reference the counted statement
   with a synchronous commit (what it would cost without the claims pool) and the bare claim without waiting for
   the flush (what the claims pool alone gives); repetitions interleaved, order rotated, medians;
2. the Python around the statement, per exchange, in process.

It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import procs

from broker.exchange.pipeline import _dataset_of
from broker.registry import parse_registry
from broker.registry.quota import Quota
from broker.service import quotas
from broker.storage import db
from tests.factories import CONSUMER, consumer, registry_toml

BODY = orjson.dumps({"dataset": "quotient_familial", "purpose": "tarification-restauration-scolaire",
                     "recipient": CONSUMER, "fields": ["quotient_familial", "enfants"],
                     "subject": {"pivot_identity": {"family_name": "Dupont", "given_name": "Marie Claire",
                                                    "birthdate": "1985-03-14", "gender": "female",
                                                    "birthplace": "75114", "birthcountry": "99100"}}})
ONE = [("c:21750001600019:60", 60)]
TWO = [("c:21750001600019:60", 60), ("h:cantine-21750001600019:60", 60)]
# name -> (quota scopes, or None for the bare claim; commit waits for the WAL flush)
VARIANTS: dict[str, tuple[list[tuple[str, int]] | None, bool]] = {
    "before: nonce_claim": (None, True),
    "shipped: counted, 1 scope": (ONE, False),
    "shipped: counted, 2 scopes": (TWO, False),
    "ref: counted, 1, flush": (ONE, True),
    "ref: nonce_claim, no flush": (None, False),
}


async def one_call(pools: dict[bool, object], variant: str, kid: str) -> float:
    expires = datetime.now(UTC) + timedelta(seconds=60)
    nonce = secrets.token_urlsafe(16)
    scopes, flush = VARIANTS[variant]
    pool = pools[flush]
    start = time.perf_counter()
    if scopes is None:
        await db.fetchval(pool, db.queries()["nonce_claim"], kid, nonce, expires)  # type: ignore[arg-type]
    else:
        await db.fetch(pool, db.queries()["nonce_claim_counted"], kid, nonce, expires,  # type: ignore[arg-type]
                       [s for s, _ in scopes], [w for _, w in scopes])
    return time.perf_counter() - start


async def pools(dsn: str, size: int) -> dict[bool, object]:
    return {True: await db.create_pool(dsn, min_size=size, max_size=size),
            False: await db.create_pool(dsn, min_size=size, max_size=size, settings={"synchronous_commit": "off"})}


async def latency(dsn: str, calls: int, reps: int) -> dict[str, list[float]]:
    by_flush = await pools(dsn, 1)
    medians: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        variants = list(VARIANTS)
        for v in variants:  # warm-up: prepared statements, buffers
            for _ in range(50):
                await one_call(by_flush, v, "warm")
        for rep in range(reps):
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for v in order:
                times = [await one_call(by_flush, v, f"k{rep}") for _ in range(calls)]
                medians[v].append(statistics.median(times))
    finally:
        for pool in by_flush.values():
            await pool.close()  # type: ignore[attr-defined]
    return medians


async def throughput(dsn: str, calls: int, concurrency: int, reps: int) -> dict[str, list[float]]:
    by_flush = await pools(dsn, concurrency)
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        for rep in range(reps):
            variants = list(VARIANTS)
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for v in order:
                remaining = calls

                async def worker(variant: str = v, kid: str = f"t{rep}") -> None:
                    nonlocal remaining
                    while remaining > 0:
                        remaining -= 1
                        await one_call(by_flush, variant, kid)

                start = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                rates[v].append(calls / (time.perf_counter() - start))
    finally:
        for pool in by_flush.values():
            await pool.close()  # type: ignore[attr-defined]
    return rates


def python_side(calls: int) -> float:
    """Median seconds of what the pipeline does in Python for the quota, per exchange."""
    registry = parse_registry(registry_toml([consumer()]))
    default = Quota(1200, 60)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        dataset = _dataset_of(BODY)
        found = quotas.scopes(registry, CONSUMER, dataset, default)
        usage = quotas.Usage(tuple(quotas.Count(s, 17, 12.5) for s in found))
        usage.verify_within()
        usage.headers()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_DATABASE_URL",
                                                         "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--calls", type=int, default=2000, help="calls per variant and repetition")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()

    with contextlib.ExitStack() as stack:
        dsn = procs.create_database(stack, args.admin_url, f"dlnuf_quota_bench_{uuid.uuid4().hex[:10]}")

        async def migrate() -> None:
            conn = await db.connect(dsn)
            try:
                await db.migrate(conn)
            finally:
                await conn.close()

        asyncio.run(migrate())
        lat = asyncio.run(latency(dsn, args.calls, args.reps))
        thr = asyncio.run(throughput(dsn, args.calls, args.concurrency, args.reps))
    py = python_side(20_000)

    base_lat = statistics.median(lat["before: nonce_claim"])
    base_thr = statistics.median(thr["before: nonce_claim"])
    print(f"the nonce claim per exchange: {args.reps} repetitions x {args.calls} calls, interleaved; medians")
    print(f"{'statement':<28}{'latency (us)':>14}{'vs before':>12}{'calls/s at c=' + str(args.concurrency):>22}"
          f"{'vs before':>12}")
    for v in VARIANTS:
        m, r = statistics.median(lat[v]), statistics.median(thr[v])
        print(f"{v:<28}{m * 1e6:>14.0f}{m / base_lat:>11.2f}x{r:>22.0f}{r / base_thr:>11.2f}x")
    print(f"Python around it (peek at the body's dataset, scopes, RateLimit fields): {py * 1e6:.1f} us per exchange")
    print("round trips per exchange: unchanged (the count rides on the nonce claim)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
