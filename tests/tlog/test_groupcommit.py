"""The access log's group commit on a real PostgreSQL: concurrent exchanges share a transaction, each returns only
once its own rows are committed, a bad entry fails alone, a lost database fails every entry of its batch."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import asyncpg
import pytest

from broker.errors import LogUnavailable
from broker.storage import batch, db
from broker.tlog import evidence
from broker.tlog.accesslog import LogEntry
from broker.tlog.groupcommit import GroupCommit
from tests.tlog.test_tlog import log_entry


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


async def test_every_value_is_stored_exactly_as_the_entry_holds_it(pool: asyncpg.Pool) -> None:
    """The batch travels as JSON (one statement): what is read back must equal what the receipt's leaf was computed
    from, for both leaf formats, bytes, arrays with separators and quotes, non-ASCII text and parameters."""
    v1 = log_entry(1, version=1)
    v2 = log_entry(2)
    v2.fields_requested = v2.fields_released = ('a,b', 'c"d', "e\\f", "é ✓ 𝄞", "{g}", "NULL")
    v2.call_context, v2.call_object = "Dossier n°42 \"urgent\"\n", "objet\ttab"
    v2.parameters = {"annee_scolaire": "2025-2026", "nested": {"list": [1, 2.5, None, True]}}
    v2.logged_at = v2.logged_at.replace(microsecond=0)  # orjson writes no fraction then
    refused = log_entry(3, released=False)
    proof = some_evidence(v2)
    signed = evidence.Evidence(v1.id, v1.logged_at, "sig1", bytes(range(256)), b"\x00base\xff", "thumb", 200,
                               b"\x00\x01", b"response base", "k")
    writer = GroupCommit(pool)
    await asyncio.gather(writer.commit(v1, signed), writer.commit(v2, proof), writer.commit(refused))
    await writer.close()
    for entry in (v1, v2, refused):
        row = await pool.fetchrow("SELECT * FROM access_log WHERE id = $1", entry.id)
        stored = {k: row[k] for k in entry.row()}
        expected = entry.row()
        for k in ("fields_requested", "fields_released"):
            expected[k] = list(expected[k])  # type: ignore[call-overload]
        assert stored == expected
    for ev in (signed, proof):
        row = await pool.fetchrow("SELECT * FROM exchange_evidence WHERE entry_id = $1", ev.entry_id)
        assert tuple(row[k] for k in evidence.COLUMNS) == ev.args()
    assert await committed(pool, [v1, v2, refused]) == (3, 2, 2)


async def test_a_value_json_cannot_carry_fails_its_entry_alone(pool: asyncpg.Pool) -> None:
    writer = GroupCommit(pool)
    good = [log_entry(n) for n in range(3)]
    bad = log_entry(9)
    bad.call_context = "lone surrogate \ud800"
    results = await asyncio.gather(*(writer.commit(e) for e in good), writer.commit(bad), return_exceptions=True)
    await writer.close()
    assert results[:3] == [None] * 3
    assert isinstance(results[3], LogUnavailable)
    assert await committed(pool, [*good, bad]) == (3, 3, 0)


async def test_a_connection_the_server_drops_between_batches_is_replaced(database_url: str) -> None:
    """The writer keeps its connection between statements: one the server dropped meanwhile is noticed (as the pool
    notices it on acquire) and replaced, and no entry fails for it. One dropped during a statement fails that batch
    (test_a_lost_database_fails_every_entry_of_the_batch)."""
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    admin = await db.connect(database_url)
    writer = GroupCommit(pool)
    entries = [log_entry(1), log_entry(2)]
    try:
        await writer.commit(entries[0])
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        await asyncio.sleep(0.1)  # the client sees the connection closed
        await writer.commit(entries[1])
        count = "SELECT count(*) FROM access_log WHERE id = $1"
        assert [await admin.fetchval(count, e.id) for e in entries] == [1, 1]
    finally:
        await writer.close()
        await admin.close()
        await pool.close()


async def test_an_idle_writer_gives_its_connection_back(pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "KEEP", 0.05)
    writer = GroupCommit(pool)
    idle = pool.get_idle_size()
    await writer.commit(log_entry(1))
    assert pool.get_idle_size() == idle - 1  # kept for the next statement
    await asyncio.sleep(0.2)
    assert pool.get_idle_size() == idle  # given back once nothing came for KEEP seconds
    await writer.commit(log_entry(2))  # and taken again
    await writer.close()
    assert pool.get_idle_size() == idle


async def test_a_writer_busier_than_keep_keeps_its_connection_then_gives_it_back(
        pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle timer is re-armed from the last statement: statements closer together than KEEP, over longer than
    KEEP, use one connection throughout; once they stop, it goes back."""
    monkeypatch.setattr(batch, "KEEP", 0.1)

    class Counting:  # asyncpg's Pool has slots: its acquire cannot be patched
        acquired = 0

        def acquire(self) -> Any:
            self.acquired += 1
            return pool.acquire()

        async def release(self, conn: Any) -> None:
            await pool.release(conn)

    counting = Counting()
    writer = GroupCommit(cast(asyncpg.Pool, counting))
    idle = pool.get_idle_size()
    for i in range(8):  # 0.4 s of statements 0.04 s apart
        await writer.commit(log_entry(10 + i))
        await asyncio.sleep(0.04)
    assert (counting.acquired, pool.get_idle_size()) == (1, idle - 1)
    await asyncio.sleep(0.3)
    assert pool.get_idle_size() == idle
    await writer.close()
