"""The benchmark's WAL per exchange (benchmarks/procs.py `wal_position`): read once the cell's entries are in the
tree, so that each cell counts the rounds that integrate its own entries, not the previous cell's."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from broker.storage import db
from broker.tlog.log import TransparencyLog
from tests.tlog.test_tlog import commit_entries, signer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import procs


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url, min_size=1, max_size=2)
    yield p
    await p.close()


async def test_the_position_is_read_once_the_queue_is_integrated(database_url: str, pool: asyncpg.Pool) -> None:
    log = TransparencyLog(pool, signer(), max_merge_delay=60)
    await log.ensure_checkpoint()
    name = database_url.rsplit("/", 1)[-1]
    before = await asyncio.to_thread(procs.wal_position, database_url, name)
    await commit_entries(pool, 20)
    written = int(await db.fetchval(pool, "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"))
    assert before is not None and written > before

    async def integrate_later() -> int:
        await asyncio.sleep(0.5)  # the broker's round, a moment after the cell's last exchange
        assert await log.drain() == 20
        return int(await db.fetchval(pool, "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"))

    integrated, read = await asyncio.gather(integrate_later(),
                                            asyncio.to_thread(procs.wal_position, database_url, name, wait=10.0))
    assert read is not None and read >= integrated > written  # the round's WAL is in the reading

    # nothing pending: read at once; and a queue that never empties does not hang the benchmark
    assert await asyncio.to_thread(procs.wal_position, database_url, name, wait=10.0) is not None
    await commit_entries(pool, 1)
    assert await asyncio.to_thread(procs.wal_position, database_url, name, wait=0.3) is not None
