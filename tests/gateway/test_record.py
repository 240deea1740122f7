"""The gateway's own database: its migrations give the expected schema, apart from the broker's; every named query
prepares against it; a nonce is recorded at most once per key; a call is answered once."""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from broker.gateway import record
from broker.gateway.errors import RecordUnavailable
from broker.storage import db
from tests.storage.test_migrations import describe

EXPECTED = Path(__file__).parent / "data" / "schema.txt"


def _sent(nonce: str = "n-1", kid: str = "k") -> record.Sent:
    return record.Sent(kind="exchange", sent_at=datetime.now(UTC), caller="loopback", consumer="21750001600019",
                       kid=kid, target_uri="https://dlnuf.example/v1/exchanges", nonce=nonce,
                       request_headers={"Signature": "sig1=:AA==:"}, request_body=b"{}")


async def test_migrated_schema_is_expected(record_urls: Callable[[], Awaitable[str]]) -> None:
    dsn = await record_urls()
    applied = await record.migrate(dsn)
    assert [m.version for m in applied] == [m.version for m in db.migrations(record.PACKAGE)]
    assert await record.migrate(dsn) == []  # twice: nothing
    actual = await describe(dsn)
    if os.environ.get("DLNUF_UPDATE_SCHEMA") == "1":
        EXPECTED.write_text(actual)
    assert actual == EXPECTED.read_text(), "schema drifted: review, then rerun with DLNUF_UPDATE_SCHEMA=1"
    assert "column schema_migrations." not in actual and "access_log" not in actual  # none of the broker's


async def test_every_named_query_prepares(record_urls: Callable[[], Awaitable[str]]) -> None:
    dsn = await record_urls()
    await record.migrate(dsn)
    conn = await db.connect(dsn)
    try:
        for name, sql in db.queries(record.PACKAGE, "gateway.sql").items():
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError as exc:  # pragma: no cover - the message is the point
                raise AssertionError(f"gateway.sql: query {name}: {exc}") from exc
    finally:
        await conn.close()


async def test_a_nonce_is_recorded_once_and_a_call_answered_once(record_urls: Callable[[], Awaitable[str]],
                                                                 tmp_path: Path) -> None:
    dsn = await record_urls()
    async with record.opened(dsn, tmp_path) as rec:
        first = await rec.sent(_sent())
        await rec.sent(_sent(kid="another-key"))  # the same nonce with another key is another signature
        with pytest.raises(RecordUnavailable, match="already recorded"):
            await rec.sent(_sent())
        answer = record.Answered(datetime.now(UTC), "refused", status=403)
        await rec.answered(first, answer)
        with pytest.raises(RecordUnavailable, match="not awaiting an answer"):
            await rec.answered(first, answer)
        with pytest.raises(RecordUnavailable):
            await rec.answered(uuid.uuid4(), answer)
        row = await rec.get(first)
    assert row is not None and (row["outcome"], row["status"]) == ("refused", 403)
