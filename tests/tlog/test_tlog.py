"""The transparency log on a real PostgreSQL: sequencing, the stored tree, checkpoints, immutability, pruning.

Entries are committed through `accesslog.commit`, as the pipeline commits them, and integrated by
`TransparencyLog.integrate`, as every broker process does.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.config import ConfigError, load_config
from broker.registry import Habilitation, LegalBasis
from broker.storage import db
from broker.tlog import accesslog, checkpoint, leaves, merkle, partitions
from broker.tlog.accesslog import LogEntry
from broker.tlog.log import (
    BeyondTree,
    JournalFilter,
    NoteKeyError,
    NoteSigner,
    NotYetIntegrated,
    PgNodeStore,
    TransparencyLog,
    UnknownEntry,
    entry_document,
    leaf_of,
    load_or_create_note_key,
    prune,
    write_nodes,
)
from broker.tlog.verify import VerificationError, verify_promise, verify_receipt

ORIGIN = "dlnuf.test/log"
CONSUMER = "21750001600019"
SUBJECT_KEY = "ab" * 32


def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, Ed25519PrivateKey.generate())


def log_entry(n: int = 0, *, released: bool = True, subject_key: str | None = SUBJECT_KEY,
              logged_at: datetime | None = None, consumer: str = CONSUMER,
              dataset: str = "quotient_familial", version: int = leaves.V2) -> LogEntry:
    """An entry as the pipeline fills it, in leaf format `version` (v1: as brokers wrote before v2)."""
    entry = LogEntry(request_id=str(uuid.uuid4()), leaf_version=version)
    entry.consumer, entry.kid, entry.dataset, entry.dataset_version = consumer, f"{consumer}-ed25519", dataset, 1
    entry.purpose, entry.recipient = "tarification-restauration-scolaire", consumer
    entry.fields_requested = ("quotient_familial", "enfants")
    entry.subject_key = subject_key
    entry.latency_ms = 12.5 + n / 7
    if logged_at is not None:
        entry.logged_at = logged_at
    if released:
        entry.outcome, entry.http_status = "released", 200
        entry.fields_released = entry.fields_requested
        entry.record_payload(f'{{"quotient_familial":{n}}}'.encode())
    else:
        entry.outcome, entry.http_status = "refused", 403
        entry.problem_type = "https://dlnuf.org/problems/not-authorized"
    return entry


async def commit_entries(pool: asyncpg.Pool, count: int, **kwargs: object) -> list[LogEntry]:
    entries = [log_entry(n, released=n % 3 != 2, **kwargs) for n in range(count)]  # type: ignore[arg-type]
    for e in entries:
        await accesslog.commit(pool, e)
    return entries


@pytest.fixture
async def tlog(pool: asyncpg.Pool) -> TransparencyLog:
    t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
    await t.ensure_checkpoint()
    return t


async def indices(pool: asyncpg.Pool) -> list[int | None]:
    return [r["log_index"] for r in await pool.fetch(
        "SELECT x.log_index FROM access_log a LEFT JOIN tlog_entries x ON x.entry_id = a.id ORDER BY a.seq")]


async def test_a_new_log_publishes_the_empty_tree(tlog: TransparencyLog) -> None:
    latest = await tlog.latest_checkpoint()
    assert latest is not None and latest.size == 0
    signed = checkpoint.verify_checkpoint(latest.note, tlog.signer.verifier, origin=ORIGIN)
    assert signed.root == merkle.EMPTY_ROOT
    await tlog.ensure_checkpoint()  # idempotent
    assert [c.size for c in await tlog.checkpoints_after(-1, 10)] == [0]


async def test_rows_get_contiguous_indices_in_commit_order_and_the_root_is_signed(
        pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    entries = await commit_entries(pool, 17)
    assert await tlog.integrate() == 7  # one batch
    assert await tlog.drain() == 10
    assert await indices(pool) == list(range(17))
    leaves = [leaf_of(entry_document(e.row())) for e in entries]
    latest = await tlog.latest_checkpoint()
    assert latest is not None and latest.size == 17
    assert checkpoint.verify_checkpoint(latest.note, tlog.signer.verifier).root == merkle.root(leaves)
    # a checkpoint per round, all kept, each the root of its prefix
    kept = await tlog.checkpoints_after(-1, 100)
    assert [c.size for c in kept] == [0, 7, 14, 17]
    for c in kept:
        assert checkpoint.verify_checkpoint(c.note, tlog.signer.verifier).root == merkle.root(leaves[: c.size])
    assert await tlog.integrate() == 0


async def test_proofs_from_the_database_match_the_in_memory_tree(pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    entries = await commit_entries(pool, 23)
    await tlog.drain()
    memory = merkle.MemoryNodeStore()
    memory.append(leaf_of(entry_document(e.row())) for e in entries)
    store = PgNodeStore(pool)
    for size in (1, 7, 14, 16, 21, 23):  # the checkpointed sizes and others
        for index in range(size):
            assert await merkle.inclusion_proof(index, size, store) == \
                await merkle.inclusion_proof(index, size, memory)
        for old in range(1, size + 1):
            assert await merkle.consistency_proof(old, size, store) == \
                await merkle.consistency_proof(old, size, memory)
    with pytest.raises(merkle.MissingNodeError):
        await store.get_nodes([merkle.NodeId(0, 23)])


async def test_proof_api_refuses_sizes_beyond_the_published_tree(pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    entries = await commit_entries(pool, 5)
    await tlog.drain()
    with pytest.raises(BeyondTree):
        await tlog.inclusion_proof(0, 6)
    with pytest.raises(BeyondTree):
        await tlog.inclusion_proof(5, 5)
    with pytest.raises(BeyondTree):
        await tlog.consistency_proof(0, 5)
    found = await tlog.entry_proof(entries[3].id)
    assert (found.index, found.tree_size) == (3, 5)
    signed = checkpoint.verify_checkpoint(found.checkpoint or "", tlog.signer.verifier)
    merkle.verify_inclusion(found.leaf_hash, 3, 5, found.proof, signed.root)
    with pytest.raises(UnknownEntry):
        await tlog.entry_proof(uuid.uuid4())
    pending = log_entry(99)
    await accesslog.commit(pool, pending)
    with pytest.raises(NotYetIntegrated):
        await tlog.entry_proof(pending.id)


async def test_the_promise_given_at_commit_names_the_leaf_later_integrated(
        pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    entry = log_entry(1)
    await accesslog.commit(pool, entry)
    receipt = tlog.receipt(entry)
    promise = verify_receipt(receipt, tlog.signer.verifier, origin=ORIGIN, entry_id=str(entry.id),
                             data=b'{"quotient_familial":1}')
    assert promise.max_merge_delay == 60 and receipt["entry"]["v"] == leaves.V2  # type: ignore[index]
    await tlog.drain()
    found = await tlog.entry_proof(entry.id)
    assert found.leaf_hash == promise.leaf_hash == base64.b64decode(str(receipt["leaf_hash"]))
    # the promise is a signed note of its own format: never mistaken for a checkpoint
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.verify_checkpoint(str(receipt["inclusion_promise"]), tlog.signer.verifier)
    other = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    with pytest.raises(VerificationError, match="signature"):
        verify_promise(str(receipt["inclusion_promise"]), other.verifier, origin=ORIGIN)
    with pytest.raises(VerificationError, match="another log"):
        verify_promise(str(receipt["inclusion_promise"]), tlog.signer.verifier, origin="other.test/log")
    tampered = dict(receipt, entry=dict(receipt["entry"], consumer="21690123100011"))  # type: ignore[arg-type]
    with pytest.raises(VerificationError, match="promised leaf"):
        verify_receipt(tampered, tlog.signer.verifier, origin=ORIGIN, entry_id=str(entry.id))
    with pytest.raises(VerificationError, match="payload"):
        verify_receipt(receipt, tlog.signer.verifier, origin=ORIGIN, entry_id=str(entry.id),
                       data=b'{"quotient_familial":2}')
    unsalted = {k: v for k, v in receipt.items() if k != "payload_salt"}
    with pytest.raises(VerificationError, match="salt"):
        verify_receipt(unsalted, tlog.signer.verifier, origin=ORIGIN, entry_id=str(entry.id),
                       data=b'{"quotient_familial":1}')
    with pytest.raises(VerificationError, match="another entry"):
        verify_receipt(receipt, tlog.signer.verifier, origin=ORIGIN, entry_id=str(uuid.uuid4()))


async def test_concurrent_integrators_leave_no_hole_and_no_duplicate(database_url: str) -> None:
    """Six integrators (own pools, as separate processes have) race while entries keep arriving."""
    pools = [await db.create_pool(database_url, min_size=1, max_size=2) for _ in range(6)]
    key = signer()
    logs = [TransparencyLog(p, key, max_merge_delay=60, batch=5) for p in pools]
    done = asyncio.Event()

    async def integrator(t: TransparencyLog) -> None:
        while not done.is_set():
            await t.integrate()
            await asyncio.sleep(0)

    async def writer(p: asyncpg.Pool, offset: int) -> None:
        for n in range(40):
            await accesslog.commit(p, log_entry(offset + n, released=n % 2 == 0))

    try:
        racers = [asyncio.create_task(integrator(t)) for t in logs]
        await asyncio.gather(*(writer(p, 1000 * i) for i, p in enumerate(pools[:3])))
        done.set()
        await asyncio.gather(*racers)
        await logs[0].drain()
        found = await indices(pools[0])
        assert sorted(found) == list(range(120))  # type: ignore[type-var]
        size = await pools[0].fetchval("SELECT size FROM tlog_head")
        assert size == 120
        sizes = [c.size for c in await logs[0].checkpoints_after(-1, 1000)]
        assert sizes == sorted(set(sizes)) and sizes[-1] == 120
        # the whole tree still recomputes from the rows in index order
        rows = await pools[0].fetch(
            "SELECT a.* FROM access_log a JOIN tlog_entries x ON x.entry_id = a.id ORDER BY x.log_index")
        latest = await logs[0].latest_checkpoint()
        assert latest is not None
        assert checkpoint.verify_checkpoint(latest.note, key.verifier).root == \
            merkle.root([leaf_of(entry_document(r)) for r in rows])
    finally:
        for p in pools:
            await p.close()


async def reads(pool: asyncpg.Pool, table: str) -> tuple[int, int]:
    """Rows of `table` (its partitions summed) that sequential scans returned, and rows index scans fetched, so far,
    by PostgreSQL's own statistics (flushed from the pool's one backend first: counts, not timings)."""
    if await pool.fetchval("SELECT current_setting('server_version_num')::int") < 150000:
        pytest.skip("pg_stat_force_next_flush() is PostgreSQL 15's")
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT 1")
        row = await conn.fetchrow(
            "SELECT coalesce(sum(seq_tup_read), 0)::bigint AS seq, coalesce(sum(idx_tup_fetch), 0)::bigint AS idx "
            "FROM pg_stat_user_tables WHERE relid = $1::regclass OR relid IN (SELECT inhrelid FROM pg_inherits "
            "WHERE inhparent = $1::regclass)", table)
        return int(row["seq"]), int(row["idx"])


async def tlog_entries_scanned(pool: asyncpg.Pool) -> int:
    return (await reads(pool, "tlog_entries"))[0]


async def plans_made_on_an_empty_log(database_url: str) -> asyncpg.Pool:
    """A one-connection pool whose trigger functions made their plans on an analysed empty log, as a broker's
    connections do on a new database (and keep them while no table's statistics change)."""
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    await pool.execute("ANALYZE")
    t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=10)
    async with pool.acquire() as conn:
        await accesslog.write(conn, [(log_entry(n), None) for n in range(10**6, 10**6 + 10)])
    assert await t.integrate() == 10
    return pool


async def test_rounds_on_one_connection_do_not_rescan_the_log_as_it_grows(database_url: str) -> None:
    """A pooled connection keeps a generic plan for its life. Made while the log was empty (analysed so, and idle
    rounds run every second), it read tlog_entries whole for every entry of every later round: with generic plans
    forced for the round (00578e1), 1.8 million rows here; left to PostgreSQL, which takes a generic plan after five
    executions, 6.6 million (helper-36's review). The round plans afresh each time. The guards of tlog_entries and
    tlog_queue, whose plans have no parameters and are kept too, read the month of access_log, tlog_entries and
    tlog_nodes whole every round (the last 5 rounds here: 10,050, 8,050 and 16,072 rows) until they probed by index
    (migration 0038): now each entry is looked up a fixed number of times, whatever the log's size."""
    pool = await plans_made_on_an_empty_log(database_url)
    try:
        t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=200)
        for _ in range(6):  # the integrator's idle rounds, one a second
            assert await t.integrate() == 0
        async with pool.acquire() as conn:
            for start in range(0, 2000, 500):
                await accesslog.write(conn, [(log_entry(n), None) for n in range(start, start + 500)])
        for _ in range(5):  # while the log fits a page or two, the round's own probe may read it whole
            assert await t.integrate() == 200
        before = {table: await reads(pool, table) for table in ("tlog_entries", "access_log", "tlog_nodes")}
        assert await t.drain() == 1000
        after = {table: await reads(pool, table) for table in before}
        seq = {table: after[table][0] - before[table][0] for table in before}
        fetched = {table: after[table][1] - before[table][1] for table in before}
        assert seq == {"tlog_entries": 0, "access_log": 0, "tlog_nodes": 0}
        # index lookups only: each entry's row twice (the round's and the guard's), its leaf, the right edge
        assert fetched["access_log"] <= 2 * 1000 and fetched["tlog_nodes"] <= 1000 + 5 * 20, fetched
    finally:
        await pool.close()


async def test_commits_do_not_read_the_log_whatever_plan_the_connection_keeps(database_url: str) -> None:
    """access_log's statement trigger checks that no committed entry already has an index: one probe per entry.
    Planned on an analysed empty log and kept for the connection's life, it read all of tlog_entries on every
    commit of exchanges (4,000 rows per commit here) until migration 0038."""
    pool = await plans_made_on_an_empty_log(database_url)
    try:
        async with pool.acquire() as conn:
            for start in range(0, 4000, 500):
                await accesslog.write(conn, [(log_entry(n), None) for n in range(start, start + 500)])
        assert await TransparencyLog(pool, signer(), max_merge_delay=60, batch=1000).drain() == 4000
        before = await reads(pool, "tlog_entries")
        async with pool.acquire() as conn:
            for n in range(50):  # one exchange at a time, as at low load
                await accesslog.write(conn, [(log_entry(10_000 + n), None)])
        seq, fetched = (a - b for a, b in zip(await reads(pool, "tlog_entries"), before, strict=True))
        assert (seq, fetched) == (0, 0)  # an index probe that finds nothing fetches no row
    finally:
        await pool.close()


async def test_the_queue_checks_each_line_by_index_on_a_large_log(database_url: str) -> None:
    """Whether a pending line already has an index is one probe per line. As an anti-join, with fresh statistics,
    the planner expected it to keep one line, so the round's LIMIT stopped bounding it: it read all of tlog_entries
    every round (60,300 rows in these 3 rounds)."""
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            for start in range(0, 23_000, 1000):
                await accesslog.write(conn, [(log_entry(n), None) for n in range(start, start + 1000)])
        assert await TransparencyLog(pool, signer(), max_merge_delay=60, batch=1000).integrate() == 1000
        for _ in range(19):
            await TransparencyLog(pool, signer(), max_merge_delay=60, batch=1000).integrate()
        await pool.execute("ANALYZE")
    finally:
        await pool.close()
    pool = await db.create_pool(database_url, min_size=1, max_size=1)  # a connection with no plan yet
    try:
        before = await tlog_entries_scanned(pool)
        t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=100)
        for _ in range(3):
            assert await t.integrate() == 100
        assert await tlog_entries_scanned(pool) - before == 0
    finally:
        await pool.close()


async def test_integrated_rows_are_immutable(pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    [entry] = await commit_entries(pool, 1)
    pending = log_entry(5)
    await accesslog.commit(pool, pending)
    await pool.execute("UPDATE access_log SET purpose = 'autre' WHERE id = $1", uuid.uuid4())  # no row: no-op
    # No row is ever updated (migration 0031), pending or integrated: the index lives in tlog_entries.
    for change in ("purpose = 'autre'", "call_context = 'autre'", "subject_key = NULL", "purpose = purpose",
                   "leaf_hash = NULL"):
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
            await pool.execute(f"UPDATE access_log SET {change} WHERE id = $1", pending.id)
    await tlog.drain()
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
        await pool.execute("UPDATE access_log SET consumer = '21690123100011' WHERE id = $1", entry.id)
    # An index is given once, for good: no second line for it, no change, no removal.
    for sql in ("UPDATE tlog_entries SET log_index = 7 WHERE entry_id = $1",
                "DELETE FROM tlog_entries WHERE entry_id = $1"):
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
            await pool.execute(sql, entry.id)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
        await pool.execute("TRUNCATE tlog_entries")
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute("INSERT INTO tlog_entries SELECT 1, id, logged_at FROM access_log WHERE id = $1",
                           entry.id)
    # ...and only for a leaf the integrator stored, to an entry that is in the log (an entry still queued: for one
    # already indexed, the unique constraint refuses first).
    queued = log_entry(6)
    await accesslog.commit(pool, queued)
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="not a stored leaf"):
        await pool.execute("INSERT INTO tlog_entries SELECT 99, id, logged_at FROM access_log WHERE id = $1",
                           queued.id)
    size = await pool.fetchval("SELECT size FROM tlog_head")
    await pool.execute("INSERT INTO tlog_nodes (level, idx, hash) VALUES (0, $1, $2)", size, queued.leaf())
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="names no access-log entry"):
        await pool.execute("INSERT INTO tlog_entries VALUES ($1, $2, now())", size, uuid.uuid4())
    # a good line beside a bad one: the statement is refused whole
    other = log_entry(7)
    await accesslog.commit(pool, other)
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="not a stored leaf"):
        await pool.execute("INSERT INTO tlog_entries SELECT CASE WHEN id = $1 THEN $3 ELSE $3 + 1 END, id, logged_at "
                           "FROM access_log WHERE id IN ($1, $2)", queued.id, other.id, size)
    assert await pool.fetchval("SELECT count(*) FROM tlog_entries WHERE entry_id IN ($1, $2)", queued.id,
                               other.id) == 0
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="log prune"):
        await pool.execute("DELETE FROM access_log WHERE id = $1", entry.id)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="truncated"):
        await pool.execute("TRUNCATE access_log CASCADE")
    for sql in ("DELETE FROM tlog_nodes", "UPDATE tlog_nodes SET hash = hash", "DELETE FROM tlog_checkpoints",
                "UPDATE tlog_checkpoints SET note = note", "UPDATE tlog_pruned SET pruned_at = now()"):
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
            await pool.execute(sql)


async def test_outbox_row_exactly_for_released_entries_in_the_same_transaction(pool: asyncpg.Pool) -> None:
    entries = await commit_entries(pool, 6)
    outbox = {r["entry_id"] for r in await pool.fetch("SELECT entry_id FROM notification_outbox")}
    assert outbox == {e.id for e in entries if e.outcome == "released"}
    # the log row and its outbox row commit together: a failing outbox insert (a line already there for that
    # (id, logged_at)) leaves no log row either
    dup = log_entry(7)
    await pool.execute("INSERT INTO notification_outbox (entry_id, logged_at) VALUES ($1, $2)", dup.id, dup.logged_at)
    with pytest.raises(accesslog.LogUnavailable):
        await accesslog.commit(pool, dup)
    assert await pool.fetchval("SELECT count(*) FROM access_log") == 6


async def test_journal_lists_one_subjects_entries_with_proofs(pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    mine = await commit_entries(pool, 5)
    await commit_entries(pool, 4, subject_key="cd" * 32)
    other_consumer = log_entry(50, consumer="21690123100011")
    await accesslog.commit(pool, other_consumer)
    await tlog.drain()
    late = log_entry(60)
    await accesslog.commit(pool, late)  # not integrated yet: listed without a proof
    journal = await tlog.journal(SUBJECT_KEY, JournalFilter())
    assert {e.entry["id"] for e in journal.entries} == {str(e.id) for e in [*mine, other_consumer, late]}
    signed = checkpoint.verify_checkpoint(journal.checkpoint.note, tlog.signer.verifier)
    for e in journal.entries:
        if e.entry["id"] == str(late.id):
            assert e.proof is None and e.index is None
            continue
        assert e.index is not None and e.proof is not None
        merkle.verify_inclusion(e.leaf_hash, e.index, signed.size, e.proof, signed.root)
    only = await tlog.journal(SUBJECT_KEY, JournalFilter(consumer="21690123100011"))
    assert [e.entry["id"] for e in only.entries] == [str(other_consumer.id)]
    assert (await tlog.journal(SUBJECT_KEY, JournalFilter(dataset="statut_etudiant"))).entries == []
    future = datetime.now(UTC) + timedelta(days=1)
    assert (await tlog.journal(SUBJECT_KEY, JournalFilter(since=future))).entries == []
    assert len((await tlog.journal(SUBJECT_KEY, JournalFilter(until=future))).entries) == 7
    limited = await tlog.journal(SUBJECT_KEY, JournalFilter(limit=2))
    assert len(limited.entries) == 2 and limited.truncated


async def test_prune_removes_bodies_past_retention_and_keeps_the_tree(
        pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    old = datetime.now(UTC) - timedelta(days=800)
    aged = [log_entry(n, logged_at=old + timedelta(seconds=n)) for n in range(4)]
    for e in aged:
        await accesslog.commit(pool, e)
    recent = await commit_entries(pool, 3)
    pending_old = log_entry(9, logged_at=old)  # not integrated yet: never pruned
    await tlog.drain()
    await accesslog.commit(pool, pending_old)
    latest_before = await tlog.latest_checkpoint()
    now = datetime.now(UTC)
    dry = await prune(pool, now=now, default_retention="P1Y", dry_run=True)
    assert [p.entry_id for p in dry] == [str(e.id) for e in aged]
    assert await pool.fetchval("SELECT count(*) FROM access_log") == 8
    done = await prune(pool, now=now, default_retention="P1Y", batch=3)
    assert [(p.index, p.entry_id) for p in done] == [(i, str(e.id)) for i, e in enumerate(aged)]
    assert await prune(pool, now=now, default_retention="P1Y") == []
    remaining = {r["id"] for r in await pool.fetch("SELECT id FROM access_log")}
    assert remaining == {e.id for e in [*recent, pending_old]}
    assert await pool.fetchval("SELECT count(*) FROM notification_outbox WHERE entry_id = ANY($1::uuid[])",
                               [e.id for e in aged]) == 0
    # proofs still hold for pruned entries, by id too
    assert latest_before == await tlog.latest_checkpoint()
    found = await tlog.entry_proof(aged[1].id)
    signed = checkpoint.verify_checkpoint(found.checkpoint or "", tlog.signer.verifier)
    merkle.verify_inclusion(leaf_of(entry_document(aged[1].row())), 1, signed.size, found.proof, signed.root)


async def test_prune_follows_the_habilitations_retention(pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    await pool.execute("INSERT INTO organisations (siret, name, roles) VALUES ($1, 'Paris', '{consumer}')", CONSUMER)
    await pool.execute(
        "INSERT INTO habilitations (id, consumer, dataset, purposes, fields, recipients, legal_basis_type, "
        "legal_basis_title, legal_basis_url, retention) VALUES ('h6m', $1, 'quotient_familial', '{p}', '{f}', "
        "'{r}', 'information', 't', 'https://x', 'P6M')", CONSUMER)
    eight_months = datetime.now(UTC) - timedelta(days=240)
    short = log_entry(1, logged_at=eight_months)
    short.habilitation = Habilitation("h6m", CONSUMER, "quotient_familial", ("p",), ("f",), ("r",),
                                      LegalBasis("information", "t", "https://x"), "P6M")
    unbound = log_entry(2, logged_at=eight_months)  # no habilitation: the default retention applies
    for e in (short, unbound):
        await accesslog.commit(pool, e)
    await tlog.drain()
    pruned = await prune(pool, now=datetime.now(UTC), default_retention="P1Y")
    assert [p.entry_id for p in pruned] == [str(short.id)]


async def test_note_key_file_is_created_once_and_bound_to_its_origin(tmp_path: Path) -> None:
    path = tmp_path / "state" / "log-note-key"
    first = load_or_create_note_key(path, ORIGIN)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = load_or_create_note_key(path, ORIGIN)
    assert again.verifier.vkey() == first.verifier.vkey()
    assert path.read_text().startswith(f"PRIVATE+KEY+{ORIGIN}+")
    with pytest.raises(NoteKeyError, match="DLNUF_LOG_ORIGIN"):
        load_or_create_note_key(path, "another.test/log")
    path.write_text("garbage")
    with pytest.raises(NoteKeyError):
        load_or_create_note_key(path, ORIGIN)


async def test_write_nodes_refuses_to_rewrite_a_node(pool: asyncpg.Pool) -> None:
    result = merkle.append_leaves(0, (), [merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")])
    async with pool.acquire() as conn:
        await write_nodes(conn, result.nodes)
        with pytest.raises(asyncpg.UniqueViolationError):
            await write_nodes(conn, result.nodes[:1])


@pytest.mark.parametrize(("env", "message"), [
    ({"DLNUF_LOG_ORIGIN": "my log"}, "DLNUF_LOG_ORIGIN"),
    ({"DLNUF_LOG_ORIGIN": "a+b/log"}, "DLNUF_LOG_ORIGIN"),
    ({"DLNUF_LOG_RETENTION": "1 year"}, "DLNUF_LOG_RETENTION"),
    ({"DLNUF_LOG_RETENTION": "P"}, "DLNUF_LOG_RETENTION"),
    ({"DLNUF_NOTIFY_WEBHOOK": "ftp://x"}, "DLNUF_NOTIFY_WEBHOOK"),
    ({"DLNUF_LOG_AUDITORS": "21750001600019,paris"}, "DLNUF_LOG_AUDITORS"),
    ({"DLNUF_JOURNAL_CLIENTS": "123"}, "DLNUF_JOURNAL_CLIENTS"),
    ({"DLNUF_LOG_INTERVAL": "5", "DLNUF_LOG_MMD": "10"}, "DLNUF_LOG_MMD"),
    ({"DLNUF_LOG_BATCH": "0"}, "DLNUF_LOG_BATCH"),
    ({"DLNUF_OUTBOX_BACKOFF": "10", "DLNUF_OUTBOX_MAX_BACKOFF": "5"}, "DLNUF_OUTBOX_MAX_BACKOFF"),
])
def test_log_settings_fail_loudly(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_log_settings_defaults() -> None:
    config = load_config(env={"DLNUF_PUBLIC_URL": "https://dlnuf.example.gouv.fr/",
                              "DLNUF_LOG_AUDITORS": " 11000201100044 , 21750001600019"})
    assert config.log_origin == "dlnuf.example.gouv.fr/log"
    assert config.log_auditors == {"11000201100044", "21750001600019"} and config.journal_clients == frozenset()
    assert (config.log_interval, config.log_max_merge_delay, config.log_retention) == (1.0, 60.0, "P1Y")
    assert config.notify_webhook is None and config.log_key_file.name == "log-note-key"


def test_an_entrys_leaf_follows_its_last_change() -> None:
    """`LogEntry.leaf` is computed once per state: the receipt's leaf, and the one stored with the row, are those of
    what is committed, even when the entry changed after a first leaf (a refusal at the last step)."""
    entry = log_entry(1)
    first = entry.leaf()
    assert first == leaf_of(entry_document(entry.row())) and entry.leaf() is first
    entry.outcome, entry.http_status, entry.problem_type = "failed", 503, "https://dlnuf.org/problems/log-unavailable"
    entry.fields_released = ()
    entry.clear_payload()
    assert entry.leaf() != first and entry.leaf() == leaf_of(entry_document(entry.row()))


async def test_the_stored_leaf_is_the_receipts(pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    entries = await commit_entries(pool, 4)
    rows = await pool.fetch("SELECT id, leaf_hash FROM access_log ORDER BY seq")
    assert [bytes(r["leaf_hash"]) for r in rows] == [base64.b64decode(str(tlog.receipt(e)["leaf_hash"]))
                                                     for e in entries]


async def test_the_per_round_and_per_request_queries_never_scan_the_log(pool: asyncpg.Pool,
                                                                        tlog: TransparencyLog) -> None:
    """What runs every round (the queue, the status) and on every API request (an entry's proof, a range of
    entries, a bundle, a journal) reaches access_log and tlog_entries by index, one entry at a time: a plain join
    was planned as a merge join over the whole log once the tables had statistics (27 ms a round at 20,000 rows,
    and growing)."""
    async with pool.acquire() as conn:
        for start in range(0, 3000, 500):
            await accesslog.write(conn, [(log_entry(n), None) for n in range(start, start + 500)])
    await tlog.drain()
    await commit_entries(pool, 10)
    await pool.execute("ANALYZE")
    q = db.queries("broker.tlog", "tlog.sql")
    some = await pool.fetchrow("SELECT entry_id, logged_at FROM tlog_entries WHERE log_index = 100")
    empty = [p.name for p in await partitions.listing(pool)
             if not await pool.fetchval(f"SELECT EXISTS (SELECT FROM {p.name})")]
    async with pool.acquire() as conn:
        for name, args in (("tlog_entry_index", (some["entry_id"], None)),
                           ("tlog_entry_index", (some["entry_id"], some["logged_at"])),
                           ("tlog_pending", (1000,)), ("tlog_status", ()), ("tlog_range", (100, 356)),
                           ("tile_entries", (100, 356)), ("tlog_public_leaf", (100,)),
                           ("tlog_journal", (SUBJECT_KEY, None, None, None, None, 50)),
                           ("partition_rows", (datetime.now(UTC) - timedelta(days=1), datetime.now(UTC)
                                               + timedelta(days=1), None, None, 100)),
                           ("tlog_prune_candidates", (datetime.now(UTC), "P1D", 100)),
                           ("outbox_payload", ([some["entry_id"]], [some["logged_at"]]))):
            for _ in range(7):  # past the custom plans: the generic plan is the one a broker keeps
                await conn.fetch(q[name], *args)
            plan = [r[0] for r in await (await conn.prepare(f"EXPLAIN (ANALYZE, COSTS OFF) {q[name]}")).fetch(*args)]
            scans = [line for line in plan if "Scan" in line and ("on access_log" in line or "on tlog_entries" in line)
                     and "Index" not in line and "never executed" not in line
                     # the status counts the default partition's rows on purpose (at most 1,000; it is meant empty)
                     and not (name == "tlog_status" and "on access_log_default " in line)
                     # prune's ranges in the months ahead and the default partition, empty here: with no page to
                     # read, a seq scan is the planner's cheapest (tests/tlog/test_prune_candidates.py counts the rows
                     # its index ranges read)
                     and not (name == "tlog_prune_candidates" and any(f"on {e} " in line for e in empty))]
            assert not scans, (name, "\n".join(plan))
