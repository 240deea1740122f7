"""Unauthenticated traffic (issue 13: 300 unsigned POSTs in 3 s added 300 rows to the transparency log): refusals
before a signature verified go to a bounded store, never to the access log, and an address that causes too many
of them is answered 429 at once until its window ends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from broker.observability.metrics import Metrics
from broker.service.attempts import Attempt, AttemptStore, SourceBudget
from broker.storage import db
from tests.broker_harness import Harness, broker_config, exchange_body, start_broker
from tests.factories import consumer, registry_toml

PROBLEM = "https://dlnuf.org/problems/"
UNSIGNED = {"Content-Type": "application/json"}


@pytest.fixture
async def broker(database_url: str, aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Harness]:
    paris = consumer()
    config = broker_config(tmp_path, database_url, registry_toml([paris]), source_limit=(5, 3600))
    yield await start_broker(aiohttp_client, config, paris)


async def test_an_address_over_its_budget_is_turned_away_and_folded_into_one_row(broker: Harness) -> None:
    raw = json.dumps(exchange_body()).encode()
    statuses = [(await broker.send(raw, UNSIGNED)).status for _ in range(12)]
    assert statuses == [401] * 5 + [429] * 7
    turned_away = await broker.send(raw, UNSIGNED)
    assert turned_away.json["type"] == PROBLEM + "too-many-attempts"
    assert 0 < int(turned_away.headers["Retry-After"]) <= 3600
    # while over budget, even a signed request from that address is turned away: its address is the only thing
    # known before the signature is checked, and checking it is the work the budget saves
    assert (await broker.exchange()).status == 429

    assert await broker.log_rows() == []
    rows = await broker.attempt_rows()
    assert [(r["reason"], r["repeated"]) for r in rows] == [("missing-signature", 1)] * 5 + [
        ("source-over-budget", 9)]
    assert rows[-1]["problem_type"] == PROBLEM + "too-many-attempts" and rows[-1]["source"] == "127.0.0.1"
    metrics = broker.state().metrics.render().decode()
    assert 'dlnuf_unauthenticated_refusals_total{reason="missing-signature"} 5.0' in metrics
    assert 'dlnuf_unauthenticated_refusals_total{reason="source-over-budget"} 9.0' in metrics


async def test_verified_requests_do_not_spend_the_budget(broker: Harness) -> None:
    # the sandbox is not running: every exchange is refused by the provider, after the signature verified
    for _ in range(8):
        assert (await broker.exchange()).status == 502
    assert len(await broker.log_rows()) == 8
    assert await broker.attempt_rows() == []


async def test_the_store_is_a_ring_of_bounded_size(database_url: str) -> None:
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    try:
        store = AttemptStore(pool, Metrics(), capacity=100, buffer=80, budget=SourceBudget(10**6, 60))
        for batch in range(4):
            for i in range(70):
                store.record(Attempt(request_id=f"{batch}-{i}", source="192.0.2.1", method="POST",
                                     path="/v1/exchanges", reason="missing-signature",
                                     problem_type=PROBLEM + "signature-rejected", http_status=401))
            assert await store.flush() == 70
        conn = await asyncpg.connect(database_url)
        try:
            count, oldest, newest = await conn.fetchrow(
                "SELECT count(*), min(seq), max(seq) FROM unauthenticated_attempts")
        finally:
            await conn.close()
        assert (count, oldest, newest) == (100, 181, 280)  # the 100 newest of 280, the oldest overwritten
        # what does not fit the buffer is dropped, and counted
        for i in range(90):
            store.record(Attempt(request_id=str(i), source="192.0.2.1", method="POST", path="/", reason="malformed",
                                 problem_type=PROBLEM + "signature-rejected", http_status=401))
        assert await store.flush() == 80
        assert "dlnuf_unauthenticated_dropped_total 10.0" in store.metrics.render().decode()
    finally:
        await pool.close()
