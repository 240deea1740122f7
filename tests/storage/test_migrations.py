"""The migrated schema is exactly the expected one, and migrating twice is a no-op."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
import pytest

from broker.storage import db

EXPECTED = Path(__file__).parent / "data" / "schema.txt"

# The access log's monthly partitions depend on the day the template was migrated: their tables, constraints and
# indexes are the parent's (tests/tlog/test_partitions.py checks them), so only the partitioned table is described.
DESCRIBE = """
WITH partitions AS (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relispartition)
SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type
       || CASE WHEN is_nullable = 'NO' THEN ' not null' ELSE '' END
       || COALESCE(' default ' || column_default, '') AS line
FROM information_schema.columns
WHERE table_schema = 'public' AND to_regclass(quote_ident(table_name)) NOT IN (SELECT oid FROM partitions)
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND conrelid NOT IN (SELECT oid FROM partitions)
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes
WHERE schemaname = 'public' AND to_regclass(quote_ident(tablename)) NOT IN (SELECT oid FROM partitions)
UNION ALL
SELECT 'partitioned ' || oid::regclass || ' ' || pg_get_partkeydef(oid) FROM pg_class
WHERE relnamespace = 'public'::regnamespace AND relkind = 'p'
ORDER BY 1
"""


async def describe(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(DESCRIBE)
    finally:
        await conn.close()
    return "\n".join(r["line"] for r in rows) + "\n"


async def test_migrated_schema_is_expected(database_url: str) -> None:
    actual = await describe(database_url)
    if os.environ.get("DLNUF_UPDATE_SCHEMA") == "1":
        EXPECTED.write_text(actual)
    assert actual == EXPECTED.read_text(), "schema drifted: review, then rerun with DLNUF_UPDATE_SCHEMA=1"


async def test_migrate_twice_applies_nothing(database_url: str) -> None:
    conn = await db.connect(database_url)
    try:
        assert await db.migrate(conn) == []
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
    finally:
        await conn.close()
    assert versions == [m.version for m in db.migrations()]


QUERY_FILES = [("broker.storage", "queries.sql"), ("broker.storage", "roles.sql"), ("broker.tlog", "tlog.sql"),
               ("broker.storage", "nodekeys.sql"), ("consent", "consents.sql"),
               ("consent", "sessions.sql"), ("broker.notify", "notify.sql")]
# Queries of the gateway's own database, prepared against its schema in tests/gateway/test_record.py.
OTHER_DATABASES = [("broker.gateway", "gateway.sql")]


def test_every_query_file_is_checked() -> None:
    import importlib
    import pkgutil
    from importlib import resources

    import broker

    packages = ["consent", "adapters", "broker"] + [
        m.name for m in pkgutil.walk_packages(broker.__path__, "broker.") if m.ispkg]
    shipped = set()
    for pkg in packages:
        importlib.import_module(pkg)
        folder = resources.files(pkg).joinpath("sql")
        if folder.is_dir():
            shipped |= {(pkg, f.name) for f in folder.iterdir() if f.name.endswith(".sql")}
    assert shipped == set(QUERY_FILES) | set(OTHER_DATABASES)


@pytest.mark.parametrize(("package", "file"), QUERY_FILES)
async def test_every_named_query_prepares_against_the_schema(database_url: str, package: str, file: str) -> None:
    conn = await db.connect(database_url)
    try:
        for name, sql in db.queries(package, file).items():
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError as exc:  # pragma: no cover - the message is the point
                raise AssertionError(f"{file}: query {name}: {exc}") from exc
    finally:
        await conn.close()


def test_query_file_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="twice"):
        db.parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
