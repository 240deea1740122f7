"""Batched nonce claims on a real PostgreSQL: concurrent claims share a statement and each gets exactly the answer
and the quota count it would have had alone; a nonce is claimed once, within a batch, across batches and across
processes (two pools); a lost database fails every claim of the batch."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from broker.service.claims import Claim, ClaimBatcher, ClaimResult
from broker.storage import db
from broker.storage.db import DatabaseUnavailable

EXPIRES = datetime.now(UTC) + timedelta(days=1)
CONSUMER = ("c:21750001600019:86400", 86400)
HABILITATION = ("h:cantine-qf:86400", 86400)


class CountingBatcher(ClaimBatcher):
    """Records the size of each statement it sent."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.batches: list[int] = []

    def _written(self, count: int) -> None:
        self.batches.append(count)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url, min_size=1, max_size=4, settings={"synchronous_commit": "off"})
    yield pool
    await pool.close()


def claim(nonce: str | None = None, *scopes: tuple[str, int], kid: str = "k1") -> Claim:
    return Claim(kid, nonce or secrets.token_urlsafe(16), EXPIRES, scopes)


def counts(results: list[ClaimResult], scope: str) -> list[int]:
    return sorted(c.used for r in results for c in r.counts if c.scope == scope)


async def used(pool: asyncpg.Pool, scope: str) -> int:
    return int(await pool.fetchval("SELECT used FROM quota_usage WHERE scope = $1", scope))


async def test_concurrent_claims_share_a_statement_and_each_counts_once(pool: asyncpg.Pool) -> None:
    claims = CountingBatcher(pool)
    # every third exchange has a habilitation quota on top of the consumer's
    batch = [claim(None, CONSUMER, *([HABILITATION] if n % 3 == 0 else [])) for n in range(60)]
    results = await asyncio.gather(*(claims.claim(c) for c in batch))
    await claims.close()
    assert all(r.claimed for r in results)
    assert sum(claims.batches) == 60 and len(claims.batches) < 60
    assert counts(results, CONSUMER[0]) == list(range(1, 61))  # each count once: exactly as claims one by one
    assert counts(results, HABILITATION[0]) == list(range(1, 21))
    assert [len(r.counts) for r in results] == [2 if n % 3 == 0 else 1 for n in range(60)]
    assert (await used(pool, CONSUMER[0]), await used(pool, HABILITATION[0])) == (60, 20)
    assert all(0 < c.reset <= 86400 for r in results for c in r.counts)


async def test_a_nonce_twice_in_one_batch_is_claimed_once_and_counted_once(pool: asyncpg.Pool) -> None:
    claims = ClaimBatcher(pool)
    first, replay = claim("n-1", CONSUMER), claim("n-1", CONSUMER)
    other_key = claim("n-1", CONSUMER, kid="k2")  # a nonce is unique per key, not across keys
    results = await asyncio.gather(claims.claim(first), claims.claim(replay), claims.claim(other_key))
    await claims.close()
    assert [r.claimed for r in results] == [True, False, True]
    assert results[1].counts == ()
    assert counts(results, CONSUMER[0]) == [1, 2]
    assert await used(pool, CONSUMER[0]) == 2


async def test_a_replay_in_a_later_batch_is_refused_and_counts_nothing(pool: asyncpg.Pool) -> None:
    claims = ClaimBatcher(pool)
    assert (await claims.claim(claim("n-2", CONSUMER))).claimed
    again = await claims.claim(claim("n-2", CONSUMER))
    await claims.close()
    assert not again.claimed and again.counts == ()
    assert await used(pool, CONSUMER[0]) == 1


async def test_two_processes_claim_each_nonce_once_and_count_every_claim(pool: asyncpg.Pool,
                                                                         database_url: str) -> None:
    other_pool = await db.create_pool(database_url, min_size=1, max_size=4, settings={"synchronous_commit": "off"})
    a, b = ClaimBatcher(pool), ClaimBatcher(other_pool)
    nonces = [secrets.token_urlsafe(8) for _ in range(80)]
    # both processes receive every nonce (a replay through another node), with both quota scopes, in other orders
    jobs = [a.claim(claim(n, CONSUMER, HABILITATION)) for n in nonces]
    jobs += [b.claim(claim(n, CONSUMER, HABILITATION)) for n in reversed(nonces)]
    results = await asyncio.gather(*jobs)
    await a.close()
    await b.close()
    await other_pool.close()
    won = [r for r in results if r.claimed]
    assert len(won) == 80  # each nonce exactly once, whichever process won it
    assert counts(won, CONSUMER[0]) == list(range(1, 81)) == counts(won, HABILITATION[0])
    assert await used(pool, CONSUMER[0]) == 80


async def test_a_new_window_starts_counting_from_the_batch(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO quota_usage (scope, window_seconds, window_start, used) VALUES ($1, $2, 0, 999)",
                       *CONSUMER)
    claims = ClaimBatcher(pool)
    results = await asyncio.gather(*(claims.claim(claim(None, CONSUMER)) for _ in range(5)))
    await claims.close()
    assert counts(results, CONSUMER[0]) == [1, 2, 3, 4, 5]


async def test_claims_without_quota_are_claimed_and_count_nothing(pool: asyncpg.Pool) -> None:
    claims = ClaimBatcher(pool)
    results = await asyncio.gather(*(claims.claim(claim()) for _ in range(4)))
    await claims.close()
    assert all(r.claimed and r.counts == () for r in results)
    assert await pool.fetchval("SELECT count(*) FROM quota_usage") == 0


async def test_a_lost_database_fails_every_claim_of_the_batch(database_url: str) -> None:
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    claims = ClaimBatcher(pool)
    await pool.close()
    results = await asyncio.gather(*(claims.claim(claim(None, CONSUMER)) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, DatabaseUnavailable) for r in results)
    await claims.close()
    with pytest.raises(DatabaseUnavailable):  # closed: refuses at once
        await claims.claim(claim())
