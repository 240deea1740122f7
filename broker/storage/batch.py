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
- the writer's task runs in a context of its own, never in that of the caller that happened to start it: its
  log lines carry no request's id, and with tracing each caller's trace holds its wait, linked to its batch's span
  (broker/observability/tracing.py `batch`);
- whatever fails while a batch is written (the statement, the connection, the writer cancelled, even its tracing),
  every caller of the batch gets a result or an exception: none is left waiting;
- the writer keeps its pool connection while items keep coming, and gives it back after `KEEP` seconds without
  any: acquiring and releasing it for every statement cost about 25 us per statement (benchmarks/
  batch_connection.py: 146.5 against 121.6 us), and an exchange writes twice (its nonce claim, its log entry),
  nearly always alone below a few hundred exchanges a second. One timer watches for idleness, re-armed when it
  fires rather than around every wait: a timeout per wait cost a Timeout, a timer and its cancellation per
  statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

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


class Spans(Protocol):
    """How a batcher shows in traces: a span around each caller's wait (`waiting`, entered as the span or None),
    and one around each statement (`batch`), linked to the waits it serves. broker/observability/tracing.py is one,
    given by the subclasses: it sits above this package."""

    def waiting(self, name: str) -> AbstractContextManager[Any]: ...

    def batch(self, name: str, waits: Sequence[Any]) -> AbstractContextManager[None]: ...


class _Untraced:
    def waiting(self, name: str) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def batch(self, name: str, waits: Sequence[Any]) -> AbstractContextManager[None]:
        return contextlib.nullcontext()


class RowsRefused(Exception):
    """A batch's rows cannot be sent (e.g. a value the encoding cannot carry): retried item by item."""


@dataclass(slots=True)
class _Pending(Generic[In, Out]):
    item: In
    done: asyncio.Future[Out] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    wait: Any = None  # the caller's wait span, when tracing


class Batcher(ABC, Generic[In, Out]):
    """Subclasses write `_write` (one statement for the batch, a result per item, in order) and `_failed` (the
    exception a caller sees when its item could not be written)."""

    name = "batch writer"
    spans: ClassVar[Spans] = _Untraced()

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = MAX_BATCH) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._queue: list[_Pending[In, Out]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None
        self._used = 0.0  # loop time of the last statement
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle = False  # set by the timer: `KEEP` seconds without a statement

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
        with self.spans.waiting(self.name) as wait:
            pending: _Pending[In, Out] = _Pending(item, wait=wait)
            self._queue.append(pending)
            if self._task is None or self._task.done():
                # in an empty context: the task outlives this caller and serves all the others
                self._task = asyncio.create_task(self._run(), name=self.name, context=contextvars.Context())
            self._wake.set()
            # A cancelled caller cancels only its own future: the batch goes on without it (`_send` skips a done
            # one).
            return await pending.done

    async def close(self) -> None:
        """Write what is queued, then stop; later submissions raise."""
        self._closed = True
        if self._task is not None:
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            while not (self._closed and not self._queue):
                await self._wake.wait()
                self._wake.clear()
                if self._idle and not self._queue:
                    await self._give_back()
                    continue
                while self._queue:
                    batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
                    await self._send(batch)
        except BaseException as exc:
            # the writer dies or is cancelled: what queued behind the batch in flight is answered too (the next
            # submission starts a new writer)
            stranded, self._queue = self._queue, []
            self._fail(stranded, exc)
            raise
        finally:
            await self._give_back()

    def _watch_idle(self) -> None:
        """The idle timer: gives the connection back once `KEEP` seconds passed since the last statement, or
        re-arms for what remains of them."""
        self._idle_timer = None
        if self._conn is None:
            return
        remaining = self._used + KEEP - asyncio.get_running_loop().time()
        if remaining > 0:
            self._idle_timer = asyncio.get_running_loop().call_later(remaining, self._watch_idle)
        else:
            self._idle = True
            self._wake.set()

    async def _give_back(self) -> None:
        conn, self._conn = self._conn, None
        self._idle = False
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if conn is not None:
            await self._pool.release(conn)

    async def _send(self, batch: list[_Pending[In, Out]]) -> None:
        try:
            with self.spans.batch(self.name, [p.wait for p in batch]):
                try:
                    results = await self._statement([p.item for p in batch])
                except Exception as exc:
                    self._settle(batch, exc)  # inside the batch's span: its log lines carry the batch's trace
                    raise
        # Each branch fails what `_settle` did not (`_fail` skips a settled caller): an error may also come from
        # the span itself, or from `_settle`'s own log line, and no caller may be left waiting.
        except CONNECTION_ERRORS as exc:
            self._fail(batch, exc)
            return
        except (asyncpg.PostgresError, RowsRefused) as exc:
            if len(batch) > 1:
                await self._retry(batch)
            else:
                self._fail(batch, exc)
            return
        except BaseException as exc:  # the writer dies, or is cancelled
            self._fail(batch, exc)
            raise
        self._written(len(batch))
        for p, result in zip(batch, results, strict=True):
            if not p.done.done():
                p.done.set_result(result)

    async def _retry(self, batch: list[_Pending[In, Out]]) -> None:
        for i, one in enumerate(batch):
            try:
                await self._send([one])
            except BaseException as exc:
                self._fail(batch[i + 1:], exc)
                raise

    def _settle(self, batch: list[_Pending[In, Out]], exc: Exception) -> None:
        """A failed statement: its callers fail, but for a batch refused for its rows, retried item by item."""
        if isinstance(exc, (asyncpg.PostgresError, RowsRefused)) and not isinstance(exc, CONNECTION_ERRORS) \
                and len(batch) > 1:
            log.warning(f"{self.name}: batch refused, writing its items one by one", items=len(batch),
                        error=type(exc).__name__)
        else:
            self._fail(batch, exc)

    async def _statement(self, items: list[In]) -> Sequence[Out]:
        if self._conn is not None and not _open(self._conn):  # dropped while idle: noticed, as the pool notices it
            await self._give_back()                             # on acquire
        if self._conn is None:
            self._conn = await self._pool.acquire()
        loop = asyncio.get_running_loop()
        self._used, self._idle = loop.time(), False
        if self._idle_timer is None:
            self._idle_timer = loop.call_later(KEEP, self._watch_idle)
        try:
            return await self._write(self._conn, items)
        except CONNECTION_ERRORS:
            if _open(self._conn):
                self._conn.terminate()  # as in db.fetchval: a connection the server dropped must not be used again
            await self._give_back()
            raise

    def _fail(self, batch: list[_Pending[In, Out]], exc: BaseException) -> None:
        for p in batch:
            if not p.done.done():
                p.done.set_exception(self._failed(p.item, exc))
