"""Migration 0031 on a log an earlier broker wrote: every index given so far, pruned entries' included, moves to
tlog_entries; the rows still waiting for theirs go to the queue in insertion order; no row changes otherwise; the
new integrator goes on from the same tree, and `log verify` finds nothing wrong."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from broker.storage import db
from broker.tlog import accesslog, leaves
from broker.tlog.log import TransparencyLog, _q, _write_tombstones
from tests.tlog.before_0031 import old_statements
from tests.tlog.test_partitions import migrated_up_to, since
from tests.tlog.test_tlog import log_entry, signer
from tests.tlog.test_tlog_verify import verify


@pytest.fixture
async def at_0030(pg_server: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    async with migrated_up_to(pg_server, 30, monkeypatch) as dsn:
        yield dsn


async def test_migration_0031_moves_the_indices_and_the_queue_and_the_log_goes_on(at_0030: str) -> None:
    rows_sql = "SELECT to_jsonb(a) - 'log_index' AS row FROM access_log a ORDER BY seq"
    pool = await db.create_pool(at_0030, min_size=1, max_size=4)
    try:
        tlog = TransparencyLog(pool, signer(), max_merge_delay=60, batch=5)
        old = datetime.now(UTC) - timedelta(days=800)  # past the default retention, P1Y: 2 and 7 are pruned
        entries = [log_entry(n, released=n % 3 != 0, logged_at=old if n in (2, 7) else None,
                             version=leaves.V1 if n == 4 else leaves.V2) for n in range(12)]
        pending = [log_entry(20 + n) for n in range(3)]
        with old_statements():
            await tlog.ensure_checkpoint()
            for e in entries:
                await accesslog.commit(pool, e)
            assert await tlog.drain() == 12
            # `log prune` as it ran then: tombstones, then the bodies of entries 2 and 7
            async with pool.acquire() as conn, conn.transaction():
                gone = await conn.fetch("SELECT * FROM access_log WHERE id = ANY($1::uuid[]) ORDER BY log_index",
                                        [entries[2].id, entries[7].id])
                await _write_tombstones(conn, gone, datetime.now(UTC))
                ids, times = [r["id"] for r in gone], [r["logged_at"] for r in gone]
                await conn.execute(_q()["tlog_prune_evidence"], ids, times)
                await conn.execute("DELETE FROM notification_outbox WHERE entry_id = ANY($1::uuid[])", ids)  # pre-0032
                await conn.execute(_q()["tlog_prune_delete"], ids, times)
            for e in reversed(pending):  # committed last, in this order: the queue keeps it
                await accesslog.commit(pool, e)
            given = {r["id"]: r["log_index"] for r in await pool.fetch(
                "SELECT id, log_index FROM access_log WHERE log_index IS NOT NULL")}
            seqs = [r["id"] for r in await pool.fetch("SELECT id FROM access_log WHERE log_index IS NULL ORDER BY seq")]
            before = [r["row"] for r in await pool.fetch(rows_sql)]

        async with pool.acquire() as conn:
            assert [m.version for m in await db.migrate(conn)] == since(31)

        assert [r["row"] for r in await pool.fetch(rows_sql)] == before
        mapped = {r["entry_id"]: r["log_index"] for r in await pool.fetch("SELECT * FROM tlog_entries")}
        assert mapped == {**given, entries[2].id: 2, entries[7].id: 7}
        assert [r["entry_id"] for r in await pool.fetch("SELECT entry_id FROM tlog_entries WHERE v1")] \
            == [entries[4].id]
        assert await pool.fetchval(_q()["tile_last_v1"]) == 4
        assert [r["entry_id"] for r in await pool.fetch("SELECT entry_id FROM tlog_queue ORDER BY seq")] == seqs
        assert seqs == [e.id for e in reversed(pending)]

        # The new integrator takes the queue in order, after the 12 indices given before.
        assert await tlog.drain() == 3
        assert await pool.fetchval("SELECT count(*) FROM tlog_queue") == 0
        assert [await pool.fetchval("SELECT log_index FROM tlog_entries WHERE entry_id = $1", i) for i in seqs] \
            == [12, 13, 14]
        report = await verify(at_0030, tlog)
        assert report.ok, report.findings
        assert report.tree_size == 15
    finally:
        await pool.close()
