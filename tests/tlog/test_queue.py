"""The integrator's queue (migration 0031): every row inserted into access_log, however, is queued by the table's
trigger; a line leaves only once its entry has its index; lines whose row is gone cannot stall integration; and an
entry is (id, logged_at), so a row reusing another's id in another month is a second entry, integrated and pruned
on its own, never confused with the first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from broker.tlog import accesslog, leaves, tiles
from broker.tlog.log import JournalFilter, TransparencyLog, _q, prune
from tests.tlog.test_tlog import SUBJECT_KEY, commit_entries, log_entry, signer
from tests.tlog.test_tlog_verify import tamper, verify


@pytest.fixture
async def tlog(pool: asyncpg.Pool) -> TransparencyLog:
    t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
    await t.ensure_checkpoint()
    return t


async def queued(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM tlog_queue"))


async def test_rows_written_any_way_are_queued_and_integrated(pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    """A broker of the previous release, during a rolling upgrade, or a script's COPY: no statement of theirs knows
    the queue, and their rows are integrated all the same."""
    entries = [log_entry(n) for n in range(10)]
    columns = [c for c in accesslog.COLUMNS if c != "parameters"]  # NULL: a refused entry's
    values = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    rows = [tuple(v for c, v in zip(accesslog.COLUMNS, e.args(), strict=True) if c != "parameters") for e in entries]
    await pool.executemany(f"INSERT INTO access_log ({', '.join(columns)}) VALUES ({values})", rows)
    await commit_entries(pool, 3)
    assert await queued(pool) == 13
    assert await tlog.drain() == 13
    assert await queued(pool) == 0
    indexed = {r["entry_id"] for r in await pool.fetch("SELECT entry_id FROM tlog_entries")}
    assert {e.id for e in entries} <= indexed


async def test_a_line_leaves_the_queue_only_with_its_index(pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    [first, _] = await commit_entries(pool, 2)
    for sql in ("DELETE FROM tlog_queue WHERE entry_id = $1",
                "UPDATE tlog_queue SET seq = seq + 100 WHERE entry_id = $1"):
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="queue"):
            await pool.execute(sql, first.id)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="queue"):
        await pool.execute("TRUNCATE tlog_queue")
    assert await queued(pool) == 2
    assert await tlog.drain() == 2  # the integrator's own delete, after the index: allowed


async def test_lines_whose_row_is_gone_do_not_stall_integration(database_url: str, pool: asyncpg.Pool,
                                                                tlog: TransparencyLog) -> None:
    """More such lines than a round's batch at the head of the queue: the rows behind them are integrated."""
    gone = await commit_entries(pool, 9)
    listed = ", ".join(f"'{e.id}'" for e in gone)
    await tamper(database_url, f"DELETE FROM access_log WHERE id IN ({listed})")
    later = await commit_entries(pool, 3)
    assert await tlog.drain() == 3
    assert {r["entry_id"] for r in await pool.fetch("SELECT entry_id FROM tlog_entries")} == {e.id for e in later}
    status = await pool.fetchrow(_q()["tlog_status"])
    assert status["oldest_pending"] is None  # the lines left are not entries: nothing to integrate


async def test_an_id_reused_in_another_month_is_another_entry(database_url: str, pool: asyncpg.Pool,
                                                               tlog: TransparencyLog) -> None:
    """id is unique only within a month's partition. A row with an integrated entry's id, backdated two years, is
    integrated with its own index and pruned alone: the genuine entry keeps its row, its evidence and its proof."""
    [genuine] = await commit_entries(pool, 1)
    await tlog.drain()
    forged = log_entry(1, released=False)  # no outbox line: notification_outbox.entry_id is unique
    forged.id, forged.logged_at = genuine.id, datetime.now(UTC) - timedelta(days=730)
    await accesslog.commit(pool, forged)
    assert await tlog.drain() == 1
    indices = {r["logged_at"]: r["log_index"] for r in await pool.fetch(
        "SELECT logged_at, log_index FROM tlog_entries WHERE entry_id = $1", genuine.id)}
    assert sorted(indices.values()) == [0, 1]
    journal = await tlog.journal(SUBJECT_KEY, JournalFilter())
    assert sorted((e.index for e in journal.entries), key=lambda i: i if i is not None else -1) == [0, 1]
    pruned = await prune(pool, now=datetime.now(UTC), default_retention="P1Y")
    assert [(p.index, p.logged_at) for p in pruned] == [(1, forged.logged_at)]
    assert await pool.fetchval("SELECT count(*) FROM access_log WHERE id = $1", genuine.id) == 1
    report = await verify(database_url, tlog)
    assert report.ok, report.findings
    # the genuine one's turn comes too: its tombstone beside the other's, same id
    later = datetime.now(UTC) + timedelta(days=400)
    assert [p.index for p in await prune(pool, now=later, default_retention="P1Y")] == [0]


async def test_a_pruned_entry_cannot_be_logged_again(pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    """Its row is gone, so access_log's primary key would take the same (id, logged_at) again: the queue's trigger
    refuses it (it has its index), and integration goes on for the others."""
    old = log_entry(1, released=False, logged_at=datetime.now(UTC) - timedelta(days=730))
    await accesslog.commit(pool, old)
    await tlog.drain()
    assert len(await prune(pool, now=datetime.now(UTC), default_retention="P1Y")) == 1
    with pytest.raises(accesslog.LogUnavailable):
        await accesslog.commit(pool, old)
    await commit_entries(pool, 2)
    assert await tlog.drain() == 2


async def test_a_v1_entry_is_marked_and_bundles_start_after_it(pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    """A v1 leaf's entry is not public: tlog_entries marks the line (its guard checks the mark against the row), and
    the entry bundles GET /v1/log announces start after the last one."""
    await commit_entries(pool, 2)
    await accesslog.commit(pool, log_entry(7, version=leaves.V1))
    await commit_entries(pool, 1)
    assert await tlog.drain() == 4
    assert [r["log_index"] for r in await pool.fetch("SELECT log_index FROM tlog_entries WHERE v1")] == [2]
    assert await tiles.public_from(pool) == tiles.WIDTH
    # a v2 entry still queued, its leaf stored at the next index: marked v1, it is refused
    queued = log_entry(8)
    await accesslog.commit(pool, queued)
    await pool.execute("INSERT INTO tlog_nodes (level, idx, hash) VALUES (0, 4, $1)", queued.leaf())
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="names no access-log entry"):
        await pool.execute("INSERT INTO tlog_entries (log_index, entry_id, logged_at, v1) "
                           "SELECT 4, id, logged_at, true FROM access_log WHERE id = $1", queued.id)
