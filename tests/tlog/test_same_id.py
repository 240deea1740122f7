"""A row reusing a genuine entry's id in another month (the broker role may insert into access_log, and with
OVERRIDING SYSTEM VALUE choose its `seq`, so it can even be integrated first) neither takes, hides nor is confused
with the genuine entry: in the API's proofs, in a tlog-proof's public leaf, or in the entry's notification."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from broker.tlog import accesslog, leaves, routes, tlogproof
from broker.tlog.accesslog import LogEntry
from broker.tlog.log import TLOG, TransparencyLog
from tests.tlog.test_tlog import ORIGIN, log_entry, signer


@pytest.fixture
async def tlog(pool: asyncpg.Pool) -> TransparencyLog:
    t = TransparencyLog(pool, signer(), max_merge_delay=60, batch=7)
    await t.ensure_checkpoint()
    return t


@pytest.fixture
async def client(tlog: TransparencyLog, aiohttp_client: Any) -> Any:
    app = web.Application()
    app[TLOG] = tlog
    app.router.add_get("/v1/log/entries/{entry_id}/proof", routes.entry_proof)
    app.router.add_get("/v1/log/entries/{entry_id}/tlog-proof", routes.entry_tlog_proof)
    return await aiohttp_client(app)


async def forge_first(pool: asyncpg.Pool, genuine: LogEntry, logged_at: datetime) -> LogEntry:
    """A row with the genuine entry's id, in another month, inserted while the genuine one waits for its index,
    with a `seq` below it: the integrator takes it first, so it holds the lower index."""
    forged = log_entry(1, released=False)
    forged.id, forged.logged_at = genuine.id, logged_at
    columns = (*accesslog.COLUMNS, "leaf_hash", "seq")
    values = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    await pool.execute(f"INSERT INTO access_log ({', '.join(columns)}) OVERRIDING SYSTEM VALUE VALUES ({values})",
                       *forged.args(), forged.leaf(), -1)
    return forged


def document(entry: LogEntry) -> dict[str, Any]:
    return leaves.entry_document(entry.row())


def at(entry: LogEntry) -> str:
    return str(document(entry)["logged_at"])


async def test_a_tlog_proofs_public_leaf_is_its_indexs(pool: asyncpg.Pool, tlog: TransparencyLog,
                                                       client: Any) -> None:
    """The proof's `extra` (the public leaf) is read at the index the proof is for: before, it was read by id, and
    the row of the same id that the partitions listed first (an older month's) lent its leaf to the genuine
    entry's proof, which then verified for nothing."""
    await pool.execute("SELECT access_log_create_partition($1::date)", (datetime.now(UTC) - timedelta(days=400)).date())
    genuine = log_entry(0)
    await accesslog.commit(pool, genuine)
    await tlog.drain()
    forged = log_entry(1, released=False)
    forged.id, forged.logged_at = genuine.id, datetime.now(UTC) - timedelta(days=400)
    await accesslog.commit(pool, forged)  # integrated after it, at index 1
    await tlog.drain()
    resp = await client.get(f"/v1/log/entries/{genuine.id}/tlog-proof", params={"logged_at": at(genuine)})
    assert resp.status == 200, await resp.text()
    text = await resp.text()
    found, _ = tlogproof.verify(text, tlog.signer.verifier, origin=ORIGIN)  # the public leaf it carries
    assert (found.index, found.extra) == (0, leaves.leaf_data(document(genuine)))
    tlogproof.verify(text, tlog.signer.verifier, origin=ORIGIN, entry=document(genuine))


async def test_an_entrys_proof_is_named_by_its_logged_at(pool: asyncpg.Pool, tlog: TransparencyLog,
                                                        client: Any) -> None:
    """A row with the genuine entry's id, inserted while the genuine entry waited for its index and given a lower
    `seq`, holds the first index. Asked by id and logged_at (the receipt's), the API answers the genuine entry's
    proof; by id alone it refuses, as the id names two entries: before, it answered the copy's (the first index)."""
    genuine = log_entry(0)
    await accesslog.commit(pool, genuine)
    forged = await forge_first(pool, genuine, datetime.now(UTC) - timedelta(days=730))
    assert await tlog.drain() == 2
    indices = {r["logged_at"]: r["log_index"] for r in await pool.fetch(
        "SELECT logged_at, log_index FROM tlog_entries WHERE entry_id = $1", genuine.id)}
    assert indices == {forged.logged_at: 0, genuine.logged_at: 1}

    for route in ("proof", "tlog-proof"):
        resp = await client.get(f"/v1/log/entries/{genuine.id}/{route}", params={"logged_at": at(genuine)})
        assert resp.status == 200, await resp.text()
        if route == "proof":
            assert (await resp.json())["index"] == 1
        else:
            tlogproof.verify(await resp.text(), tlog.signer.verifier, origin=ORIGIN, entry=document(genuine))
        resp = await client.get(f"/v1/log/entries/{genuine.id}/{route}")
        assert resp.status == 400, await resp.text()
        assert "logged_at" in (await resp.json())["detail"]
    resp = await client.get(f"/v1/log/entries/{genuine.id}/proof", params={"logged_at": "2020-01-01T00:00:00Z"})
    assert resp.status == 404
