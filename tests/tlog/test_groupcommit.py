"""The access log's group commit on a real PostgreSQL: concurrent exchanges share a transaction, each returns only
once its own rows are committed, a bad entry fails alone, a lost database fails every entry of its batch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from broker.errors import LogUnavailable
from broker.storage import db
from broker.tlog import evidence
from broker.tlog.accesslog import LogEntry
from broker.tlog.groupcommit import GroupCommit
from tests.tlog.test_tlog import log_entry


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


def some_evidence(entry: LogEntry, *, broken: bool = False) -> evidence.Evidence:
    """Evidence of a refusal before any signature verified (no request part); `broken` names a request label
    without its signature base, which the table's constraint refuses."""
    return evidence.Evidence(entry.id, entry.logged_at, "sig1" if broken else None, b"sig" if broken else None,
                             None, "thumb" if broken else None, 200, b"s", b"base", "k")


async def committed(pool: asyncpg.Pool, entries: list[LogEntry]) -> tuple[int, int, int]:
    """(access-log rows, outbox rows, evidence rows) of these entries, read from another connection."""
    ids = [e.id for e in entries]
    return (await pool.fetchval("SELECT count(*) FROM access_log WHERE id = ANY($1)", ids),
            await pool.fetchval("SELECT count(*) FROM notification_outbox WHERE entry_id = ANY($1)", ids),
            await pool.fetchval("SELECT count(*) FROM exchange_evidence WHERE entry_id = ANY($1)", ids))


async def test_concurrent_entries_share_a_commit_and_each_returns_committed(pool: asyncpg.Pool) -> None:
    batches: list[int] = []
    writer = GroupCommit(pool, on_commit=batches.append)
    entries = [log_entry(n, released=n % 3 != 2) for n in range(40)]
    seen: list[tuple[int, int, int]] = []

    async def one(entry: LogEntry) -> None:
        await writer.commit(entry, some_evidence(entry))
        seen.append(await committed(pool, [entry]))  # what this exchange could now release is durable

    await asyncio.gather(*(one(e) for e in entries))
    await writer.close()
    released = sum(1 for e in entries if e.outcome == "released")
    assert sum(batches) == 40 and len(batches) < 40  # one queue's worth per transaction, not one each
    assert all(s[0] == 1 and s[2] == 1 for s in seen)
    assert await committed(pool, entries) == (40, released, 40)


async def test_alone_an_entry_commits_at_once(pool: asyncpg.Pool) -> None:
    batches: list[int] = []
    writer = GroupCommit(pool, on_commit=batches.append)
    for n in range(3):
        entry = log_entry(n)
        await writer.commit(entry)
        assert await committed(pool, [entry]) == (1, 1, 0)
    await writer.close()
    assert batches == [1, 1, 1]


async def test_a_bad_entry_fails_alone(pool: asyncpg.Pool) -> None:
    writer = GroupCommit(pool)
    good = [log_entry(n) for n in range(5)]
    bad = log_entry(99)
    results = await asyncio.gather(*(writer.commit(e, some_evidence(e)) for e in good),
                                   writer.commit(bad, some_evidence(bad, broken=True)), return_exceptions=True)
    await writer.close()
    assert results[:5] == [None] * 5
    assert isinstance(results[5], LogUnavailable)
    assert await committed(pool, good) == (5, 5, 5)
    assert await committed(pool, [bad]) == (0, 0, 0)  # its outbox row and evidence went down with it


async def test_a_lost_database_fails_every_entry_of_the_batch(database_url: str) -> None:
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    writer = GroupCommit(pool)
    await pool.close()
    results = await asyncio.gather(*(writer.commit(log_entry(n)) for n in range(3)), return_exceptions=True)
    assert all(isinstance(r, LogUnavailable) for r in results)
    await writer.close()


async def test_close_commits_what_is_queued_then_refuses(pool: asyncpg.Pool) -> None:
    writer = GroupCommit(pool)
    entries = [log_entry(n) for n in range(5)]
    pending = [asyncio.ensure_future(writer.commit(e)) for e in entries]
    await asyncio.sleep(0)  # queued, not yet written
    await writer.close()
    assert (await committed(pool, entries))[0] == 5  # committed by the time close returned
    assert await asyncio.gather(*pending) == [None] * 5
    with pytest.raises(LogUnavailable):
        await writer.commit(log_entry(9))
