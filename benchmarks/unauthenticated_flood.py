"""A flood of unsigned requests against a real broker process, and what it leaves in the database (issue 13).

    .venv/bin/python benchmarks/unauthenticated_flood.py                 # 10,000 requests, about a minute
    .venv/bin/python benchmarks/unauthenticated_flood.py --requests 2000 --concurrency 20

Starts `python -m broker serve` on a fresh database (on the PostgreSQL at --admin-url, dropped at the end) with a
one-consumer registry, then sends --requests unsigned `POST /v1/exchanges` from this one address, --concurrency at
a time, twice: with the broker's default budget for unauthenticated refusals (DLNUF_SOURCE_LIMIT, 100 a minute),
and with the budget off (DLNUF_SOURCE_LIMIT=0: every request is checked and stored). For each run it prints the
answers by status, the time taken, and the rows of the access log (the transparency log's entries) and of the
bounded store of unauthenticated attempts, before and after. It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import procs  # noqa: E402

from tests.factories import consumer, registry_toml  # noqa: E402

BODY = orjson.dumps({"dataset": "quotient_familial", "purpose": "tarification-restauration-scolaire",
                     "recipient": "21750001600019", "fields": ["quotient_familial"],
                     "subject": {"pivot_identity": {"family_name": "Dupont", "given_name": "Marie",
                                                    "birthdate": "1985-03-14", "gender": "female",
                                                    "birthplace": "75114", "birthcountry": "99100"}}})


async def counts(dsn: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('unauthenticated_attempts') IS NULL"):
            row = await conn.fetchrow("SELECT count(*), 0, 0 FROM access_log")  # a broker from before the store
        else:
            row = await conn.fetchrow("SELECT (SELECT count(*) FROM access_log), "
                                      "(SELECT count(*) FROM unauthenticated_attempts), "
                                      "(SELECT coalesce(sum(repeated), 0) FROM unauthenticated_attempts)")
    finally:
        await conn.close()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def flood(url: str, requests: int, concurrency: int) -> tuple[collections.Counter[int], float]:
    statuses: collections.Counter[int] = collections.Counter()
    remaining = requests
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with session.post(url, data=BODY, headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    statuses[resp.status] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return statuses, time.perf_counter() - start


def run(args: argparse.Namespace, source_limit: str) -> None:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dlnuf-flood-")))
        dsn = procs.create_database(stack, args.admin_url, f"dlnuf_flood_{uuid.uuid4().hex[:10]}")
        registry = tmp / "registry.toml"
        registry.write_text(registry_toml([consumer()]))
        port = procs.free_port()
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DLNUF_") and k != "DATABASE_URL"}
        env.update({"DATABASE_URL": dsn, "DLNUF_STATE_DIR": str(tmp / "state"), "DLNUF_REGISTRY_FILE": str(registry),
                    "DLNUF_PUBLIC_URL": base, "DLNUF_LOG_FORMAT": "json", "DLNUF_SOURCE_LIMIT": source_limit,
                    "DLNUF_TEST_API_PARTICULIER_TOKEN": secrets.token_urlsafe(8), **procs.SUPERUSER_OK})
        # from --root's checkout (its `broker` package comes first on the path), to compare with another version
        env["PYTHONPATH"] = str(args.root)
        broker = procs.start(stack, "broker", [sys.executable, "-m", "broker", "serve", "--port", str(port)],
                             env=env, log=tmp / "broker.log", cwd=args.root)
        procs.wait_http(broker, base + "/readyz", ok=lambda st: st == 200)
        before = asyncio.run(counts(dsn))
        statuses, seconds = asyncio.run(flood(base + "/v1/exchanges", args.requests, args.concurrency))
        time.sleep(2.5)  # the attempts store flushes every second
        after = asyncio.run(counts(dsn))
        label = "default budget (100 refusals/60 s per address)" if source_limit != "0" else "budget off"
        print(f"\n{args.requests:,} unsigned requests, c={args.concurrency}, broker from {args.root}, {label}:")
        print(f"  answers: {', '.join(f'{n:,} x {s}' for s, n in sorted(statuses.items()))} "
              f"in {seconds:.1f} s ({args.requests / seconds:,.0f}/s)")
        print(f"  access_log rows:               {before[0]:>7,} before, {after[0]:>7,} after")
        print(f"  unauthenticated_attempts rows: {before[1]:>7,} before, {after[1]:>7,} after "
              f"(standing for {after[2]:,} refusals)")
        metrics = asyncio.run(_metrics(base))
        print("  " + "\n  ".join(line for line in metrics.splitlines()
                                 if line.startswith("dlnuf_unauthenticated_") and "_created" not in line))


async def _metrics(base: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as resp:
        return await resp.text()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_DATABASE_URL",
                                                         "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--root", type=Path, default=ROOT,
                   help="the checkout whose broker to run (e.g. an export of main, for the figure before)")
    p.add_argument("--once", action="store_true", help="only the default budget (a broker without one ignores it)")
    args = p.parse_args()
    run(args, "100/60")
    if not args.once:
        run(args, "0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
