"""The gateway's record in its own PostgreSQL database: every call it signed, before it leaves, and its answer,
before anything is passed on.

Invariant: `sent` either stores the call or raises `RecordUnavailable`, and a (key, nonce) pair is stored at most
once, so the gateway cannot send a signed request twice; `answered` completes a call once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import asyncpg
import structlog

from broker.gateway.errors import RecordUnavailable
from broker.storage import db, ids

log = structlog.get_logger(__name__)

PACKAGE = "broker.gateway"
MIGRATIONS_TABLE = "gateway_schema_migrations"
Outcome = Literal["released", "refused", "failed", "unverified", "unreachable"]
Kind = Literal["exchange", "token", "par"]


def _q() -> dict[str, str]:
    return db.queries(PACKAGE, "gateway.sql")


@dataclass(frozen=True, slots=True)
class Sent:
    """A call as it leaves: who asked, with which key and nonce, to where, with which signed fields and body."""

    kind: Kind
    sent_at: datetime
    caller: str
    consumer: str
    kid: str
    target_uri: str
    nonce: str
    request_headers: Mapping[str, str]
    with_token: bool = False
    request_body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Answered:
    """What came back, and what the gateway made of it."""

    answered_at: datetime
    outcome: Outcome
    status: int | None = None
    problem_type: str | None = None
    reason: str | None = None
    verification: Literal["bound", "unbound"] | None = None
    broker_request_id: str | None = None
    log_entry_id: uuid.UUID | None = None
    inclusion_promise: str | None = None
    response_headers: Mapping[str, str] | None = None
    response_body: bytes | None = None


class Record:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def sent(self, call: Sent) -> uuid.UUID:
        record_id = ids.uuid7()  # time-ordered, as the log's entry ids: the records' key grows at its right edge
        try:
            await self.pool.execute(
                _q()["call_sent"], record_id, call.kind, call.sent_at, call.caller, call.consumer, call.kid,
                call.target_uri, call.nonce, dict(call.request_headers), call.with_token, call.request_body)
        except asyncpg.UniqueViolationError:
            # a nonce is fresh randomness: meeting it again is a bug or an attack, never a reason to send
            raise RecordUnavailable(f"nonce {call.nonce!r} already recorded for key {call.kid!r}") from None
        except db.DB_ERRORS as exc:
            raise RecordUnavailable(f"the record could not store the call: {type(exc).__name__}: {exc}") from None
        return record_id

    async def answered(self, record_id: uuid.UUID, answer: Answered) -> None:
        try:
            done = await self.pool.fetchval(
                _q()["call_answered"], record_id, answer.answered_at, answer.outcome, answer.status,
                answer.problem_type, answer.reason, answer.verification, answer.broker_request_id,
                answer.log_entry_id, answer.inclusion_promise,
                None if answer.response_headers is None else dict(answer.response_headers), answer.response_body)
        except db.DB_ERRORS as exc:
            raise RecordUnavailable(f"the record could not store the answer: {type(exc).__name__}: {exc}") from None
        if done is None:
            raise RecordUnavailable(f"call {record_id} is not awaiting an answer")

    async def get(self, record_id: uuid.UUID) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(_q()["call_get"], record_id)
        return None if row is None else dict(row)

    async def ping(self) -> None:
        await db.fetchval(self.pool, _q()["ping"])


async def migrate(dsn: str) -> list[db.Migration]:
    conn = await db.connect(dsn)
    try:
        return await db.migrate(conn, package=PACKAGE, table=MIGRATIONS_TABLE)
    finally:
        await conn.close()


@asynccontextmanager
async def opened(database_url: str | None, state_dir: Path) -> AsyncIterator[Record]:
    """The record on `database_url`, or on an embedded PostgreSQL under `state_dir` (started here, stopped after),
    migrated."""
    embedded: db.EmbeddedPostgres | None = None
    if database_url is None:
        embedded = await asyncio.to_thread(db.EmbeddedPostgres, state_dir / "pgdata")
        dsn = embedded.dsn()
        log.info("embedded PostgreSQL started for the gateway's record", data_dir=str(embedded.data_dir))
    else:
        dsn = database_url
    try:
        await migrate(dsn)
        pool = await db.create_pool(dsn, min_size=1, max_size=10)
        try:
            yield Record(pool)
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
