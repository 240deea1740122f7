"""One writer per event loop that sends what concurrent callers queued as one statement (group commit).

Invariants:
- `Batcher.submit` returns its own item's result only after the statement holding the item succeeded, or raises
  what `fail` makes of the error: a caller never proceeds on a write that did not happen;
- a batch holds what queued while the previous statement ran; nothing waits on purpose: alone, an item is written at
  once; under load, one round trip (and one commit) serves many callers;
- a batch the database refuses for its content (`RowsRefused`, or a PostgreSQL error that is not about the
  connection) is retried item by item, so one bad item never fails the others; a batch lost to the connection or
  the server fails all its items;
- a cancelled caller (client gone) does not cancel the batch it shares with others;
- the writer keeps its pool connection while items keep coming, and gives it back after `KEEP` seconds without
  any: acquiring and releasing it for every statement cost about 25 us per statement (benchmarks/
  batch_connection.py: 146.5 against 121.6 us), and an exchange writes twice (its nonce claim, its log entry),
  nearly always alone below a few hundred exchanges a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import asyncpg
import structlog

log = structlog.get_logger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

# Bounded so that one statement stays short; a larger backlog takes several batches.
MAX_BATCH = 256
# Seconds a writer keeps its idle connection; less than asyncpg's default max_inactive_connection_lifetime (300 s),
# and short enough that an idle process holds no connection it does not use.
KEEP = 5.0
# What a lost connection or server raises: the whole batch fails. Anything else asyncpg.PostgresError raises is
# about the rows (a constraint, a value), and is retried one item at a time.
CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                     asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                     asyncpg.exceptions.AdminShutdownError)


def _open(conn: asyncpg.pool.PoolConnectionProxy) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # lost, and asyncpg has already returned its holder to the pool
        return False


class RowsRefused(Exception):
    """A batch's rows cannot be sent (e.g. a value the encoding cannot carry): retried item by item."""


@dataclass(slots=True)
class _Pending(Generic[In, Out]):
    item: In
    done: asyncio.Future[Out] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class _Writer:
    """One statement at a time, on a connection it keeps while items keep coming."""

    __slots__ = ("conn", "wake")

    def __init__(self) -> None:
        self.conn: asyncpg.pool.PoolConnectionProxy | None = None
        self.wake = asyncio.Event()


class Batcher(ABC, Generic[In, Out]):
    """Subclasses write `_write` (one statement for the batch, a result per item, in order) and `_failed` (the
    exception a caller sees when its item could not be written).

    `writers` statements may be in flight at once, each on its own connection, all taking from one queue: an item
    that arrives while a statement runs goes out at once on an idle writer instead of waiting for that statement
    and its commit. An idle writer is woken alone, the one used last first, so that below the rate at which
    statements overlap one writer (and one connection) does all the work. One writer keeps the queue's order
    across statements (the claims' quota counters rely on it)."""

    name = "batch writer"

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = MAX_BATCH, writers: int = 1) -> None:
        if writers < 1:
            raise ValueError("a batcher needs at least one writer")
        self._pool = pool
        self._max_batch = max_batch
        self._writers = writers
        self._queue: list[_Pending[In, Out]] = []
        self._idle: list[_Writer] = []  # waiting for items; the last one was busy most recently
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @abstractmethod
    async def _write(self, conn: asyncpg.Connection, items: Sequence[In]) -> Sequence[Out]: ...

    @abstractmethod
    def _failed(self, item: In, exc: BaseException | None) -> Exception:
        """What the caller of `item` raises: `exc` is the cause, None once the writer is closed."""

    def _written(self, count: int) -> None:
        """Told of each successful statement and its number of items (metrics)."""

    async def submit(self, item: In) -> Out:
        if self._closed:
            raise self._failed(item, None)
        pending: _Pending[In, Out] = _Pending(item)
        self._queue.append(pending)
        if self._idle:
            self._idle.pop().wake.set()
        elif len(self._tasks) < self._writers or any(t.done() for t in self._tasks):
            self._start_writers()
        # Awaited directly: a cancelled caller cancels its own future only, which its batch then skips; the
        # statement runs in the writer's task, for the others.
        return await pending.done

    def _start_writers(self) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        while len(self._tasks) < self._writers:
            self._tasks.append(asyncio.create_task(self._run(_Writer()), name=self.name))

    async def close(self) -> None:
        """Write what is queued, then stop; later submissions raise."""
        self._closed = True
        for writer in self._idle:
            writer.wake.set()
        self._idle.clear()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, w: _Writer) -> None:
        try:
            while not (self._closed and not self._queue):
                if not self._queue:
                    w.wake.clear()
                    self._idle.append(w)
                    try:
                        async with asyncio.timeout(KEEP if w.conn is not None else None):
                            await w.wake.wait()
                    except TimeoutError:
                        if w in self._idle:  # not handed an item at the very moment the timeout fired
                            self._idle.remove(w)
                        await self._give_back(w)
                        continue
                while self._queue:
                    batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
                    await self._send(w, batch)
        finally:
            if w in self._idle:
                self._idle.remove(w)
            await self._give_back(w)

    async def _give_back(self, w: _Writer) -> None:
        conn, w.conn = w.conn, None
        if conn is not None:
            await self._pool.release(conn)

    async def _send(self, w: _Writer, batch: list[_Pending[In, Out]]) -> None:
        try:
            results = await self._statement(w, [p.item for p in batch])
        except CONNECTION_ERRORS as exc:
            self._fail(batch, exc)
            return
        except (asyncpg.PostgresError, RowsRefused) as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            log.warning(f"{self.name}: batch refused, writing its items one by one", items=len(batch),
                        error=type(exc).__name__)
            for one in batch:
                await self._send(w, [one])
            return
        except Exception as exc:  # never leave a caller waiting forever on a writer that died
            self._fail(batch, exc)
            raise
        self._written(len(batch))
        for p, result in zip(batch, results, strict=True):
            if not p.done.done():
                p.done.set_result(result)

    async def _statement(self, w: _Writer, items: list[In]) -> Sequence[Out]:
        if w.conn is not None and not _open(w.conn):  # dropped while idle: noticed, as the pool notices it on
            await self._give_back(w)                    # acquire
        if w.conn is None:
            w.conn = await self._pool.acquire()
        try:
            return await self._write(w.conn, items)
        except CONNECTION_ERRORS:
            if _open(w.conn):
                w.conn.terminate()  # as in db.fetchval: a connection the server dropped must not be used again
            await self._give_back(w)
            raise

    def _fail(self, batch: list[_Pending[In, Out]], exc: BaseException) -> None:
        for p in batch:
            if not p.done.done():
                p.done.set_exception(self._failed(p.item, exc))
