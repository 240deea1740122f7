"""Group commit of the access log: one writer per process commits the entries of concurrent exchanges together.

Invariants:
- `GroupCommit.commit` returns only after the COMMIT of a transaction holding the entry, its outbox row (when
  released) and its evidence, or raises `LogUnavailable`: exactly `accesslog.commit`'s promise, so the pipeline's
  rule (no data leaves before its log row is committed) is unchanged. Each exchange awaits its own batch;
- a batch holds what queued while the previous transaction ran, nothing waits on purpose: alone, an exchange
  commits at once, as before; under load, one synchronous commit (one WAL flush) serves many exchanges;
- a batch is one statement sent outside any explicit transaction (tlog.sql `log_batch_insert`): one round trip,
  one implicit transaction, all or nothing;
- a batch the database refuses for its content (a constraint, a value) is retried entry by entry, so one bad entry
  never fails the others; a batch lost to the connection or the server fails all its entries (503, no data);
- the entries' nonce claims committed earlier without waiting for the WAL flush (broker/service/quotas.py): the
  batch's synchronous commit flushes the WAL up to its own record, those claims included, before any answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import orjson
import structlog
from aiohttp import web

from broker.errors import LogUnavailable
from broker.storage import db
from broker.tlog.accesslog import COLUMNS, LogEntry
from broker.tlog.evidence import COLUMNS as EVIDENCE_COLUMNS
from broker.tlog.evidence import Evidence

log = structlog.get_logger(__name__)


class _RowsRefused(Exception):
    """A batch's rows could not be written as JSON: retried entry by entry, like a batch PostgreSQL refuses."""

# Bounded so that one transaction stays short and its statements small; a larger backlog takes several batches.
MAX_BATCH = 256
# What a lost connection or server raises: the whole batch fails. Anything else asyncpg.PostgresError raises is
# about the rows (a constraint, a value), and is retried one entry at a time.
_CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                      asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                      asyncpg.exceptions.AdminShutdownError)


@dataclass(slots=True)
class _Pending:
    entry: LogEntry
    evidence: Evidence | None
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit:
    """The access-log writer of one event loop. `on_commit(entries)` is told of each committed transaction."""

    def __init__(self, pool: asyncpg.Pool, *, on_commit: Callable[[int], None] | None = None,
                 max_batch: int = MAX_BATCH) -> None:
        self._pool = pool
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def commit(self, entry: LogEntry, evidence: Evidence | None = None) -> None:
        """Return once the entry (with its outbox row when released, and its evidence) is committed; else raise
        `LogUnavailable`."""
        if self._closed:
            raise LogUnavailable("access log writer stopped")
        pending = _Pending(entry, evidence)
        self._queue.append(pending)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="access-log group commit")
        self._wake.set()
        # shielded: a cancelled handler (client gone) must not cancel the batch it shares with others
        await asyncio.shield(pending.done)

    async def close(self) -> None:
        """Commit what is queued, then stop; later commits raise `LogUnavailable`."""
        self._closed = True
        if self._task is not None:
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not (self._closed and not self._queue):
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
                await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            await _write(self._pool, batch)
        except _CONNECTION_ERRORS as exc:
            _fail(batch, exc)
            return
        except (asyncpg.PostgresError, _RowsRefused) as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            log.warning("access log batch refused, committing its entries one by one", entries=len(batch),
                        error=type(exc).__name__)
            for one in batch:
                await self._commit_batch([one])
            return
        except Exception as exc:  # never leave an exchange waiting forever on a writer that died
            _fail(batch, exc)
            raise
        if self._on_commit is not None:
            self._on_commit(len(batch))
        for p in batch:
            if not p.done.done():
                p.done.set_result(None)


LOG_WRITER = web.AppKey("log_writer", GroupCommit)


def _json_value(value: object) -> str:
    # orjson writes uuids, aware datetimes (RFC 3339, microseconds), lists and dicts itself; bytea goes as PostgreSQL's
    # hex input form, which jsonb_populate_recordset casts back to the same bytes.
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    raise TypeError(f"{type(value).__name__} is not a column value")


def _rows(columns: tuple[str, ...], rows: list[tuple[object, ...]]) -> bytes:
    return orjson.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=_json_value)


async def _write(pool: asyncpg.Pool, batch: list[_Pending]) -> None:
    try:
        entries = _rows(COLUMNS, [p.entry.args() for p in batch])
        evidence = _rows(EVIDENCE_COLUMNS, [p.evidence.args() for p in batch if p.evidence is not None])
    except (TypeError, orjson.JSONEncodeError) as exc:  # e.g. a lone surrogate in a string: about the rows
        raise _RowsRefused(str(exc)) from exc
    async with pool.acquire() as conn:
        try:
            # one statement, no explicit transaction: one round trip and one implicit, synchronous commit
            await conn.fetchrow(db.queries("broker.tlog", "tlog.sql")["log_batch_insert"],
                                entries.decode(), evidence.decode())
        except _CONNECTION_ERRORS:
            conn.terminate()  # as in db.fetchval: a connection the server dropped must not go back to the pool
            raise


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for p in batch:
        log.error("access log commit failed", error=f"{type(exc).__name__}: {exc}", entry_id=str(p.entry.id))
        if not p.done.done():
            p.done.set_exception(LogUnavailable("access log commit failed"))

