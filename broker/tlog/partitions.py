"""The access log's monthly partitions (migration 0029): which exist, creating the coming months', and the rows
that fell into the default partition.

Invariant: an insert never fails for want of a partition. A month nobody created a partition for goes to
`access_log_default`; `ensure` (the owner's, run by `migrate`, `log partitions` and `log prune`, from a timer)
creates the months ahead and moves such rows into their month. The broker's own role cannot create tables, so it
never calls `ensure`; it only reports rows in the default partition (`default_rows`), which mean the timer stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import asyncpg

from broker.storage import db

MONTHS_AHEAD = 3
"""Partitions exist this many months past the current one: a timer that stops is noticed (rows in the default
partition) long before it matters."""


def _q() -> dict[str, str]:
    return db.queries("broker.tlog", "tlog.sql")


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    lower: datetime | None
    """None for the default partition."""
    upper: datetime | None
    estimated_rows: int
    """PostgreSQL's estimate (pg_class.reltuples, as of the last ANALYZE)."""


def month_of(moment: datetime) -> date:
    """The first day of `moment`'s month in UTC (partitions are UTC calendar months)."""
    utc = moment.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


async def listing(conn: asyncpg.Connection | asyncpg.Pool) -> list[Partition]:
    """Every partition of access_log, oldest month first, the default one last."""
    return [Partition(r["name"], r["lower"], r["upper"], r["estimated_rows"])
            for r in await conn.fetch(_q()["partition_list"])]


async def default_rows(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Rows in the default partition: 0 while `ensure` runs in time."""
    return int(await conn.fetchval(_q()["partition_default_rows"]))


async def ensure(conn: asyncpg.Connection, *, now: datetime, ahead: int = MONTHS_AHEAD) -> list[str]:
    """As the owner: the partitions from `now`'s month to `ahead` months after it, and those of the months whose
    rows are in the default partition (moved into them). Returns the partitions created. Each month is its own
    transaction: moving rows out of the default partition locks it, briefly."""
    first = month_of(now)
    wanted = {add_months(first, n) for n in range(ahead + 1)}
    wanted |= {r["month"] for r in await conn.fetch(_q()["partition_default_months"])}
    created = []
    for month in sorted(wanted):
        async with conn.transaction():
            name = await conn.fetchval(_q()["partition_create"], month)
        if name is not None:
            created.append(str(name))
    if created:
        # a superuser creating them (tests, the demo) hands them to the owner; the broker role may only read them
        await conn.execute(db.queries("broker.storage", "roles.sql")["apply_roles"])
    return created
