"""The access log's monthly partitions (migration 0029): created ahead by the owner, a default partition for a
month nobody created (its rows moved out later), and `log prune` dropping a month whose every entry is past its
retention as one partition, after its tombstones, while the log still verifies and every proof still holds."""

from __future__ import annotations

import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from broker.storage import db
from broker.tlog import accesslog, checkpoint, leaves, merkle, partitions
from broker.tlog.log import TransparencyLog, entry_document, leaf_of, prune
from tests.conftest import _with_database
from tests.tlog.before_0031 import old_statements
from tests.tlog.test_tlog import log_entry, signer
from tests.tlog.test_tlog_verify import verify


@pytest.fixture
async def tlog(pool: asyncpg.Pool) -> TransparencyLog:
    t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
    await t.ensure_checkpoint()
    return t


def months_ago(n: int, day: int = 10) -> datetime:
    """A moment in the UTC month `n` months before this one."""
    month = partitions.add_months(partitions.month_of(datetime.now(UTC)), -n)
    return datetime(month.year, month.month, day, 12, tzinfo=UTC)


def name_of(moment: datetime) -> str:
    return f"access_log_y{moment:%Y}m{moment:%m}"


async def where(pool: asyncpg.Pool, entry: accesslog.LogEntry) -> str:
    return str(await pool.fetchval("SELECT tableoid::regclass::text FROM access_log WHERE id = $1", entry.id))


async def test_the_migration_made_the_coming_months_and_each_is_guarded_like_the_parent(pool: asyncpg.Pool) -> None:
    found = await partitions.listing(pool)
    names = [p.name for p in found]
    this = partitions.month_of(datetime.now(UTC))
    for n in range(partitions.MONTHS_AHEAD + 1):
        month = partitions.add_months(this, n)
        assert f"access_log_y{month:%Y}m{month:%m}" in names
    assert names[-1] == "access_log_default" and found[-1].lower is None
    bounded = [p for p in found if p.lower is not None]
    for p in bounded:
        assert p.lower is not None and p.upper is not None
        assert (p.lower.astimezone(UTC).day, p.lower.astimezone(UTC).hour) == (1, 0)
    for earlier, later in itertools.pairwise(bounded):
        assert earlier.upper == later.lower  # contiguous UTC months
    for name in names:
        triggers = {r["tgname"] for r in await pool.fetch(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = $1::regclass", name)}
        assert triggers == {"access_log_guard", "access_log_no_truncate"}, name
        indexes = await pool.fetchval("SELECT count(*) FROM pg_index WHERE indrelid = $1::regclass", name)
        # the primary key (id, logged_at), subject, consumer, logged_at and (retention, logged_at) (migration 0036,
        # `log prune`'s candidates): the leaf indices, and which are v1, are in tlog_entries since migration 0031
        assert indexes == 5, name
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="truncated"):
            await pool.execute(f"TRUNCATE {name}")


async def test_a_month_without_partition_goes_to_the_default_and_moves_out_whole(
        database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    old = log_entry(1, logged_at=months_ago(20))
    now = log_entry(2)
    for e in (old, now):
        await accesslog.commit(pool, e)
    assert await where(pool, old) == "access_log_default"
    assert await partitions.default_rows(pool) == 1
    await tlog.drain()
    await tlog.observe()
    row = ("SELECT a.seq, x.log_index, to_jsonb(a) AS row FROM access_log a JOIN tlog_entries x ON x.entry_id = a.id "
           "WHERE a.id = $1")
    before = await pool.fetchrow(row, old.id)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="log prune"):  # the default is guarded too
        await pool.execute("DELETE FROM access_log_default")

    async with pool.acquire() as conn:
        created = await partitions.ensure(conn, now=datetime.now(UTC))
        assert created == [name_of(old.logged_at)]  # the coming months existed already
        assert await partitions.ensure(conn, now=datetime.now(UTC)) == []
    assert await where(pool, old) == name_of(old.logged_at)
    assert await partitions.default_rows(pool) == 0
    after = await pool.fetchrow(row, old.id)
    assert after == before  # the same row: same seq, same index, every value
    assert await pool.fetchval("SELECT tgenabled::text FROM pg_trigger WHERE tgname = 'access_log_guard' "
                               "AND tgrelid = 'access_log_default'::regclass") == "O"  # the guard is back on
    report = await verify(database_url, tlog)
    assert report.ok, report.findings


async def test_an_index_is_given_once_across_months(pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    """tlog_entries (migration 0031), not partitioned, holds one line per index whatever the month of its entry (its
    primary key), and its guard refuses to move a line or to give an index with no leaf stored."""
    first = log_entry(1)
    await accesslog.commit(pool, first)
    await tlog.drain()
    other = log_entry(2, logged_at=months_ago(1))
    await accesslog.commit(pool, other)
    give = "INSERT INTO tlog_entries (log_index, entry_id, logged_at) VALUES ($1, $2, $3)"
    with pytest.raises(asyncpg.UniqueViolationError, match="tlog_entries_pkey"):  # taken, in another month
        await pool.execute(give, 0, other.id, other.logged_at)
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="not a stored leaf"):  # no leaf stored there
        await pool.execute(give, 5, other.id, other.logged_at)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):  # nor given over again
        await pool.execute("UPDATE tlog_entries SET entry_id = $1, logged_at = $2 WHERE log_index = 0",
                           other.id, other.logged_at)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
        await pool.execute("UPDATE tlog_entries SET log_index = 5 WHERE entry_id = $1", first.id)
    await tlog.drain()
    assert await pool.fetchval("SELECT log_index FROM tlog_entries WHERE entry_id = $1", other.id) == 1


def rows_read(plan: dict[str, object], relation: str) -> int:
    """Rows an EXPLAIN ANALYZE plan's scans of `relation` (or of its partitions, named after it) read, returned or
    filtered out, all loops."""
    own = ((int(plan["Actual Rows"]) + int(plan.get("Rows Removed by Filter", 0))) * int(plan["Actual Loops"])
           if str(plan.get("Relation Name", "")).startswith(relation) else 0)
    children = plan.get("Plans", [])
    assert isinstance(children, list)
    return own + sum(rows_read(child, relation) for child in children)


async def executed_plan(conn: asyncpg.Connection, statement: str, args: str, mode: str) -> dict[str, object]:
    """The EXPLAIN ANALYZE plan of `statement` run with `args` (SQL literals) under plan_cache_mode `mode`, its
    changes rolled back. PREPAREd and EXECUTEd by name: an EXPLAIN sent with its parameters bound is always planned
    for their values, so a generic plan is seen only this way."""
    await conn.execute(f"PREPARE explained AS {statement.strip().rstrip(';')}")
    try:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
            plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE explained({args})")
        finally:
            await transaction.rollback()
    finally:
        await conn.execute("DEALLOCATE explained")
    if isinstance(plan, str):  # a connection without the broker's json codec
        plan = json.loads(plan)
    return dict(plan[0]["Plan"])


async def test_a_late_page_of_a_dropped_month_reads_one_page_even_with_a_generic_plan(
        pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    """`log prune` walks a month it drops page by page. PostgreSQL takes a generic plan after five pages; with the
    page's start under `$3 IS NULL OR ...`, that plan re-read the month from its start on every page (quadratic)."""
    async with pool.acquire() as conn:
        for start in range(0, 3000, 500):
            await accesslog.write(conn, [(log_entry(n), None) for n in range(start, start + 500)])
    await tlog.drain()
    await pool.execute("ANALYZE access_log")
    month = await pool.fetchrow("SELECT min(logged_at) AS lower, max(logged_at) + interval '1 s' AS upper "
                                "FROM access_log")
    after = await pool.fetchrow("SELECT logged_at, id FROM access_log ORDER BY logged_at, id OFFSET 2499 LIMIT 1")
    statement = db.queries("broker.tlog", "tlog.sql")["partition_rows"].strip().rstrip(";")
    async with pool.acquire() as conn, conn.transaction():
        # PREPARE and EXECUTE by name: an EXPLAIN sent with its parameters bound is planned for their values
        await conn.execute(f"PREPARE page(timestamptz, timestamptz, timestamptz, uuid, int) AS {statement}")
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        args = ", ".join(f"'{v.isoformat()}'" for v in (month["lower"], month["upper"], after["logged_at"]))
        plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE page({args}, '{after['id']}', 100)")
    read = rows_read(plan[0]["Plan"], "access_log")
    assert read <= 200, read
    first = await pool.fetch(db.queries("broker.tlog", "tlog.sql")["partition_rows"], month["lower"], month["upper"],
                             None, None, 3)
    assert len(first) == 3  # a first page, with no entry before it


async def test_prune_drops_a_wholly_expired_month_and_deletes_the_rest_row_by_row(
        database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    # month A, 14 months ago: everything past the default retention (P1Y) -> dropped whole
    month_a = [log_entry(n, logged_at=months_ago(14, day=3 + n)) for n in range(5)]
    month_a.append(log_entry(5, released=False, logged_at=months_ago(14, day=20)))
    # month B, 8 months ago: one entry kept six months (expired), one a year (kept) -> row by row
    short = log_entry(10, logged_at=months_ago(8))
    short.default_retention = "P6M"
    kept = log_entry(11, logged_at=months_ago(8, day=11))
    recent = log_entry(12)
    for e in [*month_a, short, kept, recent]:
        await accesslog.commit(pool, e)
    await tlog.drain()
    async with pool.acquire() as conn:
        created = await partitions.ensure(conn, now=datetime.now(UTC))
    assert set(created) == {name_of(month_a[0].logged_at), name_of(short.logged_at)}
    assert await pool.fetchval("SELECT count(*) FROM notification_outbox WHERE entry_id = ANY($1::uuid[])",
                               [e.id for e in month_a]) == 5
    latest = await tlog.latest_checkpoint()
    now = datetime.now(UTC)

    dry = await prune(pool, now=now, default_retention="P1Y", dry_run=True)
    assert [(p.entry_id, p.partition) for p in dry] == \
        [(str(e.id), name_of(month_a[0].logged_at)) for e in month_a] + [(str(short.id), None)]
    assert name_of(month_a[0].logged_at) in [p.name for p in await partitions.listing(pool)]

    done = await prune(pool, now=now, default_retention="P1Y", batch=4)  # month A's 6 entries: two pages
    assert done == dry
    names = [p.name for p in await partitions.listing(pool)]
    assert name_of(month_a[0].logged_at) not in names and name_of(short.logged_at) in names
    assert {r["id"] for r in await pool.fetch("SELECT id FROM access_log")} == {kept.id, recent.id}
    assert await pool.fetchval("SELECT count(*) FROM tlog_pruned") == len(month_a) + 1
    assert await pool.fetchval("SELECT count(*) FROM notification_outbox WHERE entry_id = ANY($1::uuid[])",
                               [e.id for e in [*month_a, short]]) == 0
    assert await prune(pool, now=now, default_retention="P1Y") == []

    # the log verifies, and every entry's proof, pruned or not, holds against the same checkpoint
    report = await verify(database_url, tlog, now=now, default_retention="P1Y")
    assert report.ok, report.findings
    assert await tlog.latest_checkpoint() == latest
    for e in [month_a[2], short, kept, recent]:
        found = await tlog.entry_proof(e.id)
        signed = checkpoint.verify_checkpoint(found.checkpoint or "", tlog.signer.verifier)
        merkle.verify_inclusion(leaf_of(entry_document(e.row())), found.index, signed.size, found.proof,
                                signed.root)
    # a v2 tombstone of a dropped month still gives its public leaf
    assert await tlog.public_leaf(await tlog.entry_index(month_a[0].id)) is not None


async def test_a_partition_is_dropped_only_with_every_tombstone(database_url: str, pool: asyncpg.Pool,
                                                                tlog: TransparencyLog) -> None:
    old = [log_entry(n, logged_at=months_ago(15, day=2 + n)) for n in range(2)]
    for e in old:
        await accesslog.commit(pool, e)
    await tlog.drain()
    async with pool.acquire() as conn:
        [name] = await partitions.ensure(conn, now=datetime.now(UTC))
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="has no tombstone"):
        await pool.fetchval("SELECT access_log_drop_partition($1::regclass)", name)
    with pytest.raises(asyncpg.InvalidParameterValueError, match="not a monthly partition"):
        await pool.fetchval("SELECT access_log_drop_partition('access_log_default'::regclass)")
    assert await pool.fetchval(f"SELECT count(*) FROM {name}") == 2
    report = await verify(database_url, tlog)
    assert report.ok, report.findings


async def test_a_month_with_an_entry_not_yet_integrated_is_not_dropped(pool: asyncpg.Pool,
                                                                       tlog: TransparencyLog) -> None:
    old = log_entry(1, logged_at=months_ago(16))
    await accesslog.commit(pool, old)
    async with pool.acquire() as conn:
        [name] = await partitions.ensure(conn, now=datetime.now(UTC))
    assert await prune(pool, now=datetime.now(UTC), default_retention="P1Y") == []
    assert name in [p.name for p in await partitions.listing(pool)]
    await tlog.drain()
    pruned = await prune(pool, now=datetime.now(UTC), default_retention="P1Y")
    assert [(p.entry_id, p.partition) for p in pruned] == [(str(old.id), name)]


async def test_ensure_makes_the_months_ahead_of_a_given_clock(pool: asyncpg.Pool) -> None:
    later = datetime.now(UTC) + timedelta(days=400)
    async with pool.acquire() as conn:
        created = await partitions.ensure(conn, now=later, ahead=1)
    first = partitions.month_of(later)
    assert created == [f"access_log_y{m:%Y}m{m:%m}" for m in (first, partitions.add_months(first, 1))]
    entry = log_entry(3, logged_at=later)
    await accesslog.commit(pool, entry)
    assert await where(pool, entry) == name_of(later)


def since(version: int) -> list[int]:
    """The migrations from `version` on: what migrating a database left at `version - 1` applies."""
    return [m.version for m in db.migrations() if m.version >= version]


@contextlib.asynccontextmanager
async def migrated_up_to(pg_server: str, version: int, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """An empty database migrated up to `version` only (the log as an earlier release left it), dropped after."""
    name = f"dlnuf_m_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = _with_database(pg_server, name)
    every = db.migrations
    with monkeypatch.context() as patched:
        patched.setattr(db, "migrations", lambda package="broker.storage": [
            m for m in every(package) if m.version <= version])
        conn = await db.connect(dsn)
        try:
            await db.migrate(conn)
        finally:
            await conn.close()
    try:
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def at_0028(pg_server: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """The log as it was before partitioning."""
    async with migrated_up_to(pg_server, 28, monkeypatch) as dsn:
        yield dsn


async def test_migration_0029_keeps_every_row_and_the_log_verifies(at_0028: str) -> None:
    """A log written before partitioning, migrated to the latest schema: 0029 keeps every row, and 0031 moves each
    row's index to tlog_entries and the pending row to the integrator's queue. Before the migration the broker
    writes and integrates with the statements of the time (today's need 0031's tables: tests/tlog/before_0031.py)."""
    # log_index is not a column of access_log after 0031: the rows are compared without it, their indices apart
    snapshot = "SELECT to_jsonb(a) - 'log_index' AS row FROM access_log a ORDER BY seq"
    pool = await db.create_pool(at_0028, min_size=1, max_size=4)
    try:
        assert await pool.fetchval("SELECT relkind::text FROM pg_class WHERE oid = 'access_log'::regclass") == "r"
        tlog = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
        await tlog.ensure_checkpoint()
        entries = [log_entry(n, logged_at=months_ago(14, day=1 + n)) for n in range(4)]
        entries += [log_entry(10 + n, version=leaves.V1, logged_at=months_ago(2, day=1 + n)) for n in range(3)]
        entries += [log_entry(20 + n, released=n % 2 == 0) for n in range(5)]
        with old_statements():
            for e in entries:
                await accesslog.commit(pool, e)
            await tlog.drain()
            pending = log_entry(30)
            await accesslog.commit(pool, pending)
        before = [r["row"] for r in await pool.fetch(snapshot)]
        indices = {r["id"]: r["log_index"] for r in await pool.fetch("SELECT id, log_index FROM access_log")}
        outbox = await pool.fetchval("SELECT count(*) FROM notification_outbox")
        async with pool.acquire() as conn:
            assert [m.version for m in await db.migrate(conn)][:1] == [29]  # and any later one
        after = [r["row"] for r in await pool.fetch(snapshot)]
        assert after == before and len(after) == len(entries) + 1
        assert {r["entry_id"]: r["log_index"] for r in await pool.fetch(
            "SELECT entry_id, log_index FROM tlog_entries")} == {i: n for i, n in indices.items() if n is not None}
        assert [r["entry_id"] for r in await pool.fetch("SELECT entry_id FROM tlog_queue")] == [pending.id]
        assert await pool.fetchval("SELECT count(*) FROM notification_outbox") == outbox
        assert await pool.fetchval("SELECT relkind::text FROM pg_class WHERE oid = 'access_log'::regclass") == "p"
        assert await partitions.default_rows(pool) == 0
        names = {p.name for p in await partitions.listing(pool)}
        assert {name_of(e.logged_at) for e in entries} <= names
        # the months in between too, from the oldest row's: a month is never missing in the middle
        assert name_of(months_ago(10)) in names
        # seq goes on after the old sequence; the pending row is integrated after the migration
        newer = log_entry(40)
        await accesslog.commit(pool, newer)
        seqs = await pool.fetch("SELECT id, seq FROM access_log WHERE id = ANY($1::uuid[])", [pending.id, newer.id])
        assert dict((r["id"], r["seq"]) for r in seqs)[newer.id] > max(row["seq"] for row in before)
        await tlog.drain()
        report = await verify(at_0028, tlog)
        assert report.ok, report.findings
        assert report.tree_size == len(entries) + 2
        pruned = await prune(pool, now=datetime.now(UTC), default_retention="P1Y")
        assert {p.entry_id for p in pruned} == {str(e.id) for e in entries[:4]}
        assert {p.partition for p in pruned} == {name_of(entries[0].logged_at)}
        report = await verify(at_0028, tlog)
        assert report.ok, report.findings
    finally:
        await pool.close()
