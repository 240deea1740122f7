"""`python -m broker db grant`: the database roles of a production broker (broker/storage/sql/roles.sql).

Run once as a PostgreSQL superuser (DLNUF_ADMIN_DATABASE_URL, else DATABASE_URL); it migrates first, so the
tables exist, then creates (or adopts) the owner and the broker roles and gives each its privileges. Running it
again repairs them.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from broker.config import Config
from broker.storage import db, roles


def add_parser(db_sub: Any) -> None:
    """`grant` under `db` (beside `db shell`, broker/cli/dbshell.py)."""
    grant = db_sub.add_parser("grant", help="create the owner role (migrations) and the broker's least-privilege "
                                            "role (serve), as a PostgreSQL superuser")
    grant.add_argument("--owner", default=roles.OWNER, help=f"the owner role's name (default {roles.OWNER})")
    grant.add_argument("--broker", default=roles.BROKER, help=f"the serving role's name (default {roles.BROKER})")


async def _grant(config: Config, owner: str, broker: str) -> int:
    async with db.database_dsn(config.admin_database_url or config.database_url, config.state_dir) as dsn:
        conn = await db.connect(dsn)
        try:
            applied = await db.migrate(conn)
            await roles.create(conn, owner=owner, broker=broker)
        finally:
            await conn.close()
    print(f"{len(applied)} migration(s) applied; roles {owner} (owner: migrations, log prune) and {broker} "
          f"(serve: appends to the log, never updates or deletes it) granted")
    if config.database_url is not None:
        print(f"DLNUF_ADMIN_DATABASE_URL={roles.with_user(dsn, owner)}")
        print(f"DATABASE_URL={roles.with_user(dsn, broker)}")
        print("(add each role's password or client certificate as your pg_hba.conf requires: "
              f"ALTER ROLE {broker} PASSWORD ...)")
    return 0


def run(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_grant(config, args.owner, args.broker))
