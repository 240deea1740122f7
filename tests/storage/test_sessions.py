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


async def test_sessions_compute_dates_in_utc_whatever_the_servers_zone(database_url: str) -> None:
    """`log prune`'s cutoffs are computed in SQL, `log verify`'s in Python in UTC: the session's TimeZone must be UTC,
    whatever the server's (a French server's default is likely Europe/Paris)."""
    conn = await db.connect(database_url)
    try:
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(f"ALTER DATABASE \"{database}\" SET TimeZone = 'Europe/Paris'")
    finally:
        await conn.close()
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    conn = await db.connect(database_url)
    try:
        assert await pool.fetchval("SHOW TimeZone") == "UTC"
        assert await conn.fetchval("SHOW TimeZone") == "UTC"
        # the day clocks change in Paris: one day before 11:45Z is 11:45Z the day before, not 12:45Z
        assert await pool.fetchval("SELECT ('2026-03-29 11:45Z'::timestamptz - interval '1 day')::text") == \
            "2026-03-28 11:45:00+00"
    finally:
        await pool.close()
        await conn.close()
