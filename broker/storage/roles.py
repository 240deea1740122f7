"""The database roles of a production broker: an owner that migrates, a least-privilege role that serves.

Invariant: the role `serve` connects with either passed `verify_least_privilege` (not a superuser, not the owner
of the access log, unable to delete from it) or the operator said `--unsafe-superuser`. The privileges themselves
are in `sql/roles.sql`; the embedded PostgreSQL of the demo gets the same two roles (`embedded_broker_dsn`), so
the demo serves as least privileged as production.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from broker.storage import db

OWNER = "dlnuf_owner"
BROKER = "dlnuf_broker"


class UnsafeDatabaseRole(Exception):
    """The broker's database role could rewrite or unprotect the access log."""


def _queries() -> dict[str, str]:
    return db.queries("broker.storage", "roles.sql")


async def create(conn: asyncpg.Connection, *, owner: str = OWNER, broker: str = BROKER) -> None:
    """As a superuser, on a migrated database: create (or adopt) both roles, give the owner every object and the
    broker role its privileges. Idempotent: run it again after changing the role names or to repair privileges."""
    if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        raise UnsafeDatabaseRole("db grant must run as a PostgreSQL superuser: it creates roles and gives the owner "
                                 "role every table (DLNUF_ADMIN_DATABASE_URL or DATABASE_URL as postgres)")
    async with conn.transaction():
        await conn.execute("SELECT set_config('dlnuf.owner_role', $1, true), set_config('dlnuf.broker_role', $2, true)",
                           owner, broker)
        await conn.execute(_queries()["create_roles"])
        await conn.execute(_queries()["apply_roles"])


async def apply(conn: asyncpg.Connection) -> None:
    """Re-set the broker role's privileges (and, as a superuser, the owner's ownership) on every table; nothing when
    `create` never ran on this database. `db.migrate` calls it after applying migrations."""
    await conn.execute(_queries()["apply_roles"])


@dataclass(frozen=True, slots=True)
class RolePrivileges:
    role: str
    superuser: bool
    owner_name: str | None
    """The access log's owner; None before the migration that creates it."""
    owner: bool
    can_delete: bool


async def privileges(conn: asyncpg.Connection) -> RolePrivileges:
    """What the connected role may do to the access log."""
    row = await conn.fetchrow(_queries()["role_privileges"])
    return RolePrivileges(row["role_name"], row["superuser"], row["owner_name"], bool(row["owner"]),
                          bool(row["can_delete"]))


async def verify_least_privilege(conn: asyncpg.Connection) -> None:
    """None, or `UnsafeDatabaseRole` saying why the connected role must not serve."""
    found = await privileges(conn)
    advice = ("serve with the least-privilege role `python -m broker db grant` creates (DATABASE_URL), migrate "
              "with the owner role (DLNUF_ADMIN_DATABASE_URL), see docs/operations.md; or accept the risk with "
              "--unsafe-superuser (DLNUF_UNSAFE_SUPERUSER=true)")
    if found.superuser:
        raise UnsafeDatabaseRole(
            f"the broker connects to PostgreSQL as {found.role!r}, a superuser: it could disable the access log's "
            f"immutability triggers or rewrite the log; {advice}")
    if found.owner_name is None:
        raise UnsafeDatabaseRole(
            f"the database has no access log yet, and the role that creates it owns it: migrate first as the owner "
            f"role (DLNUF_ADMIN_DATABASE_URL=... python -m broker migrate), not as {found.role!r}; {advice}")
    if found.owner:
        raise UnsafeDatabaseRole(
            f"the broker connects to PostgreSQL as {found.role!r}, which owns the access log (as {found.owner_name!r})"
            f": it could ALTER TABLE access_log DISABLE TRIGGER and rewrite the log; {advice}")
    if found.can_delete:
        raise UnsafeDatabaseRole(
            f"the broker connects to PostgreSQL as {found.role!r}, which may remove access-log rows; {advice}")


def with_user(dsn: str, user: str) -> str:
    """`dsn` as `user` (no password: the embedded server trusts its local socket)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}@{host}"))


async def embedded_broker_dsn(superuser_dsn: str) -> str:
    """On the embedded PostgreSQL, after migrations: the two roles, and the DSN of the broker's one."""
    conn = await db.connect(superuser_dsn)
    try:
        await create(conn)
    finally:
        await conn.close()
    return with_user(superuser_dsn, BROKER)
