"""Test fixtures on a real PostgreSQL: one template database migrated once per session, a fresh copy per test.

The server is `TEST_DATABASE_URL` when set, else the local one on 127.0.0.1:5432 when it answers, else an embedded
PostgreSQL started for the session. Session fixtures yield connection strings, never pools, so nothing is tied to
one event loop.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from broker.storage import db

SHARED = Path(__file__).resolve().parents[2] / "shared"

# The test server's one role is its superuser, which `serve` refuses without this (broker/storage/roles.py); the
# brokers tests start as processes inherit it. tests/storage/test_roles.py serves without it, as the broker role.
os.environ.setdefault("DLNUF_UNSAFE_SUPERUSER", "true")
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def _with_database(dsn: str, name: str) -> str:
    base, _, query = dsn.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return base + ("?" + query if query else "")


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin DSN on a real PostgreSQL server."""
    dsn = os.environ.get("TEST_DATABASE_URL")
    if dsn:
        yield dsn
        return
    if asyncio.run(_answers(LOCAL_SERVER)):
        yield LOCAL_SERVER
        return
    embedded = db.EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    yield embedded.dsn()
    embedded.stop()


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> Iterator[str]:
    name = f"dlnuf_tpl_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        admin = await asyncpg.connect(pg_server)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        conn = await db.connect(_with_database(pg_server, name))
        await db.migrate(conn)
        await conn.close()

    async def drop() -> None:
        admin = await asyncpg.connect(pg_server)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    asyncio.run(create())
    yield name
    asyncio.run(drop())


@pytest.fixture
async def database_url(pg_server: str, template_db: str) -> object:
    """A fresh, migrated database for one test."""
    name = f"dlnuf_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    yield _with_database(pg_server, name)
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
