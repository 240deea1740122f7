"""The transparency log in the ecosystem: tile serving throughput, evidence bytes per exchange, incremental verify.

    .venv/bin/python benchmarks/tlog_ecosystem.py                       # all three, about 10 minutes
    .venv/bin/python benchmarks/tlog_ecosystem.py --part tiles --tile-entries 100000
    .venv/bin/python benchmarks/tlog_ecosystem.py --part incremental --entries 1000000 --new 10000

1. **evidence** and **tiles**: a real stack (`stack.build`: the API Particulier sandbox and `python -m broker serve`
   on a fresh database). --exchanges signed exchanges through the SDK; the bytes of `exchange_evidence` per
   exchange (row data as PostgreSQL stores it, and with the table's index). Then --tile-entries v2 access-log rows
   are copied in and integrated by the broker's own integrator, and --clients concurrent clients of this process
   fetch random full level-0 hash tiles, then random full entry bundles, for --seconds each over HTTP keep-alive:
   requests/s, MB/s, latency. The load generator shares the machine with the broker (2 cores): the figures are a
   floor, not the broker's ceiling.
2. **incremental**: a scratch database with --entries v2 entries (rows, stored tree and a checkpoint, written as the
   integrator would, leaves computed by `broker.tlog.leaves`), a full `log verify` that records the state, then
   --new entries committed and integrated by `TransparencyLog.drain`, and the incremental verification from the
   state, --repeat times (median).

It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procs
import stack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.consumer.client import BrokerClient
from broker.storage import db
from broker.tlog import accesslog, leaves, merkle
from broker.tlog.log import NoteSigner, TransparencyLog, write_nodes
from broker.tlog.verify import DatabaseSource, verify_log

ORIGIN = "bench.dlnuf.test/log"


def quantiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(ordered) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"


def bench_entry(n: int, logged_at: datetime | None = None) -> accesslog.LogEntry:
    """A released v2 entry of the shape the pipeline writes."""
    entry = accesslog.LogEntry(request_id=str(uuid.uuid4()))
    if logged_at is not None:
        entry.logged_at = logged_at
    entry.consumer, entry.kid, entry.dataset, entry.dataset_version = "21750001600019", "k", "quotient_familial", 1
    entry.purpose, entry.recipient = "tarification-restauration-scolaire", "21750001600019"
    entry.fields_requested = entry.fields_released = ("quotient_familial",)
    entry.outcome, entry.http_status, entry.latency_ms = "released", 200, 10.0 + n % 97 / 7
    entry.subject_key = hashlib.sha256(str(n % 5000).encode()).hexdigest()
    entry.bind_request(n.to_bytes(8, "big"))
    entry.record_payload(f'{{"quotient_familial":{n % 3000}}}'.encode())
    return entry


async def copy_rows(conn: asyncpg.Connection, entries: list[accesslog.LogEntry], indices: range | None) -> None:
    """Rows as the broker leaves them (migration 0031): waiting in the integrator's queue (access_log's trigger puts
    them there), or, with `indices`, given those indices and taken off the queue (a prefilled log: its leaves must
    be stored first, tlog_entries' guard checks)."""
    await conn.copy_records_to_table("access_log", records=[e.args() for e in entries],
                                     columns=list(accesslog.COLUMNS))
    if indices is not None:
        await conn.copy_records_to_table(
            "tlog_entries", columns=["log_index", "entry_id", "logged_at"],
            records=[(i, e.id, e.logged_at) for e, i in zip(entries, indices, strict=True)])
        await conn.execute("DELETE FROM tlog_queue WHERE entry_id = ANY($1::uuid[])", [e.id for e in entries])


# -- 1. evidence and tiles, on a real broker ---------------------------------------------------------------------


async def evidence_and_tiles(s: stack.Stack, args: argparse.Namespace) -> None:
    url = f"http://{stack.HOST}:{s.broker_ports[0]}"
    async with BrokerClient(url, key=s.key) as client:
        for _ in range(args.exchanges):
            await client.exchange(dataset="quotient_familial", purpose=stack.PURPOSE,
                                  recipient=stack.CONSUMER_SIRET, fields=stack.FIELDS, subject=stack.subject())
    conn = await db.connect(s.db_dsn)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM exchange_evidence")
        data = await conn.fetchval("SELECT avg(pg_column_size(e.*)) FROM exchange_evidence e")
        proper = await conn.fetchval(
            "SELECT avg(coalesce(length(request_signature), 0) + coalesce(length(request_signature_base), 0) "
            "+ length(response_signature) + length(response_signature_base)) FROM exchange_evidence")
        total = await conn.fetchval("SELECT pg_total_relation_size('exchange_evidence')")
        log_row = await conn.fetchval("SELECT avg(pg_column_size(a.*)) FROM access_log a")
        print(f"evidence per exchange, {rows} exchanges through the SDK: {data:.0f} B per row as stored "
              f"({proper:.0f} B of signatures and signature bases), {total / rows:.0f} B with the table's pages and "
              f"index; for comparison the access-log row: {log_row:.0f} B")

        started = time.perf_counter()
        base = datetime.now(UTC) - timedelta(minutes=1)
        for start in range(0, args.tile_entries, 20_000):
            n = min(20_000, args.tile_entries - start)
            await copy_rows(conn, [bench_entry(i, base) for i in range(start, start + n)], None)
        for _ in range(3000):  # the broker's integrator takes them; give up after 5 minutes
            pending = await conn.fetchval("SELECT count(*) FROM tlog_queue")
            if not pending:
                break
            await asyncio.sleep(0.1)
        size = await conn.fetchval("SELECT size FROM tlog_checkpoints ORDER BY size DESC LIMIT 1")
        print(f"{args.tile_entries:,} entries copied and integrated by the broker in "
              f"{time.perf_counter() - started:.1f} s: tree of {size:,}")
    finally:
        await conn.close()
    full = size // 256
    rng = random.Random(20261202)
    for label, path in (("hash tile (level 0, 8,192 B)", "tile/0/{}"), ("entry bundle (256 public leaves)",
                                                                          "tile/entries/{}")):
        # cold: every full tile once, so each is read from the database (the process cache is empty for them)
        order = iter(range(full))
        await load(url, f"{label}, each once (database)", lambda p=path, o=order: "/v1/log/" + p.format(
            _index(next(o, full - 1))), args, count=full)
        # warm: random tiles, as a CDN's misses or many readers would ask; served from the process cache
        await load(url, f"{label}, random (cached)", lambda p=path: "/v1/log/" + p.format(
            _index(rng.randrange(full))), args)


def _index(n: int) -> str:
    parts = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        parts.insert(0, f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(parts)


async def load(url: str, label: str, next_path: object, args: argparse.Namespace, count: int | None = None) -> None:
    """--clients concurrent clients for --seconds, or until `count` requests were sent."""
    latencies: list[float] = []
    sizes: list[int] = []
    deadline = time.perf_counter() + args.seconds
    budget = [count if count is not None else 2**62]
    connector = aiohttp.TCPConnector(limit=args.clients)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def client() -> None:
            while time.perf_counter() < deadline and budget[0] > 0:
                budget[0] -= 1
                t = time.perf_counter()
                async with session.get(url + next_path(), headers={"Accept-Encoding": "gzip"}) as resp:  # type: ignore[operator]
                    body = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{resp.status}: {body[:200]!r}")
                latencies.append(time.perf_counter() - t)
                sizes.append(len(body))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.clients)))
        took = time.perf_counter() - started
    print(f"{label}: {len(latencies) / took:,.0f} requests/s, {sum(sizes) / took / 1e6:.1f} MB/s on the wire "
          f"({statistics.mean(sizes):,.0f} B each), {args.clients} clients, {quantiles(latencies)}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


# -- 2. incremental verify ---------------------------------------------------------------------------------------


async def fill_log(pool: asyncpg.Pool, signer: NoteSigner, entries: int) -> None:
    size, edge = 0, ()
    started = time.perf_counter()
    base = datetime.now(UTC) - timedelta(days=30)
    while size < entries:
        n = min(50_000, entries - size)
        batch = [bench_entry(i, base) for i in range(size, size + n)]
        leaf_hashes = [leaves.leaf_of(leaves.entry_document(e.row())) for e in batch]
        result = merkle.append_leaves(size, edge, leaf_hashes)
        async with pool.acquire() as conn, conn.transaction():
            await write_nodes(conn, result.nodes)
            await copy_rows(conn, batch, range(size, size + n))
            await conn.execute("UPDATE tlog_head SET size = $1", result.size)
            await conn.execute("INSERT INTO tlog_checkpoints (size, note) VALUES ($1, $2)", result.size,
                               signer.sign_checkpoint(result.size, result.root))
        size, edge = result.size, result.edge
        print(f"\r  filled {size:,}/{entries:,} ({size / (time.perf_counter() - started):,.0f}/s)", end="",
              file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"a log of {entries:,} v2 entries (rows, stored tree, checkpoints) in {time.perf_counter() - started:.1f} s")


async def timed_verify(dsn: str, signer: NoteSigner, resume: object = None) -> tuple[float, object]:
    conn = await db.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            started = time.perf_counter()
            report = await verify_log(DatabaseSource(conn), [signer.verifier], origin=ORIGIN,
                                      now=datetime.now(UTC), resume=resume)  # type: ignore[arg-type]
            took = time.perf_counter() - started
    finally:
        await conn.close()
    if not report.ok:
        raise RuntimeError(f"the log does not verify: {report.findings[:3]}")
    return took, report


async def incremental(dsn: str, args: argparse.Namespace) -> None:
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    conn = await db.connect(dsn)
    await db.migrate(conn)
    await conn.close()
    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    try:
        await fill_log(pool, signer, args.entries)
        await pool.execute("VACUUM ANALYZE")
        took, full = await timed_verify(dsn, signer)
        print(f"full log verify of {args.entries:,} entries: {took:.1f} s "
              f"({args.entries / took:,.0f} entries/s); state recorded")
        resume = full.resume  # type: ignore[attr-defined]
        tlog = TransparencyLog(pool, signer, max_merge_delay=60, batch=10_000)
        async with pool.acquire() as conn:
            await copy_rows(conn, [bench_entry(args.entries + i) for i in range(args.new)], None)
        started = time.perf_counter()
        await tlog.drain()
        print(f"{args.new:,} new entries integrated in {time.perf_counter() - started:.1f} s")
        times = []
        for _ in range(args.repeat):
            took, _ = await timed_verify(dsn, signer, resume)
            times.append(took)
        print(f"incremental log verify of {args.new:,} new entries after {args.entries:,} (from the recorded "
              f"state): median {statistics.median(times):.2f} s over {args.repeat} runs "
              f"(min {min(times):.2f} s, max {max(times):.2f} s)")
    finally:
        await pool.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("all", "tiles", "incremental"), default="all",
                   help="tiles: evidence and tiles on a real stack; incremental: the verification figures")
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--exchanges", type=int, default=200)
    p.add_argument("--tile-entries", type=int, default=100_000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--new", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    if args.part in ("all", "tiles"):
        settings = stack.Settings(levels=(), reps=1, warmup=0, duration=0, rate=0, open_duration=0,
                                  open_connections=0, loadgen_procs=0, brokers=1, basis="information",
                                  embedded=False, admin_url=args.admin_url, nginx=None, pyspy=None,
                                  profile_seconds=0, keep_workdir=False,
                                  broker_env=(("DLNUF_LOG_ORIGIN", ORIGIN),))
        with contextlib.ExitStack() as es:
            built = stack.build(es, settings)
            print(stack.smoke_test(built), file=sys.stderr)
            asyncio.run(evidence_and_tiles(built, args))
    if args.part in ("all", "incremental"):
        with contextlib.ExitStack() as es:
            dsn = procs.create_database(es, args.admin_url, f"dlnuf_bench_incr_{uuid.uuid4().hex[:8]}")
            asyncio.run(incremental(dsn, args))


if __name__ == "__main__":
    main()
