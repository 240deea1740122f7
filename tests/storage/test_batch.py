"""The batch writer on a real PostgreSQL: what arrives while a statement runs goes in the next one, together; a
cancelled caller costs nobody else their result, and its item is written all the same."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
import structlog

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

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.release = asyncio.Event()
        self.held = asyncio.Event()  # set once a "slow" batch is in flight
        self.statements: list[list[str]] = []  # the items of each statement, in order
        self.bound: list[dict[str, object]] = []  # the structlog context each statement ran in

    async def _write(self, conn: asyncpg.Connection, items: Sequence[str]) -> list[str]:
        self.statements.append(list(items))
        self.bound.append(structlog.contextvars.get_contextvars())
        if "slow" in items:
            self.held.set()
            await self.release.wait()
        return list(await conn.fetchval("SELECT $1::text[]", list(items)))

    def _failed(self, item: str, exc: BaseException | None) -> Exception:
        return RuntimeError(f"{item}: {exc!r}")


@pytest.fixture
async def echo(pool: asyncpg.Pool) -> AsyncIterator[Echo]:
    e = Echo(pool)
    yield e
    e.release.set()  # a failed assertion must not leave the writer holding its connection: the pool would wait
    await asyncio.wait_for(e.close(), 10)


async def held(echo: Echo) -> None:
    await asyncio.wait_for(echo.held.wait(), 10)


async def test_what_arrives_during_a_statement_waits_for_it_then_goes_together(echo: Echo) -> None:
    slow = asyncio.create_task(echo.submit("slow"))
    await held(echo)
    later = [asyncio.create_task(echo.submit(name)) for name in ("second", "third")]
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in later) and len(echo.statements) == 1
    echo.release.set()
    assert (await slow, *[await t for t in later]) == ("slow", "second", "third")
    assert echo.statements == [["slow"], ["second", "third"]]


async def test_a_caller_cancelled_while_its_batch_runs_cancels_neither_the_batch_nor_the_others(echo: Echo) -> None:
    slow = asyncio.create_task(echo.submit("slow"))
    gone = asyncio.create_task(echo.submit("gone"))
    await held(echo)
    assert echo.statements == [["slow", "gone"]]  # one statement, still running
    gone.cancel()
    await asyncio.sleep(0)
    echo.release.set()
    assert await slow == "slow"
    assert gone.cancelled()
    assert await echo.submit("after") == "after"  # and the writer goes on


async def test_a_caller_cancelled_while_queued_leaves_the_others_their_results(echo: Echo) -> None:
    slow = asyncio.create_task(echo.submit("slow"))
    await held(echo)
    gone = asyncio.create_task(echo.submit("gone"))
    stays = asyncio.create_task(echo.submit("stays"))
    await asyncio.sleep(0)
    gone.cancel()
    echo.release.set()
    assert (await slow, await stays) == ("slow", "stays")
    assert gone.cancelled()
    assert echo.statements == [["slow"], ["gone", "stays"]]  # written all the same


async def test_the_writer_runs_in_no_caller_s_context(echo: Echo) -> None:
    """The writer's task is started by whichever caller comes first and then serves everyone: it must not go on
    carrying that caller's request id into the log lines (and trace) of later batches."""
    with structlog.contextvars.bound_contextvars(request_id="first"):
        assert await echo.submit("one") == "one"
    with structlog.contextvars.bound_contextvars(request_id="second"):
        assert await echo.submit("two") == "two"
    assert echo.statements == [["one"], ["two"]]
    assert echo.bound == [{}, {}]


async def test_a_writer_cancelled_mid_statement_fails_its_callers_rather_than_leaving_them_waiting(
        echo: Echo) -> None:
    """At shutdown the loop cancels what is left: the batch in flight must still answer its callers."""
    slow = asyncio.create_task(echo.submit("slow"))
    await held(echo)
    queued = asyncio.create_task(echo.submit("queued"))
    await asyncio.sleep(0)
    assert echo._task is not None
    echo._task.cancel()
    with pytest.raises(RuntimeError, match="slow: CancelledError"):
        await asyncio.wait_for(slow, 5)
    # the one queued behind it, never sent, is answered too
    with pytest.raises(RuntimeError, match="queued: CancelledError"):
        await asyncio.wait_for(queued, 5)
    assert await echo.submit("after") == "after"  # a new writer serves the next ones


class _BrokenSpan:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        raise RuntimeError("span exporter broke")


class _BrokenSpans:
    def waiting(self, name: str) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()

    def batch(self, name: str, waits: Sequence[object]) -> contextlib.AbstractContextManager[None]:
        return _BrokenSpan()


async def test_a_failure_in_the_writer_s_tracing_fails_the_callers_rather_than_leaving_them_waiting(
        pool: asyncpg.Pool) -> None:
    class Traced(Echo):
        spans = _BrokenSpans()

    writer = Traced(pool)
    writer.release.set()
    try:
        with pytest.raises(RuntimeError, match="span exporter broke"):
            await asyncio.wait_for(writer.submit("one"), 5)
    finally:
        with contextlib.suppress(RuntimeError):
            await asyncio.wait_for(writer.close(), 5)
