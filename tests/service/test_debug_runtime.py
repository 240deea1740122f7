"""The soak's view of a broker process (`GET /_debug/runtime`): absent by default, counts when switched on."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

from tests.broker_harness import broker_config, start_broker
from tests.factories import consumer, registry_toml


async def test_absent_unless_switched_on(database_url: str, aiohttp_client: Any, tmp_path: Path) -> None:
    paris = consumer()
    broker = await start_broker(aiohttp_client, broker_config(tmp_path, database_url, registry_toml([paris])), paris)
    async with broker.client.get("/_debug/runtime") as resp:
        assert resp.status == 404


async def test_counts_and_allocations(database_url: str, aiohttp_client: Any, tmp_path: Path) -> None:
    paris = consumer()
    config = broker_config(tmp_path, database_url, registry_toml([paris]), debug_runtime=True)
    broker = await start_broker(aiohttp_client, config, paris)
    async with broker.client.get("/_debug/runtime?top=5") as resp:
        assert resp.status == 200
        doc = json.loads(await resp.read())
    assert doc["rss_bytes"] > 10 * 2**20 and doc["open_fds"] > 3 and doc["tasks"] >= 1
    assert set(doc["pools"]) == {"main", "claims"} and doc["pools"]["main"]["size"] >= 1
    assert doc["allocations"]["tracing"] is tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        async with broker.client.get("/_debug/runtime?baseline=1") as resp:
            assert resp.status == 200
        kept = [bytearray(4096) for _ in range(100)]  # 400 KiB that outlive the baseline, allocated on this line
        async with broker.client.get("/_debug/runtime?top=3") as resp:
            allocations = json.loads(await resp.read())["allocations"]
    finally:
        tracemalloc.stop()
    assert allocations["tracing"] and len(allocations["top"]) == 3
    assert any("test_debug_runtime.py" in g["where"] and g["bytes"] >= 400 * 1024 for g in allocations["growth"])
    assert len(kept) == 100
