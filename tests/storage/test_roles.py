"""The broker's least-privilege database role (broker/storage/sql/roles.sql) serves exchanges, appends to the
access log, and can neither update, delete, truncate it nor disable its triggers; `serve` refuses a superuser and
the log's owner, with the reason."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.storage import db, roles
from broker.tlog import accesslog, partitions
from broker.tlog.log import TransparencyLog, prune
from tests.broker_harness import broker_config, start_broker
from tests.conftest import _with_database
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml
from tests.tlog.test_tlog import log_entry, signer

ROOT = Path(__file__).resolve().parents[2]
# The log's tables: the broker may read them and add to them, nothing else.
APPEND_ONLY = ["access_log", "exchange_evidence", "tlog_nodes", "tlog_checkpoints", "tlog_cosignatures", "tlog_entries"]


@dataclass(frozen=True)
class Roles:
    superuser: str
    owner: str
    broker: str
    owner_name: str
    broker_name: str


@pytest.fixture
async def granted(pg_server: str) -> AsyncIterator[Roles]:
    """A fresh, empty database with its owner and broker roles, made by `db.migrate` and `roles.create` as the
    superuser; roles are the server's, not the database's: unique names, dropped after the database."""
    suffix = uuid.uuid4().hex[:10]
    name, owner, broker = f"dlnuf_r_{suffix}", f"dlnuf_o_{suffix}", f"dlnuf_b_{suffix}"
    admin = await asyncpg.connect(pg_server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    superuser = _with_database(pg_server, name)
    conn = await db.connect(superuser)
    try:
        await db.migrate(conn)
        await roles.create(conn, owner=owner, broker=broker)
    finally:
        await conn.close()
    try:
        yield Roles(superuser, roles.with_user(superuser, owner), roles.with_user(superuser, broker), owner, broker)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{broker}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{owner}"')
        await admin.close()


async def test_the_broker_role_serves_an_exchange_and_cannot_rewrite_its_log(
    granted: Roles, aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    paris = consumer()
    text = registry_toml([paris], provider_url=str(provider.make_url("")).rstrip("/"))
    h = await start_broker(aiohttp_client, broker_config(tmp_path, granted.broker, text, log_interval=0.05), paris)
    answer = await h.exchange()
    assert answer.status == 200, answer.body
    await h.verify(answer)

    conn = await asyncpg.connect(granted.broker)
    try:
        # the integrator, as the broker role, gave the entry its index (a line in tlog_entries, off the queue)
        for _ in range(100):
            if await conn.fetchval("SELECT count(*) FROM tlog_entries"):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the integrator never indexed the entry")
        assert await conn.fetchval("SELECT count(*) FROM exchange_evidence") == 1
        assert await conn.fetchval("SELECT count(*) FROM tlog_queue") == 0
        for table in APPEND_ONLY:
            for statement in (f"UPDATE {table} SET {await _a_column(conn, table)} = NULL",
                              f"DELETE FROM {table}", f"TRUNCATE {table}",
                              f"ALTER TABLE {table} DISABLE TRIGGER ALL",
                              f"ALTER TABLE {table} OWNER TO {granted.broker_name}"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # nor forge tombstones to make deletion legal
            await conn.execute("INSERT INTO tlog_pruned SELECT * FROM tlog_pruned")
        for statement in ("INSERT INTO tlog_queue SELECT seq + 1000, id, logged_at FROM access_log",  # nor queue
                          "UPDATE tlog_queue SET seq = seq", "TRUNCATE tlog_queue"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
        # nor borrow the owner's queueing function (SECURITY DEFINER) for a trigger of its own, on a temporary table
        await conn.execute("CREATE TEMP TABLE forged (seq bigint, id uuid, logged_at timestamptz)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TRIGGER forge AFTER INSERT ON forged REFERENCING NEW TABLE AS added "
                               "FOR EACH STATEMENT EXECUTE FUNCTION access_log_enqueue()")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # nor skip the triggers for the session
            await conn.execute("SET session_replication_role = replica")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # nor create its own tables
            await conn.execute("CREATE TABLE mine (x int)")
        assert await conn.fetchval("SELECT count(*) FROM access_log") == 1
    finally:
        await conn.close()


async def _a_column(conn: asyncpg.Connection, table: str) -> str:
    """A column of `table`."""
    name: str = await conn.fetchval(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position LIMIT 1",
        table)
    return name


async def test_every_guarded_table_is_append_only_for_the_broker(granted: Roles) -> None:
    """A table a trigger guards against UPDATE or DELETE is one the broker role may not update or delete: a future
    migration adding such a table must add it to roles.sql's list, or this fails."""
    conn = await asyncpg.connect(granted.superuser)
    try:
        guarded = [r["t"] for r in await conn.fetch(
            "SELECT DISTINCT tgrelid::regclass::text AS t FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
            "WHERE NOT tgisinternal AND p.proname IN ('access_log_guard', 'tlog_append_only', "
            "'exchange_evidence_guard', 'tlog_entries_guard') ORDER BY 1")]
        assert set(APPEND_ONLY) <= set(guarded)
        for table in guarded:
            assert not await conn.fetchval("SELECT has_table_privilege($1, $2, 'DELETE')", granted.broker_name, table)
            assert not await conn.fetchval("SELECT has_table_privilege($1, $2, 'UPDATE')", granted.broker_name, table)
            assert await conn.fetchval("SELECT has_table_privilege($1, $2, 'SELECT')", granted.broker_name, table)
        owners = {r["o"] for r in await conn.fetch(
            "SELECT DISTINCT pg_get_userbyid(relowner) AS o FROM pg_class "
            "WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'S', 'v')")}
        assert owners == {granted.owner_name}
    finally:
        await conn.close()


async def test_a_migration_run_by_the_owner_gives_the_broker_its_new_tables(granted: Roles) -> None:
    """What `migrate` does with DLNUF_ADMIN_DATABASE_URL: the owner applies, then re-grants (roles.apply). Here
    0017 (one new table) is made pending again by hand."""
    conn = await db.connect(granted.owner)
    try:
        await conn.execute("DROP TABLE pushed_authorization_requests")
        await conn.execute("DELETE FROM schema_migrations WHERE version = 17")
        assert [m.version for m in await db.migrate(conn)] == [17]
        assert await conn.fetchval("SELECT pg_get_userbyid(relowner) FROM pg_class "
                                   "WHERE oid = 'pushed_authorization_requests'::regclass") == granted.owner_name
    finally:
        await conn.close()
    conn = await asyncpg.connect(granted.broker)
    try:
        await conn.execute("INSERT INTO pushed_authorization_requests (request_uri_sha256, client_id, parameters, "
                           "expires_at) VALUES ('x', 'c', '{}', now())")
        assert await conn.fetchval("DELETE FROM pushed_authorization_requests RETURNING client_id") == "c"
        # and nothing pending is nothing to do, even for a role that could not create the migrations' table
        assert await db.migrate(conn) == []
    finally:
        await conn.close()


async def test_verify_least_privilege_names_the_reason(granted: Roles) -> None:
    for dsn, words in ((granted.superuser, "a superuser"), (granted.owner, "owns the access log")):
        conn = await asyncpg.connect(dsn)
        try:
            with pytest.raises(roles.UnsafeDatabaseRole, match=words) as caught:
                await roles.verify_least_privilege(conn)
            assert "--unsafe-superuser" in str(caught.value)
        finally:
            await conn.close()
    conn = await asyncpg.connect(granted.broker)
    try:
        await roles.verify_least_privilege(conn)
    finally:
        await conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DLNUF_") and k != "DATABASE_URL"}
    return {**base, "DLNUF_STATE_DIR": str(tmp_path / "state"), "DLNUF_PUBLIC_URL": "https://dlnuf.example", **more}


def test_serve_refuses_a_superuser_and_the_owner_and_says_why(granted: Roles, tmp_path: Path) -> None:
    for dsn, words in ((granted.superuser, "a superuser"), (granted.owner, "owns the access log")):
        result = subprocess.run([sys.executable, "-m", "broker", "serve", "--port", "0"],
                                env=_env(tmp_path, DATABASE_URL=dsn), cwd=ROOT, capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert words in line and "disable" in line.lower() and "--unsafe-superuser" in line, line


async def test_serve_runs_as_the_broker_role_migrating_as_the_owner(granted: Roles, tmp_path: Path) -> None:
    """The production split: DLNUF_ADMIN_DATABASE_URL migrates (here: nothing pending), DATABASE_URL serves."""
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "serve", "--port", str(port), cwd=ROOT, stdout=log, stderr=log,
        env=_env(tmp_path, DATABASE_URL=granted.broker, DLNUF_ADMIN_DATABASE_URL=granted.owner))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                if proc.returncode is not None:
                    pytest.fail((tmp_path / "serve.log").read_text())
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the broker never became ready: " + (tmp_path / "serve.log").read_text())
    finally:
        proc.terminate()
        await proc.wait()
        log.close()


def test_db_grant_refuses_a_role_that_is_not_a_superuser(granted: Roles, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "broker", "db", "grant"],
                            env=_env(tmp_path, DATABASE_URL=granted.owner), cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert "superuser" in result.stderr.strip().splitlines()[-1]


async def test_the_broker_role_can_neither_alter_nor_write_a_partition_of_the_log(granted: Roles) -> None:
    """Partitions are reached through access_log: directly, the broker role may only read one."""
    owner = await asyncpg.connect(granted.owner)
    try:
        part = await owner.fetchval("SELECT inhrelid::regclass::text FROM pg_inherits "
                                    "WHERE inhparent = 'access_log'::regclass ORDER BY 1 LIMIT 1")
    finally:
        await owner.close()
    conn = await asyncpg.connect(granted.broker)
    try:
        assert await conn.fetchval(f"SELECT count(*) FROM {part}") == 0
        for statement in (f"UPDATE {part} SET consumer = NULL", f"DELETE FROM {part}", f"TRUNCATE {part}",
                          f"INSERT INTO {part} (id, request_id, outcome, http_status, latency_ms, seq) "
                          "VALUES (gen_random_uuid(), 'r', 'refused', 403, 1, 1)",
                          f"ALTER TABLE access_log DETACH PARTITION {part}", f"DROP TABLE {part}",
                          f"ALTER TABLE {part} DISABLE TRIGGER ALL",
                          "SELECT access_log_drop_partition('access_log_default'::regclass)",
                          "SELECT access_log_create_partition('2001-01-01')"):
            with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.InvalidParameterValueError)):
                await conn.execute(statement)
    finally:
        await conn.close()


def _log_partitions(granted: Roles, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker", "log", "partitions", "--ahead", "15"],
                          env=_env(tmp_path, DATABASE_URL=granted.broker, DLNUF_ADMIN_DATABASE_URL=granted.owner),
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_log_partitions_runs_as_the_owner(granted: Roles, tmp_path: Path) -> None:
    result = _log_partitions(granted, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("created partition access_log_y") == 12, result.stdout  # 4 made by the migration
    assert "access_log_default" in result.stdout
    result = _log_partitions(granted, tmp_path)
    assert result.returncode == 0 and "created" not in result.stdout, result.stdout


async def test_new_partitions_are_read_only_for_the_broker(granted: Roles, tmp_path: Path) -> None:
    assert _log_partitions(granted, tmp_path).returncode == 0
    conn = await asyncpg.connect(granted.superuser)
    try:
        for r in await conn.fetch("SELECT inhrelid::regclass::text AS part FROM pg_inherits "
                                  "WHERE inhparent = 'access_log'::regclass"):
            assert await conn.fetchval("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = $1::regclass",
                                       r["part"]) == granted.owner_name
            for privilege, held in (("SELECT", True), ("INSERT", False), ("UPDATE", False), ("DELETE", False),
                                    ("TRUNCATE", False)):
                assert await conn.fetchval("SELECT has_table_privilege($1, $2, $3)", granted.broker_name,
                                           r["part"], privilege) == held, (r["part"], privilege)
    finally:
        await conn.close()


async def test_the_owner_moves_rows_out_of_the_default_and_prunes_a_month_whole(granted: Roles) -> None:
    """What the owner's timer and `log prune` do, without the superuser: create a month's partition (moving its
    rows out of the default one, whose guard it turns off for that), then write tombstones, detach and drop."""
    old = [log_entry(n, logged_at=datetime.now(UTC) - timedelta(days=500 + n)) for n in range(3)]
    serving = await db.create_pool(granted.broker, min_size=1, max_size=2)
    try:
        tlog = TransparencyLog(serving, signer(), max_merge_delay=60)
        await tlog.ensure_checkpoint()
        for e in old:
            await accesslog.commit(serving, e)
        await tlog.drain()
    finally:
        await serving.close()
    owner = await db.create_pool(granted.owner, min_size=1, max_size=2)
    try:
        async with owner.acquire() as conn:
            created = await partitions.ensure(conn, now=datetime.now(UTC))
        assert len(created) >= 1 and await partitions.default_rows(owner) == 0
        pruned = await prune(owner, now=datetime.now(UTC), default_retention="P1Y")
        assert {p.entry_id for p in pruned} == {str(e.id) for e in old}
        assert {p.partition for p in pruned} <= set(created) and None not in {p.partition for p in pruned}
        assert await owner.fetchval("SELECT count(*) FROM access_log") == 0
        assert await owner.fetchval("SELECT count(*) FROM tlog_pruned") == 3
    finally:
        await owner.close()


async def test_no_temporary_table_stands_in_for_the_tables_a_guard_checks(granted: Roles) -> None:
    """The broker role may create temporary tables, and pg_temp comes first in a search_path that does not name it:
    the guards look their tables up in public first, whatever the caller's search_path (helper-31's review)."""
    broker = await asyncpg.connect(granted.broker)
    try:
        entry = log_entry(1)
        await accesslog.write(broker, [(entry, None)])  # queued by access_log's trigger, not yet indexed
        await broker.execute("SET search_path = pg_temp, public")
        forged, at = uuid.uuid4(), datetime(2020, 1, 1, tzinfo=UTC)
        await broker.execute("CREATE TEMP TABLE access_log (id uuid, logged_at timestamptz, leaf_version smallint)")
        await broker.execute("INSERT INTO pg_temp.access_log VALUES ($1, $2, 2)", forged, at)
        await broker.execute("CREATE TEMP TABLE tlog_nodes (level smallint, idx bigint, hash bytea)")
        await broker.execute("INSERT INTO pg_temp.tlog_nodes VALUES (0, 0, '\\x00')")
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="not a stored leaf"):
            await broker.execute("INSERT INTO public.tlog_entries VALUES (0, $1, $2)", forged, at)
        await broker.execute("CREATE TEMP TABLE tlog_entries (entry_id uuid, logged_at timestamptz)")
        await broker.execute("INSERT INTO pg_temp.tlog_entries VALUES ($1, $2)", entry.id, entry.logged_at)
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="stays in the queue"):
            await broker.execute("DELETE FROM public.tlog_queue WHERE entry_id = $1", entry.id)
    finally:
        await broker.close()


async def test_every_trigger_function_looks_its_tables_up_in_public_first(granted: Roles) -> None:
    conn = await asyncpg.connect(granted.superuser)
    try:
        unpinned = await conn.fetch(
            "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace "
            "AND p.prorettype = 'trigger'::regtype "
            "AND NOT ('search_path=public, pg_temp' = ANY(coalesce(p.proconfig, '{}')))")
    finally:
        await conn.close()
    assert [r["proname"] for r in unpinned] == []
