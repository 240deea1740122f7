"""`log verify --state`: an incremental verification starts from the tree a previous run verified, checks only what
came since, and still sees rows or their lines deleted below it, tombstones written or removed since, and a log that
no longer extends the verified tree."""

from __future__ import annotations

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
from tests.tlog.test_partitions import rows_read
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
    assert lawful.resume is not None and lawful.resume.tombstones == 1
    public = leaves.leaf_data(entry_document(young.row()))
    await delete_with_tombstone(database_url, pool, young, pruned_at=datetime.now(UTC), leaf_data=public)
    assert [f.kind for f in (await verify(database_url, tlog, lawful.resume)).findings] == ["deleted"]
    await tamper(database_url, "DELETE FROM tlog_pruned")
    kinds_found = {f.kind for f in (await verify(database_url, tlog, lawful.resume)).findings}
    assert "deleted" in kinds_found and "missing" in kinds_found


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
