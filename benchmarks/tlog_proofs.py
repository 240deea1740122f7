"""Transparency log: proof latency at 1,000,000 entries through the PostgreSQL node store, and integration lag.

    .venv/bin/python benchmarks/tlog_proofs.py                 # 1,000,000 leaves, about a minute
    .venv/bin/python benchmarks/tlog_proofs.py --entries 100000 --samples 500

1. Creates a scratch database on the PostgreSQL at --admin-url (dropped at the end), migrates it, and fills the
   node table with --entries leaves the way the integrator does: `merkle.append_leaves` in batches, nodes written
   with COPY (`tlog.write_nodes`), the head advanced and a checkpoint signed per batch.
2. Times inclusion proofs (random index, the full tree) and consistency proofs (random older size, the full tree)
   through `PgNodeStore`, one query per proof as the broker serves them, and checks a sample against the root.
3. Runs two integrators (two pools, as two broker processes) at the default 1 s interval while a writer commits
   access-log entries at --rate per second, and reports the integration lag each entry saw (commit to the commit
   of its integration round), as `dlnuf_tlog_integration_lag_seconds` measures it.
4. In a second scratch database, copies --verify-entries access-log rows, integrates them (integration
   throughput, the backlog a broker would catch up after an outage), and times `log verify`'s whole-log check.

It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import sys
import time
import uuid

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.observability.metrics import Metrics
from broker.storage import db
from broker.tlog import accesslog, checkpoint, merkle
from broker.tlog.log import NoteSigner, PgNodeStore, TransparencyLog, write_nodes
from broker.tlog.verify import DatabaseSource, verify_log

ORIGIN = "bench.dlnuf.test/log"


def quantiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(ordered) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, " \
           f"max {ordered[-1] * 1000:.2f} ms ({len(ordered)} samples)"


async def fill(pool: asyncpg.Pool, signer: NoteSigner, entries: int, batch: int) -> bytes:
    size, edge = 0, ()
    started = time.perf_counter()
    while size < entries:
        n = min(batch, entries - size)
        # Leaves as the integrator makes them: SHA-256(0x00 || entry); the entries here are stand-ins.
        leaves = [merkle.leaf_hash(hashlib.sha256(i.to_bytes(8, "big")).digest()) for i in range(size, size + n)]
        result = merkle.append_leaves(size, edge, leaves)
        async with pool.acquire() as conn, conn.transaction():
            await write_nodes(conn, result.nodes)
            await conn.execute("UPDATE tlog_head SET size = $1", result.size)
            await conn.execute("INSERT INTO tlog_checkpoints (size, note) VALUES ($1, $2)", result.size,
                               signer.sign_checkpoint(result.size, result.root))
        size, edge = result.size, result.edge
        rate = size / (time.perf_counter() - started)
        print(f"\r  filled {size:,}/{entries:,} leaves ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    nodes = await pool.fetchval("SELECT count(*) FROM tlog_nodes")
    table = await pool.fetchval("SELECT pg_size_pretty(pg_total_relation_size('tlog_nodes'))")
    print(f"filled {entries:,} leaves in {time.perf_counter() - started:.1f} s: {nodes:,} stored nodes, "
          f"tlog_nodes with its index {table}")
    return merkle.root_from_edge(size, edge)


async def proofs(pool: asyncpg.Pool, entries: int, root: bytes, samples: int) -> None:
    store = PgNodeStore(pool)
    rng = random.Random(20261122)
    for _ in range(50):  # warm the pool and the cache of the index's upper levels
        await merkle.inclusion_proof(rng.randrange(entries), entries, store)
    times: list[float] = []
    for n in range(samples):
        index = rng.randrange(entries)
        t = time.perf_counter()
        proof = await merkle.inclusion_proof(index, entries, store)
        times.append(time.perf_counter() - t)
        if n % 100 == 0:
            leaf = merkle.leaf_hash(hashlib.sha256(index.to_bytes(8, "big")).digest())
            merkle.verify_inclusion(leaf, index, entries, proof, root)
    print(f"inclusion proof at {entries:,} ({len(proof)} hashes): {quantiles(times)}")
    times = []
    for _ in range(samples):
        old = rng.randrange(1, entries)
        t = time.perf_counter()
        proof = await merkle.consistency_proof(old, entries, store)
        times.append(time.perf_counter() - t)
    print(f"consistency proof to {entries:,} (last one {len(proof)} hashes): {quantiles(times)}")


class LagRecorder(Metrics):
    """The broker's metrics, keeping every lag observed as well."""

    def __init__(self) -> None:
        super().__init__()
        self.lags: list[float] = []
        observe = self.tlog_lag.observe

        def record(value: float, exemplar: object = None) -> None:
            self.lags.append(value)
            observe(value)

        self.tlog_lag.observe = record  # type: ignore[method-assign]


async def lag(dsn: str, signer: NoteSigner, rate: float, seconds: float, interval: float) -> None:
    pools = [await db.create_pool(dsn, min_size=1, max_size=4) for _ in range(3)]
    metrics = [LagRecorder(), LagRecorder()]
    logs = [TransparencyLog(p, signer, max_merge_delay=60, metrics=m) for p, m in zip(pools, metrics, strict=False)]
    tasks = [asyncio.create_task(t.run(interval)) for t in logs]
    writer_pool, count = pools[2], int(rate * seconds)
    started = time.perf_counter()
    for n in range(count):
        entry = accesslog.LogEntry(request_id=str(uuid.uuid4()))
        entry.consumer, entry.dataset, entry.outcome, entry.http_status = "21750001600019", "quotient_familial", \
            "released", 200
        entry.subject_key = "ab" * 32
        entry.record_payload(f"{n}".encode())
        await accesslog.commit(writer_pool, entry)
        await asyncio.sleep(max(0.0, started + (n + 1) / rate - time.perf_counter()))
    for _ in range(600):  # the integrators catch up within a few intervals; give up after a minute
        if sum(len(m.lags) for m in metrics) >= count:
            break
        await asyncio.sleep(0.1)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for p in pools:
        await p.close()
    lags = [x for m in metrics for x in m.lags]
    shares = " / ".join(f"{len(m.lags)}" for m in metrics)
    print(f"integration lag, {count} entries at {rate:g}/s, 2 integrators every {interval:g} s "
          f"(entries each: {shares}): {quantiles(lags)}")


def bench_entry(n: int) -> accesslog.LogEntry:
    entry = accesslog.LogEntry(request_id=str(uuid.uuid4()))
    entry.consumer, entry.kid, entry.dataset, entry.dataset_version = "21750001600019", "k", "quotient_familial", 1
    entry.purpose, entry.recipient = "tarification-restauration-scolaire", "21750001600019"
    entry.fields_requested = entry.fields_released = ("quotient_familial",)
    entry.outcome, entry.http_status, entry.latency_ms = "released", 200, 10.0 + n % 97 / 7
    entry.subject_key = hashlib.sha256(str(n % 5000).encode()).hexdigest()
    entry.record_payload(f"{n}".encode())
    return entry


async def integrate_and_verify(dsn: str, signer: NoteSigner, entries: int) -> None:
    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    try:
        started = time.perf_counter()
        async with pool.acquire() as conn:
            for start in range(0, entries, 50_000):
                rows = [bench_entry(n).args() for n in range(start, min(entries, start + 50_000))]
                await conn.copy_records_to_table("access_log", records=rows, columns=list(accesslog.COLUMNS))
        print(f"copied {entries:,} access-log rows in {time.perf_counter() - started:.1f} s")
        tlog = TransparencyLog(pool, signer, max_merge_delay=60, batch=10_000)
        started = time.perf_counter()
        await tlog.drain()
        took = time.perf_counter() - started
        print(f"integrated a backlog of {entries:,} entries in rounds of 10,000: {took:.1f} s "
              f"({entries / took:,.0f} entries/s)")
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            started = time.perf_counter()
            report = await verify_log(DatabaseSource(conn), [signer.verifier], origin=ORIGIN)
            took = time.perf_counter() - started
        print(f"log verify over {report.entries:,} entries and {report.checkpoints} checkpoints: {took:.1f} s "
              f"({report.entries / took:,.0f} entries/s), {'OK' if report.ok else report.findings[:3]}")
    finally:
        await pool.close()


async def scratch(admin_url: str) -> tuple[str, str]:
    name = f"dlnuf_bench_tlog_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = admin_url.rsplit("/", 1)[0] + "/" + name
    conn = await db.connect(dsn)
    await db.migrate(conn)
    await conn.close()
    return name, dsn


async def main(args: argparse.Namespace) -> None:
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    names = []
    try:
        name, dsn = await scratch(args.admin_url)
        names.append(name)
        pool = await db.create_pool(dsn, min_size=1, max_size=4)
        try:
            root = await fill(pool, signer, args.entries, args.batch)
            latest = await pool.fetchval("SELECT note FROM tlog_checkpoints ORDER BY size DESC LIMIT 1")
            assert checkpoint.verify_checkpoint(latest, signer.verifier).root == root
            await pool.execute("VACUUM ANALYZE tlog_nodes")
            await proofs(pool, args.entries, root, args.samples)
        finally:
            await pool.close()
        await lag(dsn, signer, args.rate, args.lag_seconds, args.interval)
        if args.verify_entries:
            name, dsn = await scratch(args.admin_url)
            names.append(name)
            await integrate_and_verify(dsn, signer, args.verify_entries)
    finally:
        admin = await asyncpg.connect(args.admin_url)
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=65_536, help="leaves per fill transaction")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--rate", type=float, default=200.0, help="entries/s committed during the lag run")
    p.add_argument("--lag-seconds", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=1.0, help="integration interval (DLNUF_LOG_INTERVAL)")
    p.add_argument("--verify-entries", type=int, default=100_000, help="rows to integrate and verify (0: skip)")
    asyncio.run(main(p.parse_args()))
