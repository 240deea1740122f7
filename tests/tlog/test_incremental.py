"""`log verify --state`: an incremental verification starts from the tree a previous run verified, checks only what
came since, and still sees rows or their lines deleted below it, tombstones written or removed since, and a log that
no longer extends the verified tree."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from broker.storage import db
from broker.tlog import accesslog, leaves
from broker.tlog.log import TransparencyLog, _q, entry_document, prune
from broker.tlog.verify import DatabaseSource, Report, Resume, verify_log
from tests.tlog.test_partitions import migrated_up_to, rows_read, since
from tests.tlog.test_tlog import ORIGIN, commit_entries, log_entry, signer
from tests.tlog.test_tlog_verify import kinds, row_at, tamper
from tests.tlog.test_tombstones import delete_with_tombstone

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def tlog(pool: asyncpg.Pool) -> TransparencyLog:
    t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
    await t.ensure_checkpoint()
    await commit_entries(pool, 30)
    await t.drain()
    return t


async def verify(database_url: str, tlog: TransparencyLog, resume: Resume | None = None,
                 max_merge_delay: float | None = None) -> Report:
    conn = await db.connect(database_url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await verify_log(DatabaseSource(conn), [tlog.signer.verifier], origin=ORIGIN, page=8,
                                    now=datetime.now(UTC), resume=resume, max_merge_delay=max_merge_delay)
    finally:
        await conn.close()


async def grown(database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog) -> tuple[Resume, Report]:
    """A full verification of the 30 entries, then 12 more entries, verified incrementally."""
    full = await verify(database_url, tlog)
    assert full.ok and full.resume is not None and full.resume.size == 30
    await commit_entries(pool, 12)
    await tlog.drain()
    return full.resume, await verify(database_url, tlog, full.resume)


async def test_only_what_came_since_is_verified(database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    state, report = await grown(database_url, pool, tlog)
    assert report.ok, report.findings
    assert (report.resumed_from, report.entries, report.tree_size) == (30, 12, 42)
    assert report.resume is not None and report.resume.size == 42
    # the recorded edge is the tree's: a full verification would end at the same place
    full = await verify(database_url, tlog)
    assert full.resume is not None and full.resume.edge == report.resume.edge
    # and the state survives its JSON
    assert Resume.from_json(json.loads(json.dumps(state.to_json()))) == state


async def test_a_new_row_modified_is_found(database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    full = await verify(database_url, tlog)
    assert full.resume is not None
    await commit_entries(pool, 5)
    await tlog.drain()
    await tamper(database_url, f"UPDATE access_log SET consumer = '21690123100011' WHERE {row_at(33)}")
    report = await verify(database_url, tlog, full.resume)
    assert kinds(report)[0][:2] == ("modified", 33) and report.resume is None


async def test_a_row_deleted_below_the_verified_size_is_found(database_url: str, pool: asyncpg.Pool,
                                                             tlog: TransparencyLog) -> None:
    full = await verify(database_url, tlog)
    assert full.resume is not None
    await tamper(database_url, f"DELETE FROM access_log WHERE {row_at(4)}")
    report = await verify(database_url, tlog, full.resume)
    assert [(f.kind, "1 entries below 30 were deleted" in f.detail) for f in report.findings] == [("missing", True)]


async def test_a_line_removed_below_the_verified_size_is_found(database_url: str, pool: asyncpg.Pool,
                                                              tlog: TransparencyLog) -> None:
    """tlog_entries keeps the line of every index it gave (pruning keeps it too): one removed below the verified size
    leaves its entry without an index. Its row is still there and counted among those held below, so only a count
    of the lines sees it."""
    full = await verify(database_url, tlog)
    assert full.resume is not None
    await tamper(database_url, "DELETE FROM tlog_entries WHERE log_index = 4")
    report = await verify(database_url, tlog, full.resume)
    assert [(f.kind, "1 indices below 30 lost their line" in f.detail) for f in report.findings] == [("missing", True)]
    assert report.resume is None
    # a full pass names the index
    assert ("missing", 4) in [(f.kind, f.index) for f in (await verify(database_url, tlog)).findings]


async def test_the_indices_held_below_are_counted_without_reading_their_lines(database_url: str, pool: asyncpg.Pool,
                                                                             tlog: TransparencyLog) -> None:
    """tlog_held_below (every incremental run) reads tlog_entries only for the indices given since the last run: it
    counts the rows instead of joining every older index to its row (about 1.5 s a million entries). Pruned and
    queued entries count as they should, and a row deleted below is one less."""
    old = datetime.now(UTC) - timedelta(days=730)
    async with pool.acquire() as conn:
        await accesslog.write(conn, [(log_entry(n, logged_at=old), None) for n in range(2)])
        for start in range(0, 3000, 500):
            await accesslog.write(conn, [(log_entry(n), None) for n in range(start, start + 500)])
    await tlog.drain()
    assert len(await prune(pool, now=datetime.now(UTC), default_retention="P1Y")) == 2
    size = await pool.fetchval("SELECT size FROM tlog_head")
    await commit_entries(pool, 3)  # queued, not integrated: not counted
    await pool.execute("ANALYZE")
    query = _q()["tlog_held_below"]
    async with pool.acquire() as conn:
        for _ in range(7):  # past the custom plans: the generic plan is the one a verifier keeps
            assert await conn.fetchval(query, size - 10) == size - 10
        plan = [r[0] for r in await (await conn.prepare(f"EXPLAIN (ANALYZE, COSTS OFF) {query}")).fetch(size - 10)]
    read = [(int(m[1]) * int(m[2]), line) for line in plan if " on tlog_entries " in line
            for m in [re.search(r"rows=(\d+) loops=(\d+)", line)] if m]
    assert read and all(n <= 10 for n, _ in read), "\n".join(plan)
    await tamper(database_url, f"DELETE FROM access_log WHERE {row_at(4)}")
    assert await pool.fetchval(query, size - 10) == size - 11


async def test_tombstones_written_or_removed_since_are_checked(database_url: str, pool: asyncpg.Pool,
                                                              tlog: TransparencyLog) -> None:
    old = log_entry(50, logged_at=datetime.now(UTC) - timedelta(days=500))
    young = log_entry(51, logged_at=datetime.now(UTC) - timedelta(days=5))
    for e in (old, young):
        await accesslog.commit(pool, e)
    await tlog.drain()
    full = await verify(database_url, tlog)
    assert full.resume is not None
    await prune(pool, now=datetime.now(UTC), default_retention="P1Y")  # lawful: the old entry
    lawful = await verify(database_url, tlog, full.resume)
    assert lawful.ok, lawful.findings
    assert [p.entry_id for p in lawful.pruned] == [str(old.id)]
    # the state counts the tombstones written below its horizon: the prune's, unless another session of this shared
    # server held the horizon back (its tombstone is then checked again next time)
    assert lawful.resume is not None and lawful.resume.tombstones == await pool.fetchval(
        "SELECT count(*) FROM tlog_pruned WHERE written_by < $1", lawful.resume.horizon)
    public = leaves.leaf_data(entry_document(young.row()))
    await delete_with_tombstone(database_url, pool, young, pruned_at=datetime.now(UTC), leaf_data=public)
    assert [f.kind for f in (await verify(database_url, tlog, lawful.resume)).findings] == ["deleted"]
    await tamper(database_url, "DELETE FROM tlog_pruned")
    kinds_found = {f.kind for f in (await verify(database_url, tlog, lawful.resume)).findings}
    # both indices are held by nothing now; and the lawful tombstone is missing from the count below the horizon, if
    # it was counted there (not if another session held the horizon back: it was then to be checked again)
    assert "missing" in kinds_found and ("deleted" in kinds_found) == (lawful.resume.tombstones == 1)


@pytest.mark.parametrize("written_by", [None, "0"])
async def test_a_tombstone_slipped_among_those_checked_is_found(database_url: str, pool: asyncpg.Pool,
                                                               tlog: TransparencyLog, written_by: str | None) -> None:
    """An entry deleted long before its retention ran out, behind a tombstone dated before the last verification:
    `pruned_at` (the pruning machine's clock) does not say which tombstones that run checked, the transaction that
    wrote each does. Dated back, the tombstone is still one written since, checked, and a deletion; with the
    transaction id set back by hand as well, it is one tombstone too many below the horizon the last run recorded."""
    young = log_entry(51, logged_at=datetime.now(UTC) - timedelta(days=5))
    await accesslog.commit(pool, young)
    await tlog.drain()
    full = await verify(database_url, tlog)
    assert full.resume is not None
    public = leaves.leaf_data(entry_document(young.row()))
    await delete_with_tombstone(database_url, pool, young, pruned_at=full.resume.verified_at - timedelta(days=1),
                                leaf_data=public)
    if written_by is not None:
        await tamper(database_url, f"UPDATE tlog_pruned SET written_by = '{written_by}' WHERE entry_id = '{young.id}'")
    report = await verify(database_url, tlog, full.resume)
    if written_by is None:
        assert kinds(report) == [("deleted", 30, str(young.id))] and "before its retention" in report.findings[0].detail
    else:
        assert [(f.kind, "1 tombstones appeared" in f.detail) for f in report.findings] == [("deleted", True)]
    assert report.resume is None


async def test_a_lawful_prune_whose_clock_is_behind_is_checked(database_url: str, pool: asyncpg.Pool,
                                                               tlog: TransparencyLog) -> None:
    """A prune run after a verification on a machine whose clock is behind the verifier's dates its tombstone before
    that verification: the next run checks it all the same, and finds it lawful."""
    old = log_entry(50, logged_at=datetime.now(UTC) - timedelta(days=500))
    await accesslog.commit(pool, old)
    await tlog.drain()
    full = await verify(database_url, tlog)
    assert full.resume is not None
    behind = full.resume.verified_at - timedelta(minutes=10)
    assert [p.entry_id for p in await prune(pool, now=behind, default_retention="P1Y")] == [str(old.id)]
    report = await verify(database_url, tlog, full.resume)
    assert report.ok, report.findings
    assert [p.entry_id for p in report.pruned] == [str(old.id)]
    again = await verify(database_url, tlog, report.resume)
    assert again.ok, again.findings


async def test_a_lawful_prune_racing_the_verification_is_checked_by_the_next(database_url: str, pool: asyncpg.Pool,
                                                                            tlog: TransparencyLog) -> None:
    """A prune still running when a verification takes its snapshot: that run does not see its tombstone, which is
    dated before it (`log prune` takes its time before it writes), and it commits after. The next run checks it, and
    finds nothing wrong: the tombstone was written by a transaction the first run's horizon did not reach."""
    old = log_entry(50, logged_at=datetime.now(UTC) - timedelta(days=500))
    await accesslog.commit(pool, old)
    await tlog.drain()
    full = await verify(database_url, tlog)
    assert full.resume is not None
    # the prune writes the tombstone, then waits to delete the row, which is locked here
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM access_log WHERE id = $1 FOR UPDATE", old.id)
            pruning = asyncio.create_task(prune(pool, now=datetime.now(UTC), default_retention="P1Y"))
            waiting = ("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock' AND query LIKE 'DELETE FROM access_log%')")
            for _ in range(200):
                if await pool.fetchval(waiting):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the prune never waited for the row")
            assert await pool.fetchval("SELECT count(*) FROM tlog_pruned") == 0  # not committed
            during = await verify(database_url, tlog, full.resume)
    finally:
        await holder.close()
    assert [p.entry_id for p in await pruning] == [str(old.id)]
    assert during.ok and during.pruned == [] and during.resume is not None
    assert during.resume.verified_at > (await pool.fetchval("SELECT pruned_at FROM tlog_pruned"))
    report = await verify(database_url, tlog, during.resume)
    assert report.ok, report.findings
    assert [p.entry_id for p in report.pruned] == [str(old.id)]


@pytest.mark.parametrize("moved", ["database", "timeline", "horizon", "format"])
async def test_a_state_from_another_cluster_checks_every_tombstone(database_url: str, pool: asyncpg.Pool,
                                                                   tlog: TransparencyLog, moved: str) -> None:
    """A horizon orders the transactions of one cluster on one timeline only: with the log moved to another cluster
    (logical replication, a restored dump), restored to an earlier point (a new timeline, whose transaction ids are
    handed out again), behind the recorded horizon (a standby), or a state recorded before tombstones had one, the
    next run checks every tombstone below, and holds no count against the state."""
    old = log_entry(50, logged_at=datetime.now(UTC) - timedelta(days=500))
    await accesslog.commit(pool, old)
    await tlog.drain()
    await prune(pool, now=datetime.now(UTC), default_retention="P1Y")
    full = await verify(database_url, tlog)
    assert full.ok and full.resume is not None
    if moved == "format":
        raw = full.resume.to_json()
        del raw["database"], raw["horizon"]
        state = Resume.from_json(raw)
    elif moved == "database":
        state = replace(full.resume, database="7000000000000000000/1", tombstones=full.resume.tombstones + 5)
    elif moved == "timeline":
        system, timeline = full.resume.database.split("/")
        assert (system, int(timeline)) == tuple(await pool.fetchrow(
            "SELECT (pg_control_system()).system_identifier::text, (pg_control_checkpoint()).timeline_id"))
        state = replace(full.resume, database=f"{system}/{int(timeline) + 1}", tombstones=full.resume.tombstones + 5)
    else:
        state = replace(full.resume, horizon=2**62, tombstones=full.resume.tombstones + 5)
    report = await verify(database_url, tlog, state)
    assert report.ok, report.findings
    assert [p.entry_id for p in report.pruned] == [str(old.id)]


async def test_a_state_that_is_not_its_checkpoints_tree_is_refused(database_url: str, pool: asyncpg.Pool,
                                                                  tlog: TransparencyLog) -> None:
    full = await verify(database_url, tlog)
    assert full.resume is not None
    forged = replace(full.resume, edge=(b"\x00" * 32, *full.resume.edge[1:]))
    assert [f.kind for f in (await verify(database_url, tlog, forged)).findings] == ["checkpoint"]
    # a state from another log's key: its checkpoint does not verify with ours
    other = TransparencyLog(pool, signer(), max_merge_delay=60)
    foreign = replace(full.resume, checkpoint=other.signer.sign_checkpoint(30, b"\x01" * 32))
    assert [f.kind for f in (await verify(database_url, tlog, foreign)).findings] == ["checkpoint"]
    # a log now shorter than what was verified
    beyond = replace(full.resume, size=31)
    assert (await verify(database_url, tlog, beyond)).findings[0].kind == "checkpoint"


async def test_the_command_records_and_resumes(database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog,
                                               tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DLNUF_STATE_DIR": str(tmp_path), "DLNUF_LOG_FORMAT": "json"}
        env.pop("DATABASE_URL", None)
        return subprocess.run([sys.executable, "-m", "broker", "log", "verify", "--database-url", database_url,
                               "--vkey", tlog.signer.verifier.vkey(), "--state", str(tmp_path / "state.json"),
                               *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)

    first = run()
    assert first.returncode == 0 and "30 of 30 entries and" in first.stdout, first.stderr
    await commit_entries(pool, 3)
    await tlog.drain()
    second = run()
    assert second.returncode == 0 and "3 of 33 entries (incremental, from 30)" in second.stdout, second.stderr
    assert json.loads((tmp_path / "state.json").read_text())["size"] == 33
    again = run("--full")
    assert again.returncode == 0 and "33 of 33 entries and" in again.stdout


async def test_an_entry_late_since_the_last_verification_is_named(database_url: str, pool: asyncpg.Pool,
                                                                  tlog: TransparencyLog) -> None:
    """Resuming, only the entries logged since the last run (less the merge delay and a margin) are looked at for
    lateness, not the whole log: one logged then, and never integrated, is still named."""
    full = await verify(database_url, tlog, max_merge_delay=60)
    assert full.ok and full.resume is not None
    stuck = log_entry(99, logged_at=datetime.now(UTC) - timedelta(minutes=5))
    await accesslog.commit(pool, stuck)  # and no round integrates it
    report = await verify(database_url, tlog, full.resume, max_merge_delay=60)
    assert kinds(report) == [("late", None, str(stuck.id))]


async def executed(conn: asyncpg.Connection, name: str, types: str, args: str, mode: str) -> dict[str, object]:
    """The EXPLAIN ANALYZE plan of statement `name` run with `args` (SQL literals) under `mode`: PREPARE and EXECUTE
    by name, as an EXPLAIN sent with its parameters bound would always be planned for their values."""
    statement = _q()[name].strip().rstrip(";")
    async with conn.transaction():
        await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
        await conn.execute(f"PREPARE incremental({types}) AS {statement}")
        try:
            plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE incremental({args})")
        finally:
            await conn.execute("DEALLOCATE incremental")
    found: dict[str, object] = plan[0]["Plan"]
    return found


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
async def test_an_incremental_pass_reads_what_came_since_not_the_log(pool: asyncpg.Pool, tlog: TransparencyLog,
                                                                     mode: str) -> None:
    """`log verify --state` looks for late entries among those logged since its last run, and counts the queue's
    lines without an index: both read what came since, not the 3,000 older entries of the log, whether PostgreSQL
    plans them for the values given or generic (as it does for a verifier that keeps its connection, after five runs,
    or in sessions that force generic plans). Before, the late entries' range sat under an OR with `IS NULL`, which a
    generic plan only filters with: it read the whole access log and hashed all of tlog_entries; and the queue's index
    check, an anti-join, hashed all of tlog_entries in either plan."""
    spread = datetime.now(UTC) - timedelta(days=65)
    async with pool.acquire() as conn:
        for start in range(0, 3000, 500):  # one every 14 minutes, the last 35 days ago: in earlier months than this
            await accesslog.write(conn, [(log_entry(n, logged_at=spread + timedelta(minutes=14 * n)), None)
                                         for n in range(start, start + 500)])
    integrator = TransparencyLog(pool, tlog.signer, max_merge_delay=60, batch=1000)
    await integrator.drain()
    size = await pool.fetchval("SELECT size FROM tlog_head")
    verified_at = datetime.now(UTC)
    await commit_entries(pool, 5)
    await integrator.drain()
    async with pool.acquire() as conn:
        await accesslog.write(conn, [(log_entry(n), None) for n in range(300)])  # queued, not integrated
    await pool.execute("ANALYZE")
    # logged since: the fixture's 30 (within the hour of margin before the last run), the 5 and the 300
    recent, total = 30 + 5 + 300, await pool.fetchval("SELECT count(*) FROM access_log")
    since = verified_at - timedelta(hours=1)  # as verify_log takes it, with no merge delay: all of them looked at
    async with pool.acquire() as conn:
        late = await executed(conn, "tlog_pending_late_since", "float8, int, timestamptz",
                              f"0, 1000, '{since.isoformat()}'", mode)
        held = await executed(conn, "tlog_held_below", "bigint", str(size), mode)
    # each recent row read once, and its index probed (found for 35 of them; EXPLAIN rounds a probe's rows per loop)
    assert rows_read(late, "access_log") == recent and rows_read(late, "tlog_entries") <= 35
    # tlog_held_below counts every row, by design (index only, one read each); beyond that it reads the 5 lines given
    # since, the queue's 300, and the row of each
    assert (rows_read(held, "tlog_entries"), rows_read(held, "tlog_queue")) == (5, 300)
    assert rows_read(held, "access_log") == total + 5 + 300


async def test_migration_0039_puts_the_tombstones_already_there_below_every_horizon(
        pg_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tombstones written before migration 0039 have no transaction recorded: they get 0, below the horizon of every
    state recorded after it, and later ones the id of the transaction that wrote them. A full pass after the
    migration records them as checked; the next run checks only the tombstones written since."""
    async with migrated_up_to(pg_server, 38, monkeypatch) as dsn:
        pool = await db.create_pool(dsn, min_size=1, max_size=2)
        try:
            tlog = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
            await tlog.ensure_checkpoint()
            first, second = (log_entry(n, logged_at=datetime.now(UTC) - timedelta(days=500)) for n in range(2))
            await accesslog.commit(pool, first)
            await commit_entries(pool, 5)
            await tlog.drain()
            await prune(pool, now=datetime.now(UTC), default_retention="P1Y")
            async with pool.acquire() as conn:
                assert [m.version for m in await db.migrate(conn)] == since(39)
            assert await pool.fetchval("SELECT written_by::text FROM tlog_pruned") == "0"
            full = await verify(dsn, tlog)
            assert full.ok and full.resume is not None and full.resume.tombstones == 1, full.findings
            await accesslog.commit(pool, second)
            await tlog.drain()
            await prune(pool, now=datetime.now(UTC), default_retention="P1Y")
            assert await pool.fetchval("SELECT written_by <> '0' FROM tlog_pruned WHERE entry_id = $1", second.id)
            report = await verify(dsn, tlog, full.resume)
            assert report.ok, report.findings
            # the new tombstone is beyond the verified size: the pass over the new indices checked it
            assert [p.entry_id for p in report.pruned] == [str(second.id)]
        finally:
            await pool.close()


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
async def test_the_tombstones_written_since_are_found_by_index(pool: asyncpg.Pool, tlog: TransparencyLog,
                                                              mode: str) -> None:
    """An incremental pass reads the tombstones written at or above the last run's horizon through the index on
    written_by (migration 0039), not all 2,003 of the log's, and probes the leaf of each, whether PostgreSQL plans it
    for the values given or generic (joined, a generic plan hashed every leaf); counting the tombstones below the
    horizons reads each once."""
    old = datetime.now(UTC) - timedelta(days=730)
    async with pool.acquire() as conn:
        for start in range(0, 2000, 500):
            await accesslog.write(conn, [(log_entry(n, logged_at=old), None) for n in range(start, start + 500)])
    await tlog.drain()
    assert len(await prune(pool, now=datetime.now(UTC), default_retention="P1Y")) == 2000
    horizon = await pool.fetchval("SELECT pg_current_xact_id()")  # above every tombstone so far
    async with pool.acquire() as conn:
        await accesslog.write(conn, [(log_entry(n, logged_at=old), None) for n in range(3)])
    await tlog.drain()
    assert len(await prune(pool, now=datetime.now(UTC), default_retention="P1Y")) == 3
    size = await pool.fetchval("SELECT size FROM tlog_head")
    await pool.execute("ANALYZE")
    async with pool.acquire() as conn:
        fresh = await executed(conn, "tlog_tombstones_after", "xid8, bigint", f"'{horizon}', {size}", mode)
        now = await conn.fetchval("SELECT pg_current_xact_id()")
        counts = await executed(conn, "tlog_tombstone_counts", "xid8, xid8", f"'{horizon}', '{now}'", mode)
    assert rows_read(fresh, "tlog_pruned") == 3 and rows_read(fresh, "tlog_nodes") == 3  # each leaf probed
    # every tombstone once (by index, or a seq scan before the table's first vacuum), those between the horizons twice
    assert rows_read(counts, "tlog_pruned") <= 2003 + 3
