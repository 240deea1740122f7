"""`log verify` holds every tombstone against the retention its entry carried: a pruning before the retention ran
out, or a tombstone that does not match the leaf logged at its index, is a deletion. Tampering is done as the
server's superuser with triggers off (session_replication_role = replica), as someone holding the database would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from broker.storage import db
from broker.tlog import accesslog, leaves
from broker.tlog.log import TransparencyLog, entry_document, prune
from broker.tlog.verify import add_duration
from tests.tlog.test_tlog import log_entry, signer
from tests.tlog.test_tlog_verify import SIZE, commit_entries, kinds, tamper, verify

DAY = timedelta(days=1)


@pytest.fixture
async def tlog(pool: asyncpg.Pool) -> TransparencyLog:
    """A log of SIZE v2 entries."""
    t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
    await t.ensure_checkpoint()
    await commit_entries(pool, SIZE)
    await t.drain()
    return t


async def commit_integrated(pool: asyncpg.Pool, tlog: TransparencyLog, *entries: accesslog.LogEntry) -> None:
    for e in entries:
        await accesslog.commit(pool, e)
    await tlog.drain()


def quoted(data: bytes) -> str:
    return "'\\x" + data.hex() + "'::bytea"


async def delete_with_tombstone(database_url: str, pool: asyncpg.Pool, entry: accesslog.LogEntry, *,
                                pruned_at: datetime, leaf_data: bytes | None = None,
                                logged_at: datetime | None = None, entry_id: str | None = None) -> None:
    """Remove the row behind the triggers' back and leave a tombstone that says what we choose (the entry's line in
    tlog_entries stays, as `log prune` leaves it)."""
    index = await pool.fetchval("SELECT log_index FROM tlog_entries WHERE entry_id = $1", entry.id)
    data = "NULL" if leaf_data is None else quoted(leaf_data)
    await tamper(database_url,
                 f"DELETE FROM access_log WHERE id = '{entry.id}'",
                 "INSERT INTO tlog_pruned (log_index, entry_id, logged_at, habilitation_id, pruned_at, leaf_data) "
                 f"VALUES ({index}, '{entry_id or entry.id}', '{(logged_at or entry.logged_at).isoformat()}', NULL, "
                 f"'{pruned_at.isoformat()}', {data})")


async def test_lawful_prunings_of_both_formats_verify(database_url: str, pool: asyncpg.Pool) -> None:
    tlog = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
    await tlog.ensure_checkpoint()
    old_v1 = log_entry(1, logged_at=datetime.now(UTC) - 400 * DAY, version=1)
    old_v2 = log_entry(2, logged_at=datetime.now(UTC) - 400 * DAY)
    await commit_integrated(pool, tlog, old_v1, log_entry(3, version=1), old_v2, log_entry(4))
    await prune(pool, now=datetime.now(UTC), default_retention="P1Y")
    report = await verify(database_url, tlog, now=datetime.now(UTC))
    assert report.ok, report.findings
    assert {p.entry_id for p in report.pruned} == {str(old_v1.id), str(old_v2.id)}
    # the v2 tombstone kept the public leaf the tree hashes
    kept = await pool.fetchval("SELECT leaf_data FROM tlog_pruned WHERE entry_id = $1", old_v2.id)
    assert bytes(kept) == leaves.leaf_data(entry_document(old_v2.row()))


async def test_a_v2_entry_pruned_before_its_retention_is_a_deletion(database_url: str, pool: asyncpg.Pool,
                                                                   tlog: TransparencyLog) -> None:
    young = log_entry(3, logged_at=datetime.now(UTC) - 10 * DAY)
    await commit_integrated(pool, tlog, young)
    public = leaves.leaf_data(entry_document(young.row()))
    await delete_with_tombstone(database_url, pool, young, pruned_at=datetime.now(UTC), leaf_data=public)
    report = await verify(database_url, tlog, now=datetime.now(UTC))
    [finding] = report.findings
    assert (finding.kind, finding.index, finding.entry_id) == ("deleted", SIZE, str(young.id))
    assert "before its retention (P1Y" in finding.detail


async def test_a_v1_entry_pruned_before_its_retention_is_a_deletion(database_url: str, pool: asyncpg.Pool) -> None:
    # a log whose first entries are v1 (written before v2), then v2: one tree
    t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
    await t.ensure_checkpoint()
    v1 = [log_entry(n, version=1, logged_at=datetime.now(UTC) - 30 * DAY) for n in range(3)]
    await commit_integrated(pool, t, *v1, log_entry(9))
    await delete_with_tombstone(database_url, pool, v1[1], pruned_at=datetime.now(UTC))
    report = await verify(database_url, t, now=datetime.now(UTC))
    assert kinds(report) == [("deleted", 1, str(v1[1].id))]
    # backdating the v1 tombstone's own time hides it: a v1 leaf carries no retention (why v2 carries it)
    await tamper(database_url, "UPDATE tlog_pruned SET logged_at = now() - interval '2 years' WHERE log_index = 1")
    assert (await verify(database_url, t, now=datetime.now(UTC))).ok


async def test_a_forged_public_leaf_is_a_deletion(database_url: str, pool: asyncpg.Pool,
                                                 tlog: TransparencyLog) -> None:
    young = log_entry(4, logged_at=datetime.now(UTC) - 10 * DAY)
    await commit_integrated(pool, tlog, young)
    backdated = dict(entry_document(young.row()), logged_at=leaves.timestamp(datetime.now(UTC) - 800 * DAY))
    forged = leaves.leaf_data(backdated)
    await delete_with_tombstone(database_url, pool, young, pruned_at=datetime.now(UTC), leaf_data=forged,
                                logged_at=datetime.now(UTC) - 800 * DAY)
    [finding] = (await verify(database_url, tlog, now=datetime.now(UTC))).findings
    assert finding.kind == "deleted" and "not the leaf logged" in finding.detail


async def test_a_tombstone_that_names_another_time_or_entry_is_a_deletion(database_url: str, pool: asyncpg.Pool,
                                                                         tlog: TransparencyLog) -> None:
    young, other = log_entry(5, logged_at=datetime.now(UTC) - 10 * DAY), log_entry(6)
    await commit_integrated(pool, tlog, young, other)
    public = leaves.leaf_data(entry_document(young.row()))
    # the true public leaf, but the tombstone's own columns backdated to look expired
    await delete_with_tombstone(database_url, pool, young, pruned_at=datetime.now(UTC), leaf_data=public,
                                logged_at=datetime.now(UTC) - 800 * DAY)
    [finding] = (await verify(database_url, tlog, now=datetime.now(UTC))).findings
    assert finding.kind == "deleted" and "another entry or time" in finding.detail


async def test_a_tombstone_dated_in_the_future_is_a_deletion(database_url: str, pool: asyncpg.Pool,
                                                            tlog: TransparencyLog) -> None:
    young = log_entry(7, logged_at=datetime.now(UTC) - 10 * DAY)
    await commit_integrated(pool, tlog, young)
    public = leaves.leaf_data(entry_document(young.row()))
    await delete_with_tombstone(database_url, pool, young, pruned_at=datetime.now(UTC) + 400 * DAY,
                                leaf_data=public)
    [finding] = (await verify(database_url, tlog, now=datetime.now(UTC))).findings
    assert finding.kind == "deleted" and "after this verification" in finding.detail


async def test_a_v2_entry_given_a_v1_tombstone_is_a_deletion(database_url: str, pool: asyncpg.Pool,
                                                            tlog: TransparencyLog) -> None:
    """Without the public leaf the retention could not be checked: after the first v2 leaf, that is refused."""
    young = log_entry(8, logged_at=datetime.now(UTC) - 10 * DAY)
    await commit_integrated(pool, tlog, young)
    await delete_with_tombstone(database_url, pool, young, pruned_at=datetime.now(UTC),
                                logged_at=datetime.now(UTC) - 800 * DAY)
    [finding] = (await verify(database_url, tlog, now=datetime.now(UTC))).findings
    assert finding.kind == "deleted" and "without the public leaf" in finding.detail


@pytest.mark.parametrize(("start", "duration", "expected"), [
    ("2026-01-31T10:00:00+00:00", "P1M", "2026-02-28T10:00:00+00:00"),
    ("2024-02-29T00:00:00+00:00", "P1Y", "2025-02-28T00:00:00+00:00"),
    ("2026-11-15T23:30:00+00:00", "P1Y2M1W3D", "2028-01-25T23:30:00+00:00"),
])
def test_retention_arithmetic_is_postgresqls(start: str, duration: str, expected: str) -> None:
    assert add_duration(datetime.fromisoformat(start), duration) == datetime.fromisoformat(expected)


async def test_retention_arithmetic_agrees_with_the_database(pool: asyncpg.Pool) -> None:
    for start in ("2026-01-31T10:00:00Z", "2024-02-29T00:00:00Z", "2026-03-29T01:30:00Z"):
        for duration in ("P1M", "P1Y", "P6M", "P2W", "P1Y1M1D", "P400D"):
            moment = datetime.fromisoformat(start)
            db_value = await pool.fetchval("SELECT ($1::timestamptz AT TIME ZONE 'UTC' + $2::text::interval) "
                                           "AT TIME ZONE 'UTC'", moment, duration)
            assert add_duration(moment, duration) == db_value, (start, duration)



async def test_prune_and_verify_agree_on_a_server_outside_utc(database_url: str, pool: asyncpg.Pool,
                                                              tlog: TransparencyLog) -> None:
    """An entry logged at 12:00Z the day before clocks change in Paris, kept one day: due at 12:00Z, for `log prune`
    (in SQL) as for `log verify` (in Python). In the server's zone, prune took it as due an hour early, after 11:00Z
    (at 11:45Z, one Paris day before is 12:45Z), and verify reported its tombstone as a deletion before its
    retention."""
    await pool.execute(f"ALTER DATABASE \"{await pool.fetchval('SELECT current_database()')}\" "
                       "SET TimeZone = 'Europe/Paris'")
    logged = datetime(2026, 3, 28, 12, tzinfo=UTC)
    entry = log_entry(40, logged_at=logged)
    entry.default_retention = "P1D"
    await commit_integrated(pool, tlog, entry)
    paris = await db.create_pool(database_url, min_size=1, max_size=1)  # sessions opened since the server's change
    try:
        assert await prune(paris, now=datetime(2026, 3, 29, 11, 45, tzinfo=UTC), default_retention="P1Y") == []
        assert [p.entry_id for p in await prune(paris, now=datetime(2026, 3, 29, 12, 1, tzinfo=UTC),
                                                default_retention="P1Y")] == [str(entry.id)]
    finally:
        await paris.close()
    report = await verify(database_url, tlog, now=datetime.now(UTC))
    assert report.ok, report.findings
    assert [p.entry_id for p in report.pruned] == [str(entry.id)]
