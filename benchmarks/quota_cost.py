"""What the quota check costs an exchange (issue 13), measured side by side with what it replaced.

    .venv/bin/python benchmarks/quota_cost.py            # about a minute
    .venv/bin/python benchmarks/quota_cost.py --calls 500 --reps 3

The quota adds no round trip: the exchange's nonce claim became `nonce_claim_counted`, one statement that claims
the nonce and counts the exchange in each quota scope. What it adds is the statement's extra work in PostgreSQL
(one upsert per scope, on a row every exchange of that consumer updates) and a little Python (reading the body's
dataset, finding the scopes, the RateLimit fields). Both are measured here, on a fresh database on the PostgreSQL
at --admin-url (dropped at the end), through an asyncpg pool as the broker uses it:

1. one call at a time (latency): `nonce_claim` (before), `nonce_claim_counted` with one scope (the consumer's
   quota) and with two (consumer and habilitation); repetitions interleaved, order rotated; medians per call;
2. `--concurrency` calls in flight, all for one consumer (its quota row is the hot spot): calls/s, before and after;
3. the Python around the statement, per exchange, in process.

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
SCOPES = {
    "nonce_claim (before)": None,
    "counted, 1 scope": [("c:21750001600019:60", 60)],
    "counted, 2 scopes": [("c:21750001600019:60", 60), ("h:cantine-21750001600019:60", 60)],
}


async def one_call(pool: object, variant: str, kid: str) -> float:
    expires = datetime.now(UTC) + timedelta(seconds=60)
    nonce = secrets.token_urlsafe(16)
    scopes = SCOPES[variant]
    start = time.perf_counter()
    if scopes is None:
        await db.fetchval(pool, db.queries()["nonce_claim"], kid, nonce, expires)  # type: ignore[arg-type]
    else:
        await db.fetch(pool, db.queries()["nonce_claim_counted"], kid, nonce, expires,  # type: ignore[arg-type]
                       [s for s, _ in scopes], [w for _, w in scopes])
    return time.perf_counter() - start


async def latency(dsn: str, calls: int, reps: int) -> dict[str, list[float]]:
    pool = await db.create_pool(dsn, min_size=1, max_size=1)
    medians: dict[str, list[float]] = {v: [] for v in SCOPES}
    try:
        variants = list(SCOPES)
        for v in variants:  # warm-up: prepared statements, buffers
            for _ in range(50):
                await one_call(pool, v, "warm")
        for rep in range(reps):
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for v in order:
                times = [await one_call(pool, v, f"k{rep}") for _ in range(calls)]
                medians[v].append(statistics.median(times))
    finally:
        await pool.close()
    return medians


async def throughput(dsn: str, calls: int, concurrency: int, reps: int) -> dict[str, list[float]]:
    pool = await db.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    rates: dict[str, list[float]] = {v: [] for v in SCOPES}
    try:
        for rep in range(reps):
            variants = list(SCOPES)
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for v in order:
                remaining = calls

                async def worker(variant: str = v, kid: str = f"t{rep}") -> None:
                    nonlocal remaining
                    while remaining > 0:
                        remaining -= 1
                        await one_call(pool, variant, kid)

                start = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                rates[v].append(calls / (time.perf_counter() - start))
    finally:
        await pool.close()
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

    base_lat = statistics.median(lat["nonce_claim (before)"])
    base_thr = statistics.median(thr["nonce_claim (before)"])
    print(f"quota cost per exchange: {args.reps} repetitions x {args.calls} calls, interleaved; medians")
    print(f"{'statement':<24}{'latency (us)':>14}{'vs before':>12}{'calls/s at c=' + str(args.concurrency):>22}"
          f"{'vs before':>12}")
    for v in SCOPES:
        m, r = statistics.median(lat[v]), statistics.median(thr[v])
        print(f"{v:<24}{m * 1e6:>14.0f}{m / base_lat:>11.2f}x{r:>22.0f}{r / base_thr:>11.2f}x")
    print(f"Python around it (peek at the body's dataset, scopes, RateLimit fields): {py * 1e6:.1f} us per exchange")
    print("round trips per exchange: unchanged (the count rides on the nonce claim)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
