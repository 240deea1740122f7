"""`log verify --state` where the auditor's role may not read the cluster's identity (`pg_control_system()` or
`pg_control_checkpoint()` revoked from PUBLIC, as managed or hardened servers do): the verification still runs and
stays sound. It treats the database as another one, checking every tombstone below the verified size again, records
a state that no later run takes a horizon from, and says once which privilege to grant."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from broker.storage import db, roles
from broker.tlog import accesslog, leaves
from broker.tlog.log import PgNodeStore, TransparencyLog, entry_document, logged_rows, prune
from broker.tlog.verify import DatabaseSource, Report, Resume, verify_log
from tests.tlog.test_tlog import ORIGIN, commit_entries, log_entry, signer
from tests.tlog.test_tlog_verify import tamper
from tests.tlog.test_tombstones import delete_with_tombstone

ROOT = Path(__file__).resolve().parents[2]
GRANT = "GRANT EXECUTE ON FUNCTION {} TO"


@dataclass(frozen=True)
class Auditor:
    dsn: str
    name: str
    revoked: str

    @property
    def grant(self) -> str:
        """The advice: what this role lacks, and only that."""
        return f'{GRANT.format(self.revoked)} "{self.name}";'


@pytest.fixture
async def auditor(request: pytest.FixtureRequest, pg_server: str, database_url: str) -> AsyncIterator[Auditor]:
    """A login role that may read the log's tables, in a database where PUBLIC may no longer execute one of the
    functions that identify the cluster (`pg_control_system()` unless parametrized). Roles are the server's: a unique
    name, dropped after. A function's ACL in pg_catalog is the database's own: the server's other databases (the
    template every test copies among them) keep the grant, which is checked here and restored in this one anyway."""
    revoked = getattr(request, "param", "pg_control_system()")
    name = f"dlnuf_Auditor_{uuid.uuid4().hex[:10]}"  # a capital: the GRANT advised must quote it
    admin = await asyncpg.connect(database_url)
    elsewhere = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
        await admin.execute(f'GRANT SELECT ON {", ".join(DatabaseSource.READS)} TO "{name}"')  # READS, and only those
        await admin.execute(f"REVOKE EXECUTE ON FUNCTION {revoked} FROM PUBLIC")
        held = "SELECT has_function_privilege($1, $2, 'EXECUTE')"
        assert not await admin.fetchval(held, name, revoked)
        assert await elsewhere.fetchval("SELECT current_database()") != await admin.fetchval(
            "SELECT current_database()")
        assert await elsewhere.fetchval(held, name, revoked), "the revoke reached another database"
        yield Auditor(roles.with_user(database_url, name), name, revoked)
    finally:
        await admin.execute(f"GRANT EXECUTE ON FUNCTION {revoked} TO PUBLIC")
        await admin.execute(f'DROP OWNED BY "{name}"')  # its grants here: the role is then held by nothing
        await admin.close()
        await elsewhere.execute(f'DROP ROLE IF EXISTS "{name}"')
        await elsewhere.close()


@pytest.fixture
async def tlog(pool: asyncpg.Pool) -> TransparencyLog:
    t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
    await t.ensure_checkpoint()
    await commit_entries(pool, 30)
    await t.drain()
    return t


async def pruned_and_young(pool: asyncpg.Pool, tlog: TransparencyLog) -> tuple[accesslog.LogEntry,
                                                                                accesslog.LogEntry]:
    """An entry past its retention, lawfully pruned (a tombstone at index 30), and a young one (index 31)."""
    old = log_entry(50, logged_at=datetime.now(UTC) - timedelta(days=500))
    young = log_entry(51, logged_at=datetime.now(UTC) - timedelta(days=5))
    for e in (old, young):
        await accesslog.commit(pool, e)
    await tlog.drain()
    assert [p.entry_id for p in await prune(pool, now=datetime.now(UTC), default_retention="P1Y")] == [str(old.id)]
    return old, young


async def verify(dsn: str, tlog: TransparencyLog, resume: Resume | None = None) -> Report:
    conn = await db.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await verify_log(DatabaseSource(conn), [tlog.signer.verifier], origin=ORIGIN, page=8,
                                    now=datetime.now(UTC), resume=resume)
    finally:
        await conn.close()


@pytest.mark.parametrize("tampering", ["tombstone", "line"])
async def test_the_command_verifies_twice_without_the_identity(database_url: str, pool: asyncpg.Pool,
                                                               tlog: TransparencyLog, auditor: Auditor,
                                                               tmp_path: Path, tampering: str) -> None:
    """Run as the auditor's role with a state file: both runs succeed and say once why and what to grant; the second
    checks the lawful tombstone again (an identified run would count it); and a tombstone backdated below every
    horizon, or an index's line removed, is still found."""
    state = tmp_path / "state.json"

    def run() -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DLNUF_STATE_DIR": str(tmp_path), "DLNUF_LOG_FORMAT": "json"}
        env.pop("DATABASE_URL", None)
        return subprocess.run([sys.executable, "-m", "broker", "log", "verify", "--database-url", auditor.dsn,
                               "--vkey", tlog.signer.verifier.vkey(), "--state", str(state), "--json"],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)

    def said_once(done: subprocess.CompletedProcess[str]) -> None:
        assert done.stderr.count("GRANT EXECUTE") == 1, done.stderr
        assert auditor.grant in done.stderr and "pg_control_system" in done.stderr

    old, young = await pruned_and_young(pool, tlog)
    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    said_once(first)
    recorded = json.loads(state.read_text())
    assert (recorded["size"], recorded["database"], recorded["horizon"], recorded["tombstones"]) == (32, "", 0, 0)

    second = run()
    assert second.returncode == 0, second.stdout + second.stderr
    said_once(second)
    report = json.loads(second.stdout)
    assert report["resumed_from"] == 32 and [p["entry_id"] for p in report["pruned"]] == [str(old.id)]
    assert auditor.grant in report["unidentified"]
    recorded = json.loads(state.read_text())
    assert (recorded["size"], recorded["database"], recorded["horizon"], recorded["tombstones"]) == (32, "", 0, 0)

    if tampering == "tombstone":
        # deleted long before its retention, behind a tombstone dated before the last run and written, by the look
        # of it, below any horizon: an identified run would see one tombstone too many; this one checks it
        public = leaves.leaf_data(entry_document(young.row()))
        verified_at = datetime.fromisoformat(recorded["verified_at"])
        await delete_with_tombstone(database_url, pool, young, pruned_at=verified_at - timedelta(days=1),
                                    leaf_data=public)
        await tamper(database_url, f"UPDATE tlog_pruned SET written_by = '0' WHERE entry_id = '{young.id}'")
    else:
        await tamper(database_url, "DELETE FROM tlog_entries WHERE log_index = 4")
    third = run()
    assert third.returncode == 1, third.stdout + third.stderr
    said_once(third)
    found = [(f["kind"], f["index"], f["entry_id"], f["detail"]) for f in json.loads(third.stdout)["findings"]]
    if tampering == "tombstone":
        assert [f[:3] for f in found] == [("deleted", 31, str(young.id))] and "before its retention" in found[0][3]
    else:
        assert [(f[0], "1 indices below 32 lost their line" in f[3]) for f in found] == [("missing", True)]
    assert json.loads(state.read_text()) == recorded  # a run that found something records nothing


@pytest.mark.parametrize("auditor", ["pg_control_system()", "pg_control_checkpoint()", "pg_current_snapshot()"],
                         indirect=True)
async def test_no_run_takes_a_horizon_from_an_unidentified_database(database_url: str, pool: asyncpg.Pool,
                                                                    tlog: TransparencyLog, auditor: Auditor) -> None:
    """Without either function, the cluster or its timeline is unknown (without the snapshot's, no horizon at all;
    the advice then names that one), and a horizon orders one timeline's transactions only (a restore or a failover
    hands their ids out again). A run without the identity resumes from a state an identified run recorded as from
    another database's: every tombstone below checked, nothing counted; it records no horizon; and the next run,
    identified or not, checks them all again."""
    old, _ = await pruned_and_young(pool, tlog)
    identified = await verify(database_url, tlog)
    assert identified.ok and identified.unidentified is None and identified.resume is not None
    assert identified.resume.database and identified.resume.horizon
    unidentified = await verify(auditor.dsn, tlog, identified.resume)
    assert unidentified.ok, unidentified.findings
    assert [p.entry_id for p in unidentified.pruned] == [str(old.id)]
    assert unidentified.unidentified is not None and auditor.grant in unidentified.unidentified
    state = unidentified.resume
    assert state is not None and (state.database, state.horizon, state.tombstones) == ("", 0, 0)
    for dsn in (auditor.dsn, database_url):
        again = await verify(dsn, tlog, state)
        assert again.ok, again.findings
        assert [p.entry_id for p in again.pruned] == [str(old.id)]


async def _verify_as(auditor: Auditor, tlog: TransparencyLog) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "broker", "log", "verify", "--database-url", auditor.dsn, "--vkey",
                         tlog.signer.verifier.vkey()],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)


async def _as_owner(database_url: str, *statements: str) -> None:
    admin = await asyncpg.connect(database_url)
    try:
        for statement in statements:
            await admin.execute(statement)
    finally:
        await admin.close()


async def test_a_role_that_cannot_read_tables_is_told_all_it_lacks_before_anything_is_read(
        database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog, auditor: Auditor) -> None:
    """Any other privilege the auditor's role lacks stops the verification (it cannot be sound without the table):
    every missing grant named at once, before the pass, with advice for an auditor, not the owner-role advice every
    other command gives."""
    await _as_owner(database_url, f'REVOKE SELECT ON tlog_pruned, tlog_nodes FROM "{auditor.name}"')
    done = await _verify_as(auditor, tlog)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "may not read tlog_nodes, tlog_pruned: an auditor's role needs SELECT" in done.stderr
    assert f'GRANT SELECT ON tlog_nodes, tlog_pruned TO "{auditor.name}";' in done.stderr
    assert "owner role" not in done.stderr and "Traceback" not in done.stderr and not done.stdout


async def test_column_grants_too_narrow_stop_the_pass_with_the_auditors_advice(
        database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog, auditor: Auditor) -> None:
    """A role with SELECT on some columns of a table passes the pre-check (column grants may be all the statements
    need), and one without those the statements read fails at the first read: still exit 2 and advice for an
    auditor, not the owner-role advice every other command gives."""
    await _as_owner(database_url, f'REVOKE SELECT ON habilitations FROM "{auditor.name}"',
                    f'GRANT SELECT (id) ON habilitations TO "{auditor.name}"')
    done = await _verify_as(auditor, tlog)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "permission denied for table habilitations" in done.stderr
    assert "an auditor's role needs SELECT on the log's tables" in done.stderr
    assert "owner role" not in done.stderr and "Traceback" not in done.stderr and not done.stdout


async def test_column_grants_that_cover_what_is_read_are_enough(database_url: str, pool: asyncpg.Pool,
                                                                tlog: TransparencyLog, auditor: Auditor) -> None:
    """An owner may share only the columns of `habilitations` the verification reads (the table says who is
    authorised for what): the pre-check does not refuse what the pass can do (helper-46's review)."""
    await _as_owner(database_url, f'REVOKE SELECT ON habilitations FROM "{auditor.name}"',
                    f'GRANT SELECT (id, retention) ON habilitations TO "{auditor.name}"')
    done = await _verify_as(auditor, tlog)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_a_table_the_role_cannot_find_is_named_with_exit_2(database_url: str, pool: asyncpg.Pool,
                                                                 tlog: TransparencyLog, auditor: Auditor) -> None:
    """Without USAGE on the schema the tables are not found: exit 2 (not verified) and why, not exit 3 and « the
    database is unreachable »."""
    await _as_owner(database_url, "REVOKE USAGE ON SCHEMA public FROM PUBLIC")
    try:
        done = await _verify_as(auditor, tlog)
    finally:
        await _as_owner(database_url, "GRANT USAGE ON SCHEMA public TO PUBLIC")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "finds no table access_log, habilitations" in done.stderr and "without USAGE" in done.stderr
    assert "unreachable" not in done.stderr and not done.stdout


async def test_row_level_security_on_a_log_table_is_refused_not_read_as_deletions(
        database_url: str, pool: asyncpg.Pool, tlog: TransparencyLog, auditor: Auditor) -> None:
    """A policy (or none, with row-level security on) would hide rows from the pass, which would then report them
    deleted: a false finding. The pre-check refuses to read through it, exit 2 (helper-46's review)."""
    await pruned_and_young(pool, tlog)
    await _as_owner(database_url, "ALTER TABLE tlog_pruned ENABLE ROW LEVEL SECURITY")
    done = await _verify_as(auditor, tlog)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "reads tlog_pruned through row-level security" in done.stderr and "deleted" not in done.stdout


def test_the_auditors_grants_cover_every_table_the_source_reads() -> None:
    """DatabaseSource.READS is what the pre-check asks for: every table named after FROM or JOIN in a statement the
    source runs (its own, and the rows and nodes it reads through broker/tlog/log.py)."""
    source = inspect.getsource(DatabaseSource) + inspect.getsource(logged_rows) + inspect.getsource(PgNodeStore)
    names = set(re.findall(r'_q\(\)\["([a-z_0-9]+)"\]', source))
    assert {"tlog_range", "tlog_nodes_get", "tlog_tombstones_after"} <= names
    read = set()
    for name in names:
        body = "\n".join(line for line in db.queries("broker.tlog", "tlog.sql")[name].splitlines()
                         if not line.lstrip().startswith("--"))
        read |= set(re.findall(r"\b(?:FROM|JOIN)\s+([a-z_]+)\b", body))
    functions = {"unnest", "generate_series", "pg_control_system", "pg_control_checkpoint"}
    assert read - functions == set(DatabaseSource.READS), read


async def test_the_horizon_is_read_only_inside_the_verifications_transaction(database_url: str) -> None:
    """Outside it, the horizon would be another snapshot's than the one the pass read (helper-45's review)."""
    conn = await db.connect(database_url)
    try:
        with pytest.raises(RuntimeError, match="inside the verification's REPEATABLE READ transaction"):
            await DatabaseSource(conn).horizon()
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            found = await DatabaseSource(conn).horizon()
        assert found is not None and found[0] and found[1] > 0
    finally:
        await conn.close()
