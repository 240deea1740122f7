"""Group commit of the access log: one writer per process commits the entries of concurrent exchanges together.

Invariants:
- `GroupCommit.commit` returns only after the COMMIT of a transaction holding the entry, its outbox row (when
  released) and its evidence, or raises `LogUnavailable`: exactly `accesslog.commit`'s promise, so the pipeline's
  rule (no data leaves before its log row is committed) is unchanged. Each exchange awaits its own batch;
- batching as `broker.storage.batch` says: alone, an exchange commits at once; under load, one synchronous commit
  (one WAL flush) serves many exchanges; one bad entry fails alone, a lost database fails its batch (503, no data);
- a batch is one statement sent outside any explicit transaction (tlog.sql `log_batch_insert`): one round trip,
  one implicit transaction, all or nothing;
- the entries' nonce claims committed earlier without waiting for the WAL flush (broker/service/quotas.py): the
  batch's synchronous commit flushes the WAL up to its own record, those claims included, before any answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import asyncpg
import structlog
from aiohttp import web

from broker.errors import LogUnavailable
from broker.observability import tracing
from broker.storage.batch import MAX_BATCH, Batcher, Spans
from broker.tlog import accesslog
from broker.tlog.accesslog import LogEntry
from broker.tlog.evidence import Evidence

log = structlog.get_logger(__name__)

_Item = tuple[LogEntry, Evidence | None]


class GroupCommit(Batcher[_Item, None]):
    """The access-log writer of one event loop. `on_commit(entries)` is told of each committed transaction."""

    name = "access-log group commit"
    spans: ClassVar[Spans] = tracing

    def __init__(self, pool: asyncpg.Pool, *, on_commit: Callable[[int], None] | None = None,
                 max_batch: int = MAX_BATCH) -> None:
        super().__init__(pool, max_batch=max_batch)
        self._on_commit = on_commit

    async def commit(self, entry: LogEntry, evidence: Evidence | None = None) -> None:
        """Return once the entry (with its outbox row when released, and its evidence) is committed; else raise
        `LogUnavailable`."""
        await self.submit((entry, evidence))

    async def _write(self, conn: asyncpg.Connection, items: Sequence[_Item]) -> list[None]:
        await accesslog.write(conn, items)
        return [None] * len(items)

    def _written(self, count: int) -> None:
        if self._on_commit is not None:
            self._on_commit(count)

    def _failed(self, item: _Item, exc: BaseException | None) -> Exception:
        if exc is None:
            return LogUnavailable("access log writer stopped")
        log.error("access log commit failed", error=f"{type(exc).__name__}: {exc}", entry_id=str(item[0].id))
        return LogUnavailable("access log commit failed")


LOG_WRITER = web.AppKey("log_writer", GroupCommit)
