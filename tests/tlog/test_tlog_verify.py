"""`log verify` against a tampered database: every modified, deleted, inserted or reordered row, and every altered
checkpoint, is detected and named. Tampering bypasses the immutability triggers as a database superuser would
(session_replication_role = replica)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from broker.storage import db
from broker.tlog import accesslog, merkle
from broker.tlog.log import TransparencyLog, prune
from broker.tlog.verify import DatabaseSource, Finding, Report, verify_log
from tests.tlog.test_tlog import ORIGIN, commit_entries, log_entry, signer

ROOT = Path(__file__).resolve().parents[2]
SIZE = 20  # checkpoints at 0, 7, 14, 20


@pytest.fixture
async def tlog(pool: asyncpg.Pool) -> TransparencyLog:
    t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
    await t.ensure_checkpoint()
    await commit_entries(pool, SIZE)
    await t.drain()
    return t


async def verify(database_url: str, tlog: TransparencyLog, **kwargs: object) -> Report:
    conn = await db.connect(database_url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await verify_log(DatabaseSource(conn), [tlog.signer.verifier], origin=ORIGIN,
                                    max_merge_delay=60, page=6, **kwargs)  # type: ignore[arg-type]
    finally:
        await conn.close()


async def tamper(database_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET session_replication_role = replica")  # triggers off
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def entry_at(pool: asyncpg.Pool, index: int) -> str:
    return str(await pool.fetchval("SELECT entry_id FROM tlog_entries WHERE log_index = $1", index))


def row_at(index: int) -> str:
    """The access-log row logged at `index`, in a statement (its index is a line of tlog_entries, migration 0031)."""
    return f"id = (SELECT entry_id FROM tlog_entries WHERE log_index = {index})"


def line_for(entry: accesslog.LogEntry, index: int) -> tuple[str, str]:
    """Give `entry` the index `index` behind the integrator's back: a line in tlog_entries, and the entry off the
    integrator's queue (as the integrator would), so that no later round integrates it."""
    return (f"INSERT INTO tlog_entries (log_index, entry_id, logged_at) "
            f"VALUES ({index}, '{entry.id}', '{entry.logged_at.isoformat()}')",
            f"DELETE FROM tlog_queue WHERE entry_id = '{entry.id}'")


def kinds(report: Report) -> list[tuple[str, int | None, str | None]]:
    return [(f.kind, f.index, f.entry_id) for f in report.findings]


async def test_an_untouched_log_verifies(database_url: str, tlog: TransparencyLog) -> None:
    seen: list[tuple[int, int]] = []
    report = await verify(database_url, tlog, progress=lambda done, total: seen.append((done, total)))
    assert report.ok, report.findings
    assert (report.tree_size, report.entries, report.checkpoints) == (SIZE, SIZE, 4)
    assert seen[-1] == (SIZE, SIZE) and len(seen) == 4  # pages of 6


async def test_a_modified_row_is_named(database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    victim = await entry_at(pool, 5)
    await tamper(database_url, f"UPDATE access_log SET consumer = '21690123100011' WHERE {row_at(5)}")
    report = await verify(database_url, tlog)
    assert kinds(report)[0] == ("modified", 5, victim)
    # every later checkpoint's root follows from it; none before
    roots = [f.detail for f in report.findings if f.kind == "root"]
    assert len(roots) == 3 and "below 7" in roots[0]


async def test_a_row_whose_logged_at_changed_is_named(database_url: str, pool: asyncpg.Pool,
                                                      tlog: TransparencyLog) -> None:
    """tlog_entries gives the index with the row's logged_at (its partition key): a row whose logged_at changed is
    not where its index says, and is still found and named, not reported as deleted."""
    victim = await entry_at(pool, 5)
    await tamper(database_url, f"UPDATE access_log SET logged_at = logged_at + interval '1 second' WHERE {row_at(5)}")
    assert kinds(await verify(database_url, tlog))[0] == ("modified", 5, victim)


async def test_any_column_counts(database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    victim = await entry_at(pool, 11)
    await tamper(database_url, f"UPDATE access_log SET latency_us = latency_us + 1 WHERE {row_at(11)}")
    assert kinds(await verify(database_url, tlog))[0] == ("modified", 11, victim)


async def test_a_deleted_row_is_named(database_url: str, tlog: TransparencyLog) -> None:
    await tamper(database_url, f"DELETE FROM access_log WHERE {row_at(9)}")
    report = await verify(database_url, tlog)
    assert kinds(report) == [("missing", 9, None)]
    assert "deleted" in report.findings[0].detail


async def test_a_deleted_tail_is_named(database_url: str, tlog: TransparencyLog) -> None:
    await tamper(database_url,
                 "DELETE FROM access_log WHERE id IN (SELECT entry_id FROM tlog_entries WHERE log_index >= 18)")
    assert kinds(await verify(database_url, tlog)) == [("missing", 18, None), ("missing", 19, None)]


async def test_an_inserted_row_is_named(database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    """A fabricated row slipped in at index 12, the later ones shifted up to make room."""
    shifted = [await entry_at(pool, i) for i in range(12, SIZE)]
    fake = log_entry(99)
    await tamper(database_url,
                 "UPDATE tlog_entries SET log_index = log_index + 1000 WHERE log_index >= 12",
                 "UPDATE tlog_entries SET log_index = log_index - 999 WHERE log_index >= 1000")
    await accesslog.commit(pool, fake)
    await tamper(database_url, *line_for(fake, 12))
    found = kinds(await verify(database_url, tlog))
    assert ("modified", 12, str(fake.id)) in found
    for i, entry_id in enumerate(shifted[:-1], 13):
        assert ("moved", i, entry_id) in found
    assert ("extra", SIZE, shifted[-1]) in found


async def test_a_row_appended_behind_the_integrators_back_is_named(
        database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    fake = log_entry(98)
    await accesslog.commit(pool, fake)
    await tamper(database_url, *line_for(fake, SIZE))
    assert kinds(await verify(database_url, tlog)) == [("extra", SIZE, str(fake.id))]


async def test_reordered_rows_are_named(database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    a, b = await entry_at(pool, 3), await entry_at(pool, 4)
    await tamper(database_url,
                 "UPDATE tlog_entries SET log_index = 1003 WHERE log_index = 3",
                 "UPDATE tlog_entries SET log_index = 3 WHERE log_index = 4",
                 "UPDATE tlog_entries SET log_index = 4 WHERE log_index = 1003")
    report = await verify(database_url, tlog)
    assert kinds(report)[:2] == [("moved", 3, b), ("moved", 4, a)]
    assert "logged at index 4" in report.findings[0].detail


async def test_a_duplicated_index_is_named(database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    copy = log_entry(97)
    await accesslog.commit(pool, copy)
    # Since migration 0031 the primary key of tlog_entries forbids two lines for one index; whoever holds the
    # database can drop it (as `tamper` does, a superuser), and the verifier must still name both rows.
    await tamper(database_url, "ALTER TABLE tlog_entries DROP CONSTRAINT tlog_entries_pkey", *line_for(copy, 6))
    found = await verify(database_url, tlog)
    assert ("duplicate", 6, None) in kinds(found)
    assert ("modified", 6, str(copy.id)) in kinds(found)


async def test_an_altered_checkpoint_is_named(database_url: str, tlog: TransparencyLog) -> None:
    latest = await tlog.checkpoint_at(14)
    assert latest is not None
    body = latest.note.split("\n")
    body[2] = base64.b64encode(b"\x07" * 32).decode()
    await tamper(database_url, f"UPDATE tlog_checkpoints SET note = '{chr(10).join(body)}' WHERE size = 14")
    report = await verify(database_url, tlog)
    assert [(f.kind, "size 14" in f.detail) for f in report.findings] == [("checkpoint", True)]
    assert "does not verify" in report.findings[0].detail


async def test_a_checkpoint_signed_over_another_history_is_named(
        database_url: str, tlog: TransparencyLog) -> None:
    """Even with the log's key, a checkpoint whose root the rows do not give is caught."""
    forged = tlog.signer.sign_checkpoint(14, merkle.leaf_hash(b"another history"))
    await tamper(database_url, "DELETE FROM tlog_checkpoints WHERE size = 14",
                 f"INSERT INTO tlog_checkpoints (size, note) VALUES (14, '{forged}')")
    report = await verify(database_url, tlog)
    assert [f.kind for f in report.findings] == ["root"]
    assert "below 14" in report.findings[0].detail


async def test_a_checkpoint_stored_under_another_size_is_named(database_url: str, tlog: TransparencyLog) -> None:
    await tamper(database_url, "UPDATE tlog_checkpoints SET size = 8 WHERE size = 7")
    report = await verify(database_url, tlog)
    assert any(f.kind == "checkpoint" and "size 8 signs size 7" in f.detail for f in report.findings)


async def test_a_held_checkpoint_the_log_no_longer_extends_is_named(
        database_url: str, tlog: TransparencyLog) -> None:
    kept = await tlog.checkpoint_at(14)
    assert kept is not None
    assert (await verify(database_url, tlog, held_checkpoints=[kept.note])).ok
    bigger = tlog.signer.sign_checkpoint(25, merkle.leaf_hash(b"x"))
    forked = tlog.signer.sign_checkpoint(7, merkle.leaf_hash(b"fork"))
    report = await verify(database_url, tlog, held_checkpoints=[bigger, forked])
    assert [f.kind for f in report.findings] == ["checkpoint", "root"]
    assert "forked" in report.findings[0].detail and "held checkpoint #2" in report.findings[1].detail


async def test_a_tampered_stored_leaf_is_named(database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    victim = await entry_at(pool, 2)
    await tamper(database_url, "UPDATE tlog_nodes SET hash = sha256(hash) WHERE level = 0 AND idx = 2")
    assert kinds(await verify(database_url, tlog)) == [("modified", 2, victim)]


async def test_a_tampered_stored_tree_is_named(database_url: str, tlog: TransparencyLog) -> None:
    """Interior nodes serve the proofs: a wrong right-edge node is caught against the latest checkpoint."""
    await tamper(database_url, "UPDATE tlog_nodes SET hash = sha256(hash) WHERE level = 4 AND idx = 0")
    assert [f.kind for f in (await verify(database_url, tlog)).findings] == ["tree"]


async def test_pruned_entries_are_named_and_the_tree_still_verifies(
        database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    old = [log_entry(n, logged_at=datetime.now(UTC) - timedelta(days=500)) for n in range(3)]
    for e in old:
        await accesslog.commit(pool, e)
    await tlog.drain()
    await prune(pool, now=datetime.now(UTC), default_retention="P1Y")
    report = await verify(database_url, tlog)
    assert report.ok, report.findings
    assert [(p.index, p.entry_id) for p in report.pruned] == [(SIZE + i, str(e.id)) for i, e in enumerate(old)]
    # a row deleted without its tombstone is still a deletion
    await tamper(database_url, f"DELETE FROM tlog_pruned WHERE log_index = {SIZE}")
    assert kinds(await verify(database_url, tlog)) == [("missing", SIZE, None)]


async def test_an_entry_not_integrated_within_the_promised_delay_is_named(
        database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog) -> None:
    stuck = log_entry(7, logged_at=datetime.now(UTC) - timedelta(minutes=5))
    await accesslog.commit(pool, stuck)
    assert kinds(await verify(database_url, tlog)) == [("late", None, str(stuck.id))]


async def test_an_empty_log_without_checkpoint(database_url: str, pool: asyncpg.Pool) -> None:
    conn = await db.connect(database_url)
    try:
        report = await verify_log(DatabaseSource(conn), [signer().verifier], origin=ORIGIN)
    finally:
        await conn.close()
    assert [f.kind for f in report.findings] == ["checkpoint"]


def test_findings_read_as_sentences() -> None:
    assert str(Finding("moved", "the row was logged at index 4", 3, "abc")) == \
        "moved index 3 entry abc: the row was logged at index 4"


# -- The command ---------------------------------------------------------------------------------------------------


def run_cli(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DLNUF_STATE_DIR": str(state), "DLNUF_LOG_FORMAT": "json"}
    env.pop("DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "broker", "log", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120, check=False)


async def test_the_command_exits_0_then_1_naming_the_tampered_rows(
        database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog, tmp_path: Path) -> None:
    vkey = tlog.signer.verifier.vkey()
    ok = run_cli("verify", "--database-url", database_url, "--vkey", vkey, state=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert f"log {ORIGIN}: {SIZE} of {SIZE} entries and 4 checkpoints checked" in ok.stdout and "OK" in ok.stdout

    victim = await entry_at(pool, 16)
    await tamper(database_url, f"UPDATE access_log SET purpose = 'curiosite' WHERE {row_at(16)}",
                 f"DELETE FROM access_log WHERE {row_at(2)}")
    bad = run_cli("verify", "--database-url", database_url, "--vkey", vkey, "--progress", state=tmp_path)
    assert bad.returncode == 1
    assert "missing index 2: no row and no pruning tombstone" in bad.stdout
    assert f"modified index 16 entry {victim}" in bad.stdout
    assert f"{SIZE}/{SIZE} entries" in bad.stderr  # the progress bar

    as_json = run_cli("verify", "--database-url", database_url, "--vkey", vkey, "--json", state=tmp_path)
    report = json.loads(as_json.stdout)
    missing = {"kind": "missing", "index": 2, "entry_id": None,
               "detail": "no row and no pruning tombstone: the entry was deleted"}
    assert not report["ok"] and missing in report["findings"]


async def test_the_command_trusts_only_the_keys_it_is_given(
        database_url: str, tlog: TransparencyLog, tmp_path: Path) -> None:
    stranger = signer().verifier.vkey()
    out = run_cli("verify", "--database-url", database_url, "--vkey", stranger, state=tmp_path)
    assert out.returncode == 1 and "no signature from a trusted key" in out.stdout
    unusable = run_cli("verify", "--database-url", database_url, state=tmp_path)  # no key given, none on disk
    assert unusable.returncode == 2 and "no --vkey" in unusable.stderr
    nowhere = run_cli("verify", "--database-url", "postgresql://nobody@127.0.0.1:1/x", "--vkey", stranger,
                      state=tmp_path)
    assert nowhere.returncode == 2 and "cannot connect" in nowhere.stderr


async def test_prune_command(database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog, tmp_path: Path) -> None:
    old = log_entry(1, logged_at=datetime.now(UTC) - timedelta(days=400))
    await accesslog.commit(pool, old)
    await tlog.drain()
    dry = run_cli("prune", "--database-url", database_url, "--dry-run", state=tmp_path)
    assert dry.returncode == 0 and "would prune 1 entry" in dry.stdout and str(old.id) in dry.stdout
    done = run_cli("prune", "--database-url", database_url, state=tmp_path)
    assert done.returncode == 0 and "pruned 1 entry" in done.stdout
    out = run_cli("verify", "--database-url", database_url, "--vkey", tlog.signer.verifier.vkey(), state=tmp_path)
    assert out.returncode == 0 and f"{SIZE} ({old.id})" in out.stdout


async def test_a_wrong_stored_leaf_hash_is_integrated_as_is_and_named(database_url: str, pool: asyncpg.Pool) -> None:
    """The integrator appends the leaf hash the committing broker stored (migration 0028) without recomputing it;
    `log verify` recomputes every leaf from its row, so a row whose stored leaf does not match it is named."""
    t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
    await t.ensure_checkpoint()
    await commit_entries(pool, 3)
    await tamper(database_url, "UPDATE access_log SET leaf_hash = sha256('not this row') WHERE seq = "
                               "(SELECT min(seq) + 1 FROM access_log)")
    await t.drain()
    victim = await entry_at(pool, 1)
    assert kinds(await verify(database_url, t))[0] == ("modified", 1, victim)


async def test_rows_without_a_stored_leaf_are_integrated_from_their_content(database_url: str, pool: asyncpg.Pool,
                                                                            ) -> None:
    """Rows committed before migration 0028 carry no leaf hash: the integrator canonicalizes them, as before."""
    t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
    await t.ensure_checkpoint()
    entries = await commit_entries(pool, 9)
    await tamper(database_url, "UPDATE access_log SET leaf_hash = NULL WHERE seq % 2 = 0")
    await t.drain()
    assert (await verify(database_url, t)).ok
    stored = [bytes(r["hash"]) for r in await pool.fetch(
        "SELECT hash FROM tlog_nodes WHERE level = 0 ORDER BY idx")]
    assert stored == [e.leaf() for e in entries]
