"""What every session of the broker's asks of PostgreSQL when it connects (broker/storage/db.py)."""

from __future__ import annotations

from broker.storage import db


async def test_pooled_sessions_run_without_jit_whatever_else_they_set(database_url: str) -> None:
    plain = await db.create_pool(database_url, min_size=1, max_size=1)
    claims = await db.create_pool(database_url, min_size=1, max_size=1, settings={"synchronous_commit": "off"})
    try:
        assert await plain.fetchval("SHOW jit") == "off"
        assert await claims.fetchval("SHOW jit") == "off"
        assert await claims.fetchval("SHOW synchronous_commit") == "off"
        assert await plain.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await plain.close()
        await claims.close()


async def test_a_single_session_runs_without_jit(database_url: str) -> None:
    conn = await db.connect(database_url)
    try:
        assert await conn.fetchval("SHOW jit") == "off"
    finally:
        await conn.close()
