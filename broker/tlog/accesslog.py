"""The access log: one row per exchange attempt, refused ones included.

Invariant: the pipeline commits an entry before any data leaves; `commit` either returns after COMMIT or raises
`LogUnavailable`, and then the caller answers 503 with no data. A released entry's notification outbox row is
committed in the same transaction, so a citizen is never told of an exchange that was not logged, nor not told of
one that was.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import structlog

from broker.errors import LogUnavailable
from broker.registry import Habilitation
from broker.storage import db

log = structlog.get_logger(__name__)


# The columns `args()` fills, in its order: also the fields of the entry's transparency-log leaf.
COLUMNS = (
    "id", "logged_at", "request_id", "consumer", "kid", "dataset", "dataset_version", "purpose", "recipient",
    "habilitation_id", "legal_basis_type", "legal_basis_title", "legal_basis_url", "fields_requested",
    "fields_released", "outcome", "problem_type", "http_status", "latency_ms", "payload_sha256", "subject_key",
)


@dataclass(slots=True)
class LogEntry:
    """Filled in step by step as the pipeline learns more, then committed once."""

    request_id: str
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    logged_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    consumer: str | None = None
    kid: str | None = None
    dataset: str | None = None
    dataset_version: int | None = None
    purpose: str | None = None
    recipient: str | None = None
    habilitation: Habilitation | None = None
    fields_requested: tuple[str, ...] = ()
    fields_released: tuple[str, ...] = ()
    outcome: str = "refused"
    problem_type: str | None = None
    http_status: int = 0
    latency_ms: float = 0.0
    payload_sha256: str | None = None
    subject_key: str | None = None

    def args(self) -> tuple[object, ...]:
        hab = self.habilitation
        return (
            self.id, self.logged_at, self.request_id, self.consumer, self.kid, self.dataset, self.dataset_version,
            self.purpose, self.recipient,
            hab.id if hab else None,
            hab.legal_basis.type if hab else None,
            hab.legal_basis.title if hab else None,
            hab.legal_basis.url if hab else None,
            list(self.fields_requested), list(self.fields_released), self.outcome, self.problem_type,
            self.http_status, self.latency_ms, self.payload_sha256, self.subject_key,
        )

    def row(self) -> dict[str, object]:
        """The row as committed, by column name."""
        return dict(zip(COLUMNS, self.args(), strict=True))


async def _commit_released(pool: asyncpg.Pool, entry: LogEntry) -> None:
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                await conn.execute(db.queries()["access_log_insert"], *entry.args())
                await conn.execute(db.queries("broker.tlog", "tlog.sql")["outbox_insert"], entry.id)
        except (asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresConnectionError, OSError):
            # as in db.fetchval: a connection the server dropped must not go back to the pool
            conn.terminate()
            raise


async def commit(pool: asyncpg.Pool, entry: LogEntry) -> None:
    try:
        if entry.outcome == "released":
            await _commit_released(pool, entry)
        else:
            await db.fetchval(pool, db.queries()["access_log_insert"], *entry.args())
    except db.DB_ERRORS as exc:
        log.error("access log commit failed", error=f"{type(exc).__name__}: {exc}", entry_id=str(entry.id))
        raise LogUnavailable("access log commit failed") from exc
