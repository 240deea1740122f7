"""The batch writers on a real PostgreSQL: with two writers a statement in flight does not hold back an item that
arrives meanwhile; below that rate one writer (one connection) does all the work; a cancelled caller costs
nobody else their result."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from broker.storage import db
from broker.storage.batch import Batcher


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url, min_size=1, max_size=4)
    yield p
    await p.close()


class Echo(Batcher[str, str]):
    """Writes nothing: asks the database for its items back, and holds a batch holding "slow" until `release`."""

    name = "echo"

    def __init__(self, pool: asyncpg.Pool, *, writers: int) -> None:
        super().__init__(pool, writers=writers)
        self.release = asyncio.Event()
        self.held = asyncio.Event()  # set once a "slow" batch is in flight
        self.statements: list[tuple[int, list[str]]] = []  # (backend pid, items)

    async def _write(self, conn: asyncpg.Connection, items: Sequence[str]) -> list[str]:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        self.statements.append((pid, list(items)))
        if "slow" in items:
            self.held.set()
            await self.release.wait()
        return list(await conn.fetchval("SELECT $1::text[]", list(items)))

    def _failed(self, item: str, exc: BaseException | None) -> Exception:
        return RuntimeError(f"{item}: {exc!r}")


async def test_with_two_writers_an_item_does_not_wait_for_the_statement_in_flight(pool: asyncpg.Pool) -> None:
    echo = Echo(pool, writers=2)
    slow = asyncio.create_task(echo.submit("slow"))
    await echo.held.wait()
    assert await asyncio.wait_for(echo.submit("quick"), 5) == "quick"  # while "slow" is still in flight
    assert not slow.done()
    echo.release.set()
    assert await slow == "slow"
    await echo.close()
    assert echo.statements[0][0] != echo.statements[1][0]  # each on its own connection


async def test_with_one_writer_an_item_waits_for_the_statement_in_flight(pool: asyncpg.Pool) -> None:
    echo = Echo(pool, writers=1)
    slow = asyncio.create_task(echo.submit("slow"))
    await echo.held.wait()
    quick = asyncio.create_task(echo.submit("quick"))
    await asyncio.sleep(0.05)
    assert not quick.done() and len(echo.statements) == 1
    echo.release.set()
    assert (await slow, await quick) == ("slow", "quick")
    await echo.close()
    assert [items for _, items in echo.statements] == [["slow"], ["quick"]]


async def test_one_at_a_time_the_items_go_through_one_writer_and_one_connection(pool: asyncpg.Pool) -> None:
    echo = Echo(pool, writers=2)
    idle = pool.get_idle_size()
    for n in range(5):
        assert await echo.submit(str(n)) == str(n)
    assert pool.get_idle_size() == idle - 1
    assert len({pid for pid, _ in echo.statements}) == 1
    await echo.close()
    assert pool.get_idle_size() == idle


async def test_a_cancelled_caller_leaves_the_others_their_results(pool: asyncpg.Pool) -> None:
    echo = Echo(pool, writers=1)
    slow = asyncio.create_task(echo.submit("slow"))
    await echo.held.wait()
    gone = asyncio.create_task(echo.submit("gone"))
    stays = asyncio.create_task(echo.submit("stays"))
    await asyncio.sleep(0)
    gone.cancel()
    echo.release.set()
    assert (await slow, await stays) == ("slow", "stays")
    assert gone.cancelled()
    await echo.close()
    assert [items for _, items in echo.statements] == [["slow"], ["gone", "stays"]]  # written all the same
