"""What an exchange's commit costs once the log is large: entry ids drawn at random (uuid4) against time-ordered
(UUIDv7, broker/storage/ids.py).

    .venv/bin/python benchmarks/entry_ids.py                       # 1,000,000 entries prefilled, a few minutes
    .venv/bin/python benchmarks/entry_ids.py --rows 3000000 --entries 3000 --reps 6
    .venv/bin/python benchmarks/entry_ids.py --make-template dlnuf_month_1m     # then compare.py --template

Makes a database (dropped at the end) on the server at --admin-url, as its superuser (CHECKPOINT needs it),
migrated, with `--rows` entries of the current month already in it as a year-old log has them: their rows (random
ids, as every broker drew them so far), their evidence and the released ones' outbox rows, so that the month's
indexes keyed by entry id are as large as a busy month's. Then, alternated, order swapped every repetition, for each
kind of id: a CHECKPOINT, then `--entries` released entries committed one at a time with their evidence through the
broker's own statement (`accesslog.write`, as the group commit sends an exchange alone, below a few hundred a
second). The prefilled entries are not integrated: `tlog_entries` (the round's, keyed by entry id too, never pruned)
stays empty, so neither its cost with random ids nor the half-full pages new ids make after random ones
(broker/storage/ids.py) show here: the figures understate uuid4's cost. Per entry: WAL bytes, records and bytes of
full-page images (pg_walinspect over the pass's WAL, the whole server's: run it on a quiet server), the writing
backend's CPU, and the commit's time (p50, p99). A repetition starts just after a checkpoint, when full-page writes
are the most frequent: it shows the first `--entries` of a checkpoint cycle, not a cycle's average. Prints figures;
asserts nothing.
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
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import procs  # noqa: E402 - after the path
from large_log import GENERATE, with_database  # noqa: E402

from broker.storage import db, ids  # noqa: E402
from broker.tlog import accesslog, evidence, partitions  # noqa: E402

CHUNK = 200_000
# The prefilled entries' evidence and outbox rows, as the exchange path writes them (sizes as a real exchange's:
# two signatures of 64 bytes, signature bases of about 400 and 300 bytes).
EVIDENCE = """
INSERT INTO exchange_evidence (entry_id, logged_at, request_label, request_signature, request_signature_base,
                               request_key, response_status, response_signature, response_signature_base,
                               response_key)
SELECT id, logged_at, 'sig1', sha512(convert_to(request_id, 'UTF8')), convert_to(repeat('b', 400), 'UTF8'), 'thumb',
       http_status, sha512(convert_to('r' || request_id, 'UTF8')), convert_to(repeat('r', 300), 'UTF8'), 'broker'
FROM access_log WHERE logged_at >= $1 AND logged_at < $2
"""
OUTBOX = """
INSERT INTO notification_outbox (entry_id, logged_at, delivered_at)
SELECT id, logged_at, logged_at FROM access_log WHERE logged_at >= $1 AND logged_at < $2 AND outcome = 'released'
"""
KINDS: dict[str, Callable[[], uuid.UUID]] = {"uuid4 (random)": uuid.uuid4, "UUIDv7 (time-ordered)": ids.uuid7}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def released(make_id: Callable[[], uuid.UUID]) -> tuple[accesslog.LogEntry, evidence.Evidence]:
    e = accesslog.LogEntry(request_id=str(uuid.uuid4()), id=make_id(), consumer="21750001600019", kid="bench",
                           dataset="quotient_familial", dataset_version=1,
                           purpose="tarification-restauration-scolaire", recipient="21750001600019",
                           fields_requested=("quotient_familial", "enfants"), fields_released=("quotient_familial",),
                           outcome="released", http_status=200, latency_ms=3.2,
                           subject_key=secrets.token_hex(32))
    e.record_payload(b'{"quotient_familial":{"valeur":1234}}')
    e.bind_request(secrets.token_bytes(64))
    ev = evidence.Evidence(e.id, e.logged_at, "sig1", secrets.token_bytes(64), b"b" * 400, "thumb", 200,
                           secrets.token_bytes(64), b"r" * 300, "broker")
    return e, ev


async def prefill(conn: asyncpg.Connection, rows: int) -> None:
    now = datetime.now(UTC)
    start = datetime.combine(partitions.month_of(now), datetime.min.time(), tzinfo=UTC)
    step = (now - start) / (rows + 1)
    await partitions.ensure(conn, now=now)
    await conn.execute("ALTER TABLE access_log DISABLE TRIGGER access_log_enqueue")  # no integrator runs here
    started = time.monotonic()
    for lo in range(0, rows, CHUNK):
        hi = min(rows, lo + CHUNK)
        first, last = start + lo * step, start + hi * step
        async with conn.transaction():
            await conn.execute(GENERATE, lo, hi, start, step)
            await conn.execute(EVIDENCE, first, last)
            await conn.execute(OUTBOX, first, last)
        say(f"  {hi:,} entries ({time.monotonic() - started:.0f} s)")
    await conn.execute("ALTER TABLE access_log ENABLE TRIGGER access_log_enqueue")
    await conn.execute("VACUUM ANALYZE")


async def wal_since(conn: asyncpg.Connection, start: str) -> tuple[int, int, int]:
    """Bytes, records and bytes of full-page images of the WAL from `start` to what is flushed now (pg_walinspect:
    exact, where pg_stat_wal lags by up to the backends' stats interval; PostgreSQL 15's refuses an end past the
    flushed position, which the write position can be)."""
    row = await conn.fetchrow(
        "SELECT end_lsn - $1::text::pg_lsn AS bytes, sum(count) AS records, sum(fpi_size) AS fpi "
        "FROM pg_current_wal_flush_lsn() AS end_lsn, pg_get_wal_stats($1::text::pg_lsn, end_lsn) GROUP BY end_lsn",
        start)
    return int(row["bytes"]), int(row["records"]), int(row["fpi"])


# PostgreSQL 15's block references: each block a record changes, "(FPW)" when written whole, less its hole
# PostgreSQL 15's block references (XLogRecGetBlockRefInfo): "(FPW)", "(FPW for WAL verification)", and for a
# compressed image ", compression saved: N, method: M" after the hole
_BLOCK = re.compile(r"rel \d+/(\d+)/(\d+) fork (\w+) blk \d+ \(FPW[^)]*\); hole: offset: \d+, length: (\d+)"
                    r"(?:, compression saved: (\d+))?")


def full_pages(block_ref: str, database: int, names: dict[int, str]) -> list[tuple[str, int]]:
    """(relation, bytes) of each full-page image in one record's `block_ref`: 8 kB less the page's hole and what
    compression saved; relations of this database (`database`, its OID) by name, the others as "shared" (OID 0)
    or "other database"."""
    out = []
    for db_oid, node, fork, hole, saved in _BLOCK.findall(block_ref):
        if int(db_oid) == database:
            name = names.get(int(node), f"relfilenode {node}")
        else:
            name = "shared" if int(db_oid) == 0 else "other database"
        out.append((name + ("" if fork == "main" else f" ({fork})"), 8192 - int(hole) - int(saved or 0)))
    return out


async def fpi_by_relation(conn: asyncpg.Connection, start: str) -> dict[str, int]:
    """Bytes of full-page images per relation from `start` to what is flushed."""
    database = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = current_database()")
    # pg_relation_filenode: mapped catalogs' too (their relfilenode column is 0); partitioned parents have none
    names = {int(r["node"]): r["relname"] for r in await conn.fetch(
        "SELECT pg_relation_filenode(oid) AS node, relname FROM pg_class WHERE pg_relation_filenode(oid) IS NOT NULL")}
    out: dict[str, int] = {}
    for r in await conn.fetch("SELECT block_ref FROM pg_get_wal_records_info($1::text::pg_lsn, "
                              "pg_current_wal_flush_lsn()) WHERE fpi_length > 0", start):
        for name, size in full_pages(r["block_ref"], database, names):
            out[name] = out.get(name, 0) + size
    return out


async def one_pass(admin: asyncpg.Connection, writer: asyncpg.Connection, writer_pid: int, kind: str,
                   entries: int) -> dict[str, float]:
    make_id = KINDS[kind]
    items = [released(make_id) for _ in range(entries)]
    await admin.execute("CHECKPOINT")
    start = await admin.fetchval("SELECT pg_current_wal_flush_lsn()::text")
    cpu = procs.cpu_times(writer_pid)
    times = []
    for item in items:
        t = time.perf_counter()
        await accesslog.write(writer, [item])
        times.append(1000 * (time.perf_counter() - t))
    cpu_after = procs.cpu_times(writer_pid)
    wal, records, fpi = await wal_since(admin, start)
    times.sort()
    return {"wal_bytes": wal / entries, "records": records / entries, "fpi": fpi / entries,
            "cpu_us": 1e6 * (sum(cpu_after) - sum(cpu)) / entries if cpu and cpu_after else float("nan"),
            "p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99)],
            **{f"fpi:{name}": size / entries for name, size in (await fpi_by_relation(admin, start)).items()}}


def quoted(name: str) -> str:
    """A database name for the statements below, which cannot take it as a parameter."""
    if not name or '"' in name or "\x00" in name:
        raise SystemExit(f"not a usable database name: {name!r}")
    return f'"{name}"'


@contextlib.asynccontextmanager
async def new_database(admin_url: str, name: str, keep: bool = False) -> AsyncIterator[str]:
    """Database `name`, created on the server at `admin_url` and dropped on the way out (on error only if `keep`);
    yields its URL."""
    server = await asyncpg.connect(admin_url)
    try:
        await server.execute(f"CREATE DATABASE {quoted(name)}")
        say(f"database {name} created")
        ok = False
        try:
            yield with_database(admin_url, name)
            ok = True
        finally:
            if not (keep and ok):
                await server.execute(f"DROP DATABASE IF EXISTS {quoted(name)} WITH (FORCE)")
                say(f"database {name} dropped")
    finally:
        await server.close()


async def make_template(args: argparse.Namespace) -> None:
    """A migrated database with `--rows` entries of this month, kept for `compare.py --template`."""
    name = args.make_template
    async with new_database(args.admin_url, name, keep=True) as dsn:
        conn = await db.connect(dsn)
        try:
            await db.migrate(conn)
            say(f"prefilling {args.rows:,} entries of this month into {name}")
            await prefill(conn, args.rows)
        finally:
            await conn.close()
    say(f"kept {name}: compare.py --template {name} (this month's only); drop it with DROP DATABASE \"{name}\"")


async def run(args: argparse.Namespace) -> None:
    if args.make_template:
        await make_template(args)
        return
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    async with new_database(args.admin_url, f"dlnuf_ids_{secrets.token_hex(3)}") as dsn, \
            contextlib.AsyncExitStack() as connections:
        admin = await db.connect(dsn)
        connections.push_async_callback(admin.close)
        writer = await db.connect(dsn)
        connections.push_async_callback(writer.close)
        writer_pid = await writer.fetchval("SELECT pg_backend_pid()")
        # a superuser setting of the session: the full-page images the writer's inserts cause are compressed
        await writer.execute(f"SET wal_compression = '{args.wal_compression}'")
        await db.migrate(admin)
        await admin.execute("CREATE EXTENSION pg_walinspect")
        say(f"prefilling {args.rows:,} entries of this month")
        await prefill(admin, args.rows)
        sizes = await admin.fetch(
            "SELECT c.relname, pg_relation_size(c.oid) AS size FROM pg_class c "
            "WHERE c.relkind = 'i' AND c.relname ~ '^(access_log_y\\d{4}m\\d{2}_pkey|exchange_evidence_pkey|"
            "notification_outbox_entry_id_logged_at_key)$' ORDER BY c.relname")
        say("indexes keyed by entry id: " + ", ".join(f"{r['relname']} {r['size'] / 2**20:.0f} MB"
                                                      for r in sizes if r["size"] > 0))
        await one_pass(admin, writer, writer_pid, "uuid4 (random)", min(500, args.entries))  # warm-up, not counted
        for rep in range(args.reps):
            order = list(KINDS) if rep % 2 == 0 else list(reversed(KINDS))
            for kind in order:
                r = await one_pass(admin, writer, writer_pid, kind, args.entries)
                results[kind].append(r)
                say(f"  rep {rep + 1} {kind:22} WAL {r['wal_bytes']:7,.0f} B/entry  FPI {r['fpi']:6,.0f} B  "
                    f"PG CPU {r['cpu_us']:4.0f} us  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms")

    def med(kind: str, key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in results[kind])

    def ratio(key: str) -> float:
        v4, v7 = results["uuid4 (random)"], results["UUIDv7 (time-ordered)"]
        return statistics.median(b[key] / a[key] if a[key] else float("nan") for a, b in zip(v4, v7, strict=True))

    print(f"\nentries committed one at a time after a CHECKPOINT, {args.rows:,} entries of this month prefilled, "
          f"{args.entries:,} per pass, {args.reps} repetitions (medians), wal_compression = {args.wal_compression}")
    print(f"{'entry id':24} {'WAL B/entry':>11} {'FPI B/entry':>11} {'records':>7} {'PG CPU us':>9} {'p50 ms':>7} "
          f"{'p99 ms':>7}")
    for kind in KINDS:
        print(f"{kind:24} {med(kind, 'wal_bytes'):11,.0f} {med(kind, 'fpi'):11,.0f} {med(kind, 'records'):7.1f} "
              f"{med(kind, 'cpu_us'):9.0f} {med(kind, 'p50'):7.3f} {med(kind, 'p99'):7.3f}")
    print(f"UUIDv7 / uuid4, per repetition then median: WAL {ratio('wal_bytes'):.3f}, FPI {ratio('fpi'):.3f}, "
          f"PG CPU {ratio('cpu_us'):.3f}, p50 {ratio('p50'):.3f}, p99 {ratio('p99'):.3f}")
    relations = sorted({key for kind in KINDS for r in results[kind] for key in r if key.startswith("fpi:")},
                       key=lambda key: -max(med(kind, key) for kind in KINDS))
    print("\nfull-page images per entry by relation (bytes, medians; relations above 50 B)")
    for key in relations:
        if max(med(kind, key) for kind in KINDS) >= 50:
            print(f"  {key[4:]:48} " + "  ".join(f"{kind.split()[0]} {med(kind, key):6,.0f}" for kind in KINDS))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--rows", type=int, default=1_000_000, help="entries of this month prefilled")
    p.add_argument("--entries", type=int, default=2_000, help="entries committed per pass")
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--wal-compression", default="off", choices=("off", "pglz", "lz4", "zstd"),
                   help="the writer's wal_compression (full-page images compressed; lz4 and zstd if the server was "
                        "built with them)")
    p.add_argument("--make-template", metavar="DB",
                   help="only make database DB, migrated, with --rows entries of this month, and keep it (for "
                        "compare.py --template DB)")
    asyncio.run(run(p.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
