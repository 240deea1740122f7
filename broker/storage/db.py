"""PostgreSQL access: named SQL queries, numbered migrations, the pool, and the embedded server.

SQL lives in `sql/*.sql` beside the package that runs it (`broker/storage/sql/`, `broker/tlog/sql/`, `consent/sql/`) as
`-- name: <query>` blocks with `$n` parameters, never built from strings. Migrations are
`broker/storage/sql/migrations/NNNN_<what>.sql`, applied in order, each in its own transaction, under an advisory lock
so several broker processes starting at once apply each exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger(__name__)

_BLOCK = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(?P<version>[0-9]{4})_(?P<name>[a-z0-9_]+)\.sql$")
_MIGRATION_LOCK = 0x444C4E5546  # "DLNUF": an arbitrary constant shared by every broker process


# What a lost or refusing database raises through asyncpg: the server's errors, the client's view of a dropped
# connection, and asyncpg's own state errors on a connection the server killed mid-statement.
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
)


class DatabaseUnavailable(Exception):
    """The database could not be reached or the statement failed for a reason outside the request's control."""


async def fetchval(pool: asyncpg.Pool, sql: str, *args: object) -> Any:
    """`pool.fetchval`, except that a connection the server dropped is thrown away instead of going back to the
    pool: asyncpg can keep such a connection in a broken state, and every later request would fail on it."""
    async with pool.acquire() as conn:
        try:
            return await conn.fetchval(sql, *args)
        except (asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresConnectionError, OSError):
            conn.terminate()
            raise


async def fetchrow(pool: asyncpg.Pool, sql: str, *args: object) -> Any:
    """`pool.fetchrow`, throwing away a connection the server dropped (see `fetchval`)."""
    async with pool.acquire() as conn:
        try:
            return await conn.fetchrow(sql, *args)
        except (asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresConnectionError, OSError):
            conn.terminate()
            raise


async def fetch(pool: asyncpg.Pool, sql: str, *args: object) -> list[Any]:
    """`pool.fetch`, throwing away a connection the server dropped (see `fetchval`)."""
    async with pool.acquire() as conn:
        try:
            return list(await conn.fetch(sql, *args))
        except (asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresConnectionError, OSError):
            conn.terminate()
            raise


def parse_queries(text: str) -> dict[str, str]:
    parts = _BLOCK.split(text)
    queries: dict[str, str] = {}
    # split() yields [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


@cache
def queries(package: str = "broker.storage", file: str = "queries.sql") -> dict[str, str]:
    text = resources.files(package).joinpath("sql", file).read_text("utf-8")
    return parse_queries(text)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(package: str = "broker.storage") -> list[Migration]:
    """The numbered migrations of `package` (`<package>/sql/migrations/`): the broker's, or the gateway's, which
    keeps its own database."""
    found = []
    for entry in resources.files(package).joinpath("sql", "migrations").iterdir():
        m = _MIGRATION.match(entry.name)
        if m:
            found.append(Migration(int(m["version"]), m["name"], entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers: {versions}")
    return found


async def migrate(conn: asyncpg.Connection, *, package: str = "broker.storage",
                  table: str = "schema_migrations") -> list[Migration]:
    """Apply pending migrations of `package`, remembered in `table`; return those applied."""
    if not re.fullmatch(r"[a-z_]+", table):
        raise ValueError(f"bad migrations table name {table!r}")
    applied: list[Migration] = []
    # Nothing pending is the usual case at a broker's start, and the broker's least-privilege role may not create
    # the table below (docs/operations.md): look first, without the lock.
    if await conn.fetchval("SELECT to_regclass($1)", table) is not None:
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {table}")}  # noqa: S608 - checked
        if done.issuperset(mig.version for mig in migrations(package)):
            return applied
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {table}")}  # noqa: S608 - checked
        for mig in migrations(package):
            if mig.version in done:
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    f"INSERT INTO {table} (version, name) VALUES ($1, $2)", mig.version, mig.name  # noqa: S608
                )
            log.info("migration applied", version=mig.version, name=mig.name)
            applied.append(mig)
        if applied and package == "broker.storage":
            # the broker's role gets its privileges on the new tables (sql/roles.sql; nothing without roles)
            await conn.execute(queries("broker.storage", "roles.sql")["apply_roles"])
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


# Every session of the broker's, pooled or not, runs without PostgreSQL's JIT compiler (on by default in Debian's and
# the PGDG's packages). Its statements are short lookups and inserts, and JIT compiles any plan estimated above
# jit_above_cost, whatever it will really cost: a generic plan over many monthly partitions is. The integrator's
# queue statement with its generic plan, on a 330,000-entry log of 13 months with 18,000 entries pending: 77 to 111
# ms with JIT (78 to 85 of them compiling), 4.2 to 4.9 without (EXPLAIN ANALYZE, helper-34). The round now plans
# afresh every time (tlog.sql `tlog_head_lock`), and JIT left its custom plans alone (benchmarks/round_backlog.py):
# this guards the statements whose plans are generic, it is not a measured saving today. The longest query,
# `log verify`'s anti-join of the whole access log, took 327 ms with JIT forced against 220 without.
# TimeZone: every computation of a date in SQL (`log prune`'s cutoffs, `now - retention`, a month's bounds) is made
# in UTC, as `log verify` makes it in Python and as the partitions' months are. Left to the server's default (the
# host's zone, Europe/Paris on a French server), `log prune` took an entry logged at 12:00Z with a one-day retention
# as due an hour early, after 11:00Z the day clocks change, and `log verify` reported its tombstone as a deletion
# before its retention (helper-42's review).
SESSION_SETTINGS: Mapping[str, str] = {"jit": "off", "TimeZone": "UTC"}


def _session(settings: Mapping[str, str]) -> Callable[[asyncpg.Connection], Awaitable[None]]:
    """What a new session of the broker's runs first: its settings, then the JSON codecs.

    The settings are set in the open session (one round trip per connection, which the pool keeps), not sent as
    startup parameters: PgBouncer refuses a startup parameter it does not track ("unsupported startup parameter:
    jit"), so the broker could not connect through it. Behind PgBouncer's session pooling they hold for the client's
    whole session; its transaction pooling is not supported (docs/operations.md).
    """
    names, values = list(settings), list(settings.values())

    async def init(conn: asyncpg.Connection) -> None:
        await conn.execute(queries()["session_settings"], names, values)
        await _init_connection(conn)

    return init


async def connect(dsn: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    await _session(SESSION_SETTINGS)(conn)
    return conn


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Pool connections carry no session state in this code base but the settings each gets when it opens (no SET
    after that, no session advisory lock, no cursor outside a transaction; the one LISTEN is removed before
    release), so asyncpg's default reset query (unlock all, CLOSE ALL, UNLISTEN *, RESET ALL) on every release is a
    round trip for nothing, and its RESET ALL would undo those settings: measured here it tripled the cost of a
    pooled `SELECT 1` (338 vs 111 us, median of 3 x 5 x 1000 queries, same run), and the exchange pipeline
    releases twice per exchange. asyncpg still rolls back an open transaction on release."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10,
                      settings: Mapping[str, str] | None = None) -> asyncpg.Pool:
    """The pool; `settings` are PostgreSQL settings for its connections (e.g. the claims pool's
    `synchronous_commit = off`, broker/service/quotas.py), over SESSION_SETTINGS."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_session({**SESSION_SETTINGS, **(settings or {})}),
        reset=_no_reset,
        # a statement stuck on a dead server must fail fast into a 503, not hang a request
        command_timeout=10,
    )
    return pool


class EmbeddedPostgres:
    """A real PostgreSQL 16 from the `pgserver` wheel, in a data directory of ours.

    Several broker processes pointing at the same directory share one server; the last one out stops it.
    """

    def __init__(self, data_dir: Path) -> None:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless for us
            warnings.simplefilter("ignore")
            import pgserver

            data_dir.mkdir(parents=True, exist_ok=True)
            self._server: Any = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        self.data_dir = data_dir

    def dsn(self, database: str = "postgres") -> str:
        uri: str = self._server.get_uri(database)
        return uri

    def stop(self) -> None:
        self._server.cleanup()


@contextlib.asynccontextmanager
async def database_dsn(database_url: str | None, state_dir: Path) -> AsyncIterator[str]:
    """For commands (migrate, registry apply, log verify...): the database given, or the embedded one under
    `state_dir`, started for the command and stopped after."""
    if database_url:
        yield database_url
        return
    embedded = await asyncio.to_thread(EmbeddedPostgres, state_dir / "pgdata")
    try:
        yield embedded.dsn()
    finally:
        await asyncio.to_thread(embedded.stop)


def describe(dsn: str) -> str:
    """The DSN without its password, for logs."""
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", dsn)
