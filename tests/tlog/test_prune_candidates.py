"""`log prune`'s candidates (tlog.sql `tlog_prune_candidates`): one range of the index of migration 0036 per
retention the log holds, plus the v1 entries below the latest cutoff any of them can have. The same entries in the
same order as the statement it replaced, which read the whole access log on every run, and without reading the log,
whether PostgreSQL plans the statement for its arguments or generically (its choice after five executions)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from broker.registry import Habilitation, LegalBasis
from broker.storage import db
from broker.tlog import accesslog, leaves, log, partitions
from broker.tlog.accesslog import LogEntry
from broker.tlog.log import TransparencyLog
from tests.tlog.test_partitions import rows_read
from tests.tlog.test_tlog import CONSUMER, log_entry, signer

# The statement before migration 0036, kept to compare with: each row's cutoff, so every run read the whole log.
OLD = """
SELECT a.*, x.log_index
FROM access_log a
CROSS JOIN LATERAL (SELECT log_index FROM tlog_entries WHERE entry_id = a.id AND logged_at = a.logged_at
                    OFFSET 0) x
LEFT JOIN habilitations h ON h.id = a.habilitation_id
WHERE a.logged_at < $1::timestamptz - COALESCE(a.retention, h.retention, $2)::interval
ORDER BY a.logged_at, a.id LIMIT $3
"""
NEW = db.queries("broker.tlog", "tlog.sql")["tlog_prune_candidates"]

REGISTERED = {"h1m": "P1M", "h3m": "P3M", "h2y": "P2Y"}
"""The habilitations in the registry (habilitations.retention is NOT NULL: a habilitation without one cannot be)."""
GONE = "h-gone"
"""A habilitation entries name but the registry no longer has."""
RETENTIONS = ("P1M", "P30D", "P3M", "P6M", "P1Y", "P18M", "P2Y", "P10Y")


@pytest.fixture
async def tlog(pool: asyncpg.Pool) -> TransparencyLog:
    t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=1000)
    await t.ensure_checkpoint()
    return t


async def register(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO organisations (siret, name, roles) VALUES ($1, 'Paris', '{consumer}')", CONSUMER)
    for hid, retention in REGISTERED.items():
        await pool.execute(
            "INSERT INTO habilitations (id, consumer, dataset, purposes, fields, recipients, legal_basis_type, "
            "legal_basis_title, legal_basis_url, retention) VALUES ($1, $2, $1, '{p}', '{f}', '{r}', 'information', "
            "'t', 'https://x', $3)", hid, CONSUMER, retention)


def entry(n: int, logged_at: datetime, *, retention: str | None, habilitation: str | None = None) -> LogEntry:
    """A v2 entry carrying `retention`, or with None a v1 entry (no retention of its own); under `habilitation`
    (registered or gone) or none. A v2 entry carries its habilitation's retention as it was when it was logged: the
    registry's may differ since."""
    e = log_entry(n, released=n % 4 != 3, logged_at=logged_at, version=leaves.V1 if retention is None else leaves.V2)
    if habilitation is not None:
        e.habilitation = Habilitation(habilitation, CONSUMER, "quotient_familial", ("p",), ("f",), ("r",),
                                      LegalBasis("information", "t", "https://x"), retention or "P1Y")
    elif retention is not None:
        e.default_retention = retention
    return e


async def store(pool: asyncpg.Pool, tlog: TransparencyLog, entries: Sequence[LogEntry], *,
                queued: Sequence[LogEntry] = ()) -> None:
    """Writes and integrates `entries`, then writes `queued` (not integrated: never a candidate), and gives the past
    months their partitions."""
    async with pool.acquire() as conn:
        for start in range(0, len(entries), 500):
            await accesslog.write(conn, [(e, None) for e in entries[start:start + 500]])
        await tlog.drain()
        if queued:
            await accesslog.write(conn, [(e, None) for e in queued])
        await partitions.ensure(conn, now=datetime.now(UTC))
    await pool.execute("ANALYZE access_log")


@pytest.mark.parametrize("seed", range(3))
async def test_the_candidates_are_those_of_the_statement_that_read_the_whole_log(
        seed: int, pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    rng = random.Random(seed)
    await register(pool)
    now = datetime.now(UTC).replace(microsecond=0)
    # each retention's cutoff as PostgreSQL computes it (its month arithmetic), to put entries on and around it
    cutoff: dict[str, datetime] = {r: await pool.fetchval("SELECT $1::timestamptz - $2::text::interval", now, r)
                                   for r in RETENTIONS}
    near = (timedelta(0), timedelta(microseconds=1), -timedelta(microseconds=1), timedelta(days=1),
            -timedelta(days=1))

    def moment(retention: str) -> datetime:
        if rng.random() < 0.5:
            return cutoff[retention] + rng.choice(near)
        return now - timedelta(seconds=rng.randrange(4 * 365 * 86400))

    entries = []
    for n in range(200):
        habilitation = rng.choice([*REGISTERED, GONE, None])
        if rng.random() < 0.3:  # v1: its habilitation's retention as the registry has it, else the default
            entries.append(entry(n, moment(REGISTERED.get(habilitation or "", "P1Y")), retention=None,
                                 habilitation=habilitation))
        else:
            retention = rng.choice(RETENTIONS)
            entries.append(entry(n, moment(retention), retention=retention, habilitation=habilitation))
    # and one of each kind certainly due as of `now`
    long_ago = now - timedelta(days=1500)
    entries += [entry(300 + i, long_ago + timedelta(seconds=i), retention=r, habilitation=h)
                for i, (r, h) in enumerate([("P1Y", None), ("P2Y", "h2y"), ("P1M", GONE), (None, "h3m"),
                                            (None, GONE), (None, None)])]
    queued = [entry(400 + i, long_ago, retention=r) for i, r in enumerate(("P1M", None))]
    await store(pool, tlog, entries, queued=queued)

    compared = 0
    async with pool.acquire() as conn:
        for zone in ("UTC", "Europe/Paris"):  # month arithmetic follows the session's time zone
            for mode in ("force_custom_plan", "force_generic_plan"):
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL TimeZone = '{zone}'")
                    await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
                    for at in (now, now - timedelta(days=200), now + timedelta(days=400)):
                        for default in ("P1Y", "P1M", "P10Y"):
                            for limit in (5, 1000):
                                expected = [dict(r) for r in await conn.fetch(OLD, at, default, limit)]
                                found = [dict(r) for r in await conn.fetch(NEW, at, default, limit)]
                                assert found == expected, (zone, mode, at, default, limit)
                                compared += len(expected)
        due = {r["id"] for r in await conn.fetch(NEW, now, "P1Y", 1000)}
    assert {e.id for e in entries[-6:]} <= due and not due & {e.id for e in queued}
    assert compared > 1000


async def test_the_candidates_are_found_without_reading_the_log(pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    """3,000 entries, 10 of them due: the statement reads about the due entries and an index probe per partition
    and retention, planned for its arguments or generically; the old statement, or this one without the index of
    migration 0036, read every entry."""
    await register(pool)
    now = datetime.now(UTC)
    year_ago = now - timedelta(days=400)
    # a day's entries, and older than a year but kept ten: what a cutoff on logged_at alone reads (each in one or two
    # months: partitions of a few entries are read whole, which costs as little as an index probe)
    entries = [entry(n, now - timedelta(minutes=1 + n), retention="P1Y") for n in range(1000)]
    entries += [entry(1000 + n, year_ago - timedelta(minutes=n), retention="P10Y") for n in range(1985)]
    due = [entry(3000 + n, year_ago - timedelta(minutes=n), retention="P1Y") for n in range(5)]
    due += [entry(3010 + n, now - timedelta(days=60, minutes=n), retention="P1M") for n in range(3)]
    due += [entry(3020 + n, now - timedelta(days=120, minutes=n), retention=None, habilitation="h3m")
            for n in range(2)]
    # v1 entries older than the registry's shortest retention but kept two years: in the v1 range, filtered out
    kept_v1 = [entry(3030 + n, now - timedelta(days=200, minutes=n), retention=None, habilitation="h2y")
               for n in range(5)]
    entries += due + kept_v1
    assert len(entries) == 3000
    await store(pool, tlog, entries)

    async def read(conn: asyncpg.Connection, statement: str, mode: str) -> int:
        """Rows of access_log the statement's scans read, returned or filtered out, in an EXPLAIN ANALYZE of a
        PREPAREd statement (an EXPLAIN sent with bound parameters is always planned for their values)."""
        await conn.execute(f"PREPARE candidates(timestamptz, text, bigint) AS {statement.strip().rstrip(';')}")
        try:
            await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
            plan = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) "
                                       f"EXECUTE candidates('{now.isoformat()}', 'P1Y', 1000)")
        finally:
            await conn.execute("DEALLOCATE candidates")
        assert plan[0]["Plan"]["Actual Rows"] == len(due), (statement, mode)
        return rows_read(plan[0]["Plan"], "access_log")

    # the 10 due, the 5 kept v1 entries, and an index probe per partition for each step of the skip scan and each
    # retention's range: 55 rows with a custom plan, 28 with the generic one, when written. The old statement read
    # 3,000; this one without the index 24,000 (each step and each range reads the whole log).
    bound = 100
    async with pool.acquire() as conn:
        for mode in ("force_custom_plan", "force_generic_plan"):
            async with conn.transaction():
                found = await read(conn, NEW, mode)
                assert found <= bound, (mode, found)
                assert await read(conn, OLD, mode) >= 3000
            without_index = conn.transaction()
            await without_index.start()
            try:
                await conn.execute("DROP INDEX access_log_retention")
                without = await read(conn, NEW, mode)
                assert without >= 3000, (mode, without)
            finally:
                await without_index.rollback()
    assert sorted(r["id"] for r in await pool.fetch(NEW, now, "P1Y", 1000)) == sorted(e.id for e in due)


async def test_prune_takes_its_candidates_without_parallel_workers(
        database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting parallel workers for the candidates' generic plan cost more than the statement (tlog.sql
    `tlog_prune_serial`): each of prune's batches takes its candidates with max_parallel_workers_per_gather = 0, on
    a pool whose sessions allow 4. The statement records the setting it runs under, so whatever plan the test's
    small log gets, the setting is what is checked."""
    now = datetime.now(UTC)
    # due after a day, each beside one kept ten years in its month: pruned row by row, not as a whole partition
    due = [entry(n, now - timedelta(days=3, minutes=n), retention="P1D") for n in range(5)]
    kept = [entry(10 + n, now - timedelta(days=3, minutes=n), retention="P10Y") for n in range(5)]
    await store(pool, tlog, due + kept)
    await pool.execute("CREATE TABLE seen (workers text NOT NULL)")
    queries = db.queries("broker.tlog", "tlog.sql")
    recording = ("WITH seen AS (INSERT INTO seen VALUES (current_setting('max_parallel_workers_per_gather'))) "
                 f"SELECT * FROM ({NEW.strip().rstrip(';')}) c ORDER BY c.logged_at, c.id")
    monkeypatch.setattr(log, "_q", lambda: {**queries, "tlog_prune_candidates": recording})
    parallel = await db.create_pool(database_url, min_size=1, max_size=1,
                                    settings={"max_parallel_workers_per_gather": "4"})
    try:
        assert await parallel.fetchval("SHOW max_parallel_workers_per_gather") == "4"
        pruned = await log.prune(parallel, now=now, default_retention="P1Y", batch=2)
    finally:
        await parallel.close()
    assert sorted(p.entry_id for p in pruned) == sorted(str(e.id) for e in due)
    assert [r["workers"] for r in await pool.fetch("SELECT workers FROM seen")] == ["0", "0", "0"]
