"""The latest checkpoint a witness quorum cosigned (tlog.sql `tlog_checkpoint_latest_cosigned`, on every journal
page and proof when a quorum is set): the same answer as the plain walk down from the latest checkpoint, without
reading every checkpoint the quorum has not cosigned yet."""

from __future__ import annotations

import random

import asyncpg

from broker.storage import db
from tests.tlog.test_partitions import rows_read

# The statement before it started below the quorum's bound: the reference the new one must agree with.
WALK_DOWN = """
SELECT c.size FROM tlog_checkpoints c
LEFT JOIN LATERAL (SELECT count(*) AS n FROM tlog_cosignatures s WHERE s.size = c.size) w ON true
WHERE $1 = 0 OR w.n >= $1
ORDER BY c.size DESC LIMIT 1
"""


LATEST_COSIGNED = db.queries("broker.tlog", "tlog.sql")["tlog_checkpoint_latest_cosigned"]


async def fill(conn: asyncpg.Connection, checkpoints: int, cosigned: dict[str, list[int]]) -> None:
    await conn.execute("INSERT INTO tlog_checkpoints (size, note) SELECT n, 'note ' || n || E'\\n' "
                       "FROM generate_series(1, $1) AS n", checkpoints)
    await conn.executemany("INSERT INTO tlog_cosignatures (size, witness, line, signed_at) VALUES ($1, $2, $3, 0)",
                           [(size, w, f"— {w} sig") for w, sizes in cosigned.items() for size in sizes])


async def test_it_agrees_with_the_walk_down_on_random_cosignatures(database_url: str) -> None:
    rng = random.Random(14)
    conn = await db.connect(database_url)
    try:
        for trial in range(40):
            tx = conn.transaction()  # the log's tables are append-only: each trial is rolled back
            await tx.start()
            try:
                checkpoints = rng.randint(0, 30)
                witnesses = [f"w{i}.example" for i in range(rng.randint(0, 4))]
                cosigned = {w: rng.sample(range(1, checkpoints + 1), rng.randint(0, checkpoints)) for w in witnesses}
                await fill(conn, checkpoints, cosigned)
                for quorum in range(6):
                    row = await conn.fetchrow(LATEST_COSIGNED, quorum)
                    expected = await conn.fetchval(WALK_DOWN, quorum)
                    assert (row["size"] if row else None) == expected, (trial, quorum, cosigned)
                    if row is not None:
                        lines = [line for line in row["note"].split("\n") if line.startswith("— ")]
                        assert len(lines) == sum(expected in sizes for sizes in cosigned.values())
            finally:
                await tx.rollback()
    finally:
        await conn.close()


async def test_a_lagging_witness_does_not_make_it_read_every_checkpoint_since(database_url: str) -> None:
    """Two of three witnesses stopped at checkpoint 100; the log went on to 5,000 with the third. With a quorum of
    2 the walk down read the 4,900 checkpoints above 100; the statement starts at 100, custom or generic plan."""
    conn = await db.connect(database_url)
    try:
        await fill(conn, 5000, {"a.example": list(range(1, 101)), "b.example": list(range(1, 101)),
                                "c.example": list(range(1, 5001))})
        await conn.execute("ANALYZE tlog_checkpoints, tlog_cosignatures")
        # PREPARE and EXECUTE by name: an EXPLAIN sent with its parameters bound is always planned for their values
        await conn.execute(f"PREPARE latest(int) AS {LATEST_COSIGNED.strip().rstrip(';')}")
        for mode in ("force_custom_plan", "force_generic_plan"):
            async with conn.transaction():
                await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
                assert (await conn.fetchrow(LATEST_COSIGNED, 2))["size"] == 100
                plan = (await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE latest(2)"))[0]["Plan"]
            assert rows_read(plan, "tlog_checkpoints") <= 5, (mode, plan)
        assert await conn.fetchval(WALK_DOWN, 2) == 100
    finally:
        await conn.close()
