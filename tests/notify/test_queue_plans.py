"""The mail queue's statements, which every broker process runs every pass, read the rows they take, not the tables
they take them from, whichever plan PostgreSQL keeps. asyncpg prepares every statement, and after five executions
PostgreSQL may keep a generic plan, made without the parameters' values: with a backlog in the statistics, the
fan-out's hashed the whole access log and every subscription for each 500 lines (a broker that ran without a mail
relay leaves every released entry's line to fan out once one is configured)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from broker.storage import db
from broker.tlog import accesslog
from broker.tlog.accesslog import CITIZEN_RECIPIENT, PREVIEW_PURPOSE, LogEntry
from tests.tlog.test_partitions import executed_plan, migrated_up_to, months_ago, rows_read, since
from tests.tlog.test_tlog import log_entry

MODES = ("force_custom_plan", "force_generic_plan")
FAN_OUT_ARGS = f"500, '{PREVIEW_PURPOSE}', '{CITIZEN_RECIPIENT}'"

SUBSCRIBERS = """
INSERT INTO mail_subscriptions (id, subject_key, address_sealed, mode, created_at, confirmed_at, confirm_before,
                                digest_from)
SELECT gen_random_uuid(), 'subject-' || n, '\\x00', $3, now() - interval '1 year', $4, $5, $6
FROM generate_series($1::int, $2::int - 1) AS n
"""


def _q() -> dict[str, str]:
    return db.queries("broker.notify", "notify.sql")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url, min_size=1, max_size=2)
    yield p
    await p.close()


async def subscribers(pool: asyncpg.Pool, first: int, end: int, mode: str, *, confirmed_at: datetime | None,
                      confirm_before: datetime | None = None, digest_from: datetime | None = None) -> None:
    """Subscriptions of the citizens `subject-<first>` to `subject-<end - 1>` (the address is never read here)."""
    await pool.execute(SUBSCRIBERS, first, end, mode, confirmed_at, confirm_before,
                       digest_from or confirmed_at or datetime.now(UTC))


async def released(pool: asyncpg.Pool, count: int, subjects: int) -> None:
    """`count` released entries of `subjects` citizens, each with its notification line, none fanned out yet."""
    async with pool.acquire() as conn:
        for start in range(0, count, 1000):
            await accesslog.write(conn, [(log_entry(n, subject_key=f"subject-{n % subjects}"), None)
                                         for n in range(start, min(count, start + 1000))])


async def test_fan_out_mails_each_confirmed_subscriber_of_each_access_once(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    await subscribers(pool, 0, 1, "each", confirmed_at=now - timedelta(days=400))
    await subscribers(pool, 1, 2, "weekly", confirmed_at=now - timedelta(days=400))
    await subscribers(pool, 2, 3, "each", confirmed_at=None, confirm_before=now + timedelta(days=1))
    await subscribers(pool, 3, 4, "each", confirmed_at=now + timedelta(hours=1))  # after the access

    def entry(n: int, **kwargs: object) -> LogEntry:
        return log_entry(n, subject_key=f"subject-{n}", **kwargs)  # type: ignore[arg-type]

    told = [entry(0), entry(0, logged_at=months_ago(1))]  # this month's and last month's partition
    preview = entry(0)
    preview.purpose, preview.recipient = PREVIEW_PURPOSE, CITIZEN_RECIPIENT
    untold = [preview, entry(0, released=False), entry(1), entry(2), entry(3), entry(4)]
    async with pool.acquire() as conn:
        await accesslog.write(conn, [(e, None) for e in told + untold])
    # the same id in another month is another entry (migration 0034): not the one to tell
    twin = entry(0, logged_at=months_ago(2))
    twin.id = told[0].id
    await accesslog.commit(pool, twin)
    await pool.execute("UPDATE notification_outbox SET mail_fanned_out_at = now() WHERE logged_at = $1",
                       twin.logged_at)

    row = await pool.fetchrow(_q()["mail_fan_out"], 500, PREVIEW_PURPOSE, CITIZEN_RECIPIENT)
    assert (row["fanned_out"], row["queued"]) == (7, 2)  # every released entry's line, 2 mails
    mails = await pool.fetch("SELECT s.subject_key, m.kind, m.entry_id, m.logged_at FROM mail_outbox m "
                             "JOIN mail_subscriptions s ON s.id = m.subscription_id")
    assert {tuple(m) for m in mails} == {("subject-0", "access", e.id, e.logged_at) for e in told}
    row = await pool.fetchrow(_q()["mail_fan_out"], 500, PREVIEW_PURPOSE, CITIZEN_RECIPIENT)
    assert (row["fanned_out"], row["queued"]) == (0, 0)  # each line once


async def test_fan_out_reads_the_lines_it_takes_and_their_entries_only(pool: asyncpg.Pool) -> None:
    """With 20,000 lines to fan out in the statistics, the former statement read the whole access log (20,000 rows)
    and the whole outbox (21,000 with the lines taken) for 500 lines, in a custom or a generic plan (checked)."""
    await released(pool, 20_000, 20_000)
    await subscribers(pool, 0, 5_000, "each", confirmed_at=datetime.now(UTC) - timedelta(days=1))
    await subscribers(pool, 5_000, 10_000, "weekly", confirmed_at=datetime.now(UTC) - timedelta(days=1))
    await pool.execute("ANALYZE")
    async with pool.acquire() as conn:
        for mode in MODES:
            plan = await executed_plan(conn, _q()["mail_fan_out"], FAN_OUT_ARGS, mode)
            # one probe per line taken: its entry, then its subject's subscription
            assert rows_read(plan, "access_log") <= 500, (mode, plan)
            assert rows_read(plan, "mail_subscriptions") <= 500, (mode, plan)
            # the lines taken, then marked (each is read once more where it is updated)
            assert rows_read(plan, "notification_outbox") <= 3 * 500, (mode, plan)


async def test_digests_and_the_purge_read_the_subscriptions_due_only(pool: asyncpg.Pool) -> None:
    """Indexed by migration 0037. Before, every subscription was read, in a custom or a generic plan: 10,015 rows for
    the purge, 20,040 for the digests (10,035 to find the due ones, 10,005 again to move their week by a join);
    10,035 with either the index or the move by id alone (checked)."""
    now = datetime.now(UTC)
    confirmed = now - timedelta(days=100)
    await subscribers(pool, 0, 10, "weekly", confirmed_at=confirmed, digest_from=now - timedelta(days=8))
    await subscribers(pool, 10, 5_010, "weekly", confirmed_at=confirmed, digest_from=now - timedelta(days=3))
    await subscribers(pool, 5_010, 9_010, "each", confirmed_at=confirmed)
    await subscribers(pool, 9_010, 10_010, "each", confirmed_at=None, confirm_before=now + timedelta(days=1))
    await subscribers(pool, 10_010, 10_015, "weekly", confirmed_at=None, confirm_before=now - timedelta(hours=1))
    await pool.execute("ANALYZE mail_subscriptions")
    async with pool.acquire() as conn:
        for mode in MODES:
            plan = await executed_plan(conn, _q()["mail_schedule_digests"], f"'{now.isoformat()}', 500", mode)
            # each due subscription: locked where the index finds it, found by id, moved
            assert rows_read(plan, "mail_subscriptions") <= 3 * 10, (mode, plan)
            plan = await executed_plan(conn, _q()["subscriptions_purge_unconfirmed"], f"'{now.isoformat()}'", mode)
            assert rows_read(plan, "mail_subscriptions") <= 5, (mode, plan)

    due = {r["id"]: r["digest_from"] for r in await pool.fetch(
        "SELECT id, digest_from FROM mail_subscriptions WHERE mode = 'weekly' AND confirmed_at IS NOT NULL "
        "AND digest_from < $1", now - timedelta(days=7))}
    assert len(await pool.fetch(_q()["mail_schedule_digests"], now, 500)) == 10
    digests = await pool.fetch("SELECT subscription_id, period_start, period_end FROM mail_outbox")
    assert {(d["subscription_id"], d["period_start"], d["period_end"]) for d in digests} == {
        (i, start, now) for i, start in due.items()}
    assert await pool.fetchval("SELECT count(*) FROM mail_subscriptions WHERE digest_from = $1", now) == 10
    assert await pool.fetch(_q()["mail_schedule_digests"], now, 500) == []  # their next week has only begun
    assert await pool.execute(_q()["subscriptions_purge_unconfirmed"], now) == "DELETE 5"
    assert await pool.fetchval("SELECT count(*) FROM mail_subscriptions WHERE confirmed_at IS NULL") == 1_000



async def test_the_claim_reads_the_mails_it_leases_even_with_a_backlog(pool: asyncpg.Pool) -> None:
    """A relay down for hours leaves a backlog, each mail rescheduled by its own failure. With 20,000 mails due in the
    statistics, the generic plan of the former claim hashed the whole mail outbox to find its 20 by id: 20,053 rows
    read (checked), 73 after, at most 60 on migration 0040's index."""
    await subscribers(pool, 0, 1, "each", confirmed_at=datetime.now(UTC) - timedelta(days=1))
    await pool.execute("INSERT INTO mail_outbox (subscription_id, kind, attempts, last_error, next_attempt_at) "
                       "SELECT id, 'confirmation', 3, 'relay unreachable', now() - n * interval '1 ms' "
                       "FROM mail_subscriptions, generate_series(1, 20000) AS n")
    await pool.execute("ANALYZE mail_outbox")
    claim = _q()["mail_claim"]
    async with pool.acquire() as conn:
        for mode in MODES:
            plan = await executed_plan(conn, claim, "20, 105", mode)
            # each mail: found in the due index (in the claim's order since migration 0040: before, the sort on
            # (next_attempt_at, id) read up to 32 ahead) and locked, found by id, leased
            assert rows_read(plan, "mail_outbox") <= 3 * 20, (mode, plan)
    oldest = await pool.fetch("SELECT id FROM mail_outbox ORDER BY next_attempt_at LIMIT 40")
    first, then = await pool.fetch(claim, 20, 105), await pool.fetch(claim, 20, 105)
    assert {r["id"] for r in first} | {r["id"] for r in then} == {r["id"] for r in oldest}  # due first, once
    assert {r["attempts"] for r in first + then} == {4}


async def test_the_purge_of_sent_mails_reads_those_it_deletes(pool: asyncpg.Pool) -> None:
    """Indexed by migration 0037: before, the purge read the whole mail outbox, 30 days of mails, every minute in
    every process (20,150 rows here, in a custom or a generic plan; checked), for the 50 it deletes."""
    now = datetime.now(UTC)
    await subscribers(pool, 0, 1, "each", confirmed_at=now - timedelta(days=100))
    done = ("INSERT INTO mail_outbox (subscription_id, kind, created_at, next_attempt_at, delivered_at, gave_up_at) "
            "SELECT id, 'confirmation', $1::timestamptz - n * $2::interval, now(), "
            "       CASE WHEN NOT $3 THEN now() END, CASE WHEN $3 THEN now() END "
            "FROM mail_subscriptions, generate_series(1, $4) AS n")
    await pool.execute(done, now, timedelta(minutes=2), False, 20_000)  # sent over the last 28 days
    await pool.execute(done, now - timedelta(days=31), timedelta(seconds=1), False, 40)  # sent, forgotten now
    await pool.execute(done, now - timedelta(days=31), timedelta(seconds=1), True, 10)  # given up, likewise
    await pool.execute("INSERT INTO mail_outbox (subscription_id, kind, created_at) SELECT id, 'confirmation', $1 "
                       "FROM mail_subscriptions, generate_series(1, 100)", now - timedelta(days=40))  # still due
    await pool.execute("ANALYZE mail_outbox")
    cutoff = f"'{(now - timedelta(days=30)).isoformat()}'"
    async with pool.acquire() as conn:
        for mode in MODES:
            plan = await executed_plan(conn, _q()["mail_purge_delivered"], cutoff, mode)
            assert rows_read(plan, "mail_outbox") <= 50, (mode, plan)
    assert await pool.execute(_q()["mail_purge_delivered"], now - timedelta(days=30)) == "DELETE 50"
    assert await pool.fetchval("SELECT count(*) FROM mail_outbox") == 20_100

async def test_migration_0037_indexes_the_subscriptions_already_there(pg_server: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC)
    async with migrated_up_to(pg_server, 36, monkeypatch) as dsn:
        pool = await db.create_pool(dsn, min_size=1, max_size=1)
        try:
            confirmed = now - timedelta(days=100)
            await subscribers(pool, 0, 10, "weekly", confirmed_at=confirmed, digest_from=now - timedelta(days=8))
            await subscribers(pool, 10, 5_010, "weekly", confirmed_at=confirmed, digest_from=now - timedelta(days=3))
            await subscribers(pool, 5_010, 5_015, "each", confirmed_at=None, confirm_before=now - timedelta(hours=1))
            async with pool.acquire() as conn:
                assert [m.version for m in await db.migrate(conn)] == since(37)
                await conn.execute("ANALYZE mail_subscriptions")
                plan = await executed_plan(conn, _q()["mail_schedule_digests"], f"'{now.isoformat()}', 500",
                                           "force_generic_plan")
                assert rows_read(plan, "mail_subscriptions") <= 3 * 10, plan
                plan = await executed_plan(conn, _q()["subscriptions_purge_unconfirmed"], f"'{now.isoformat()}'",
                                           "force_generic_plan")
                assert rows_read(plan, "mail_subscriptions") <= 5, plan
        finally:
            await pool.close()


GROUP = 500
CLAIMS = (("notification_outbox", "broker.tlog", "tlog.sql", "outbox_claim", 50),
          ("mail_outbox", "broker.notify", "notify.sql", "mail_claim", 20))
"""Each claim: its table, where the statement is, its name, and a batch (the claim's LIMIT)."""


async def test_the_claims_read_their_batch_of_lines_that_share_a_time(pg_server: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines written in one transaction share next_attempt_at (its default, now()): the released entries of a group
    commit, the mails of a fan-out pass. The claims take them by (next_attempt_at, id). On the due indexes of
    next_attempt_at alone the plan read the whole group to sort it (the 500 of a fan-out pass, checked below before
    migrating, custom and generic plans); on migration 0040's, of (next_attempt_at, id), the lines it takes."""
    async with migrated_up_to(pg_server, 39, monkeypatch) as dsn:
        pool = await db.create_pool(dsn, min_size=1, max_size=1)
        try:
            await subscribers(pool, 0, GROUP, "each", confirmed_at=datetime.now(UTC) - timedelta(days=1))
            await released(pool, GROUP, GROUP)  # one statement: the webhook's lines
            row = await pool.fetchrow(_q()["mail_fan_out"], GROUP, PREVIEW_PURPOSE, CITIZEN_RECIPIENT)
            assert row["queued"] == GROUP  # one statement: the mails
            # and lines leased or rescheduled, due later: enough that each line taken is found again by its id
            await pool.execute("INSERT INTO notification_outbox (entry_id, logged_at, next_attempt_at, "
                               "mail_fanned_out_at) SELECT gen_random_uuid(), now(), now() + interval '1 hour', now() "
                               "FROM generate_series(1, 10000)")
            await pool.execute("INSERT INTO mail_outbox (subscription_id, kind, next_attempt_at) "
                               "SELECT id, 'confirmation', now() + interval '1 hour' "
                               "FROM mail_subscriptions, generate_series(1, 20)")
            async with pool.acquire() as conn:
                for table, *_ in CLAIMS:
                    assert await conn.fetchval(f"SELECT count(DISTINCT next_attempt_at) FROM {table} "
                                               "WHERE next_attempt_at <= now()") == 1
                    await conn.execute(f"ANALYZE {table}")

                async def reads() -> dict[tuple[str, str], int]:
                    found = {}
                    for table, package, file, name, batch in CLAIMS:
                        claim = db.queries(package, file)[name]
                        for mode in MODES:
                            plan = await executed_plan(conn, claim, f"{batch}, 60", mode)
                            found[name, mode] = rows_read(plan, table)
                    return found

                before = await reads()
                assert all(n >= GROUP for n in before.values()), before
                assert [m.version for m in await db.migrate(conn)] == since(40)
                after = await reads()
                # each line taken: found in the due index and locked, found by id, leased
                batches = {name: batch for *_, name, batch in CLAIMS}
                assert all(n <= 3 * batches[name] for (name, _), n in after.items()), after
                for table, package, file, name, batch in CLAIMS:
                    first = await conn.fetch(f"SELECT id FROM {table} WHERE next_attempt_at <= now() ORDER BY id "
                                             f"LIMIT {batch}")
                    taken = await conn.fetch(db.queries(package, file)[name], batch, 60)
                    assert sorted(r["id"] for r in taken) == [r["id"] for r in first]  # in order of id
        finally:
            await pool.close()


async def test_migration_0040_keeps_an_index_built_beforehand_and_refuses_an_invalid_one(
        pg_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/operations.md: on a large outbox, build the claim's index concurrently before migrating. One that a
    failed concurrent build left invalid is never used, nor one of that name on other columns, and the migration
    drops the old index: it refuses both. An old index dropped beforehand is no obstacle."""
    async with migrated_up_to(pg_server, 39, monkeypatch) as dsn:
        conn = await db.connect(dsn)
        try:
            for table in ("notification_outbox", "mail_outbox"):
                await conn.execute(f"CREATE INDEX CONCURRENTLY {table}_claim ON {table} (next_attempt_at, id) "
                                   "WHERE delivered_at IS NULL AND gave_up_at IS NULL")
            built = await conn.fetchval("SELECT 'notification_outbox_claim'::regclass::oid")
            # what a failed CREATE INDEX CONCURRENTLY leaves
            await conn.execute("UPDATE pg_index SET indisvalid = false "
                               "WHERE indexrelid = 'mail_outbox_claim'::regclass")
            with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="drop it, then migrate again"):
                await db.migrate(conn)
            await conn.execute("DROP INDEX mail_outbox_claim")
            # valid, but not the index the claim needs (IF NOT EXISTS would have kept it, and dropped the old one)
            await conn.execute("CREATE INDEX mail_outbox_claim ON mail_outbox (created_at)")
            with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="drop it, then migrate again"):
                await db.migrate(conn)
            assert await conn.fetchval("SELECT to_regclass('mail_outbox_due') IS NOT NULL")  # nothing dropped
            await conn.execute("DROP INDEX mail_outbox_claim")
            # the old indexes dropped concurrently beforehand, as docs/operations.md allows
            await conn.execute("DROP INDEX CONCURRENTLY mail_outbox_due")
            assert [m.version for m in await db.migrate(conn)] == since(40)
            assert await conn.fetchval("SELECT 'notification_outbox_claim'::regclass::oid") == built
            indexes = {r["indexname"]: r["indexdef"] for r in await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('notification_outbox', 'mail_outbox') "
                "AND indexdef LIKE '%next_attempt_at%'")}
            assert sorted(indexes) == ["mail_outbox_claim", "notification_outbox_claim"]
            assert all(d.endswith("(next_attempt_at, id) WHERE ((delivered_at IS NULL) AND (gave_up_at IS NULL))")
                       for d in indexes.values()), indexes
        finally:
            await conn.close()
