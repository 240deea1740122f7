"""Invariant: no data leaves before its log entry is committed; with the database gone the answer is 503, no data.

Two ways of losing the database: the test database refuses connections while the provider is answering (so the
adapter already returned the data when the log commit fails), and the embedded PostgreSQL server really stopped.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.config import load_config
from tests.broker_harness import broker_config, start_broker
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml

PROBLEM = "https://dlnuf.org/problems/"


async def _cut_off(admin_dsn: str, database: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database)
    finally:
        await admin.close()


async def test_log_unwritable_after_the_provider_answered_means_503_and_no_data(
    database_url: str, pg_server: str, aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = database_url.split("?")[0].rsplit("/", 1)[1]
    provider_called = asyncio.Event()

    @web.middleware
    async def database_dies_while_answering(request: web.Request, handler: Any) -> web.StreamResponse:
        if not provider_called.is_set():  # only the first call: the database comes back afterwards
            await _cut_off(pg_server, database)
            provider_called.set()
        return await handler(request)

    upstream = sandbox_app(SANDBOX_TOKEN)
    upstream.middlewares.append(database_dies_while_answering)
    provider = await aiohttp_server(upstream)
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    paris = consumer()
    text = registry_toml([paris], provider_url=str(provider.make_url("")).rstrip("/"))
    h = await start_broker(aiohttp_client, broker_config(tmp_path, database_url, text), paris)

    answer = await h.exchange()
    assert provider_called.is_set(), "the provider must have answered, so the data was in the broker's hands"
    assert answer.status == 503
    problem = answer.json
    assert problem["type"] == PROBLEM + "log-unavailable"
    assert "data" not in problem and "allocataires" not in answer.body.decode()

    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()
    conn = await asyncpg.connect(database_url)
    try:
        released = await conn.fetchval("SELECT count(*) FROM access_log WHERE outcome = 'released'")
    finally:
        await conn.close()
    assert released == 0

    # and once the database is back, the broker works again without a restart
    await asyncio.sleep(0.1)
    again = await h.exchange()
    assert again.status == 200, again.body


async def test_embedded_database_stopped_means_503_and_no_data(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The newcomer's path: no DATABASE_URL, the broker starts its embedded PostgreSQL; then it dies."""
    provider = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    paris = consumer()
    registry_file = tmp_path / "registry.toml"
    registry_file.write_text(registry_toml([paris], provider_url=str(provider.make_url("")).rstrip("/")))
    config = load_config(env={}, state_dir=tmp_path / "state", registry_file=registry_file, host_from_request=True)
    assert config.database_url is None
    h = await start_broker(aiohttp_client, config, paris)

    ok = await h.exchange()
    assert ok.status == 200, ok.body
    assert ok.json["data"]["quotient_familial"]["valeur"] > 0

    from pgserver._commands import pg_ctl  # the wheel's own pg_ctl, to stop the server the hard way

    await asyncio.to_thread(pg_ctl, ["-m", "immediate", "stop"], pgdata=config.state_dir / "pgdata",
                            user="pgserver")
    answer = await h.exchange()
    assert answer.status == 503, answer.body
    assert answer.json["type"] in (PROBLEM + "service-unavailable", PROBLEM + "log-unavailable")
    assert "quotient_familial" not in json.dumps(answer.json)

    async with h.client.get("/readyz") as resp:
        assert resp.status == 503
    async with h.client.get("/healthz") as resp:
        assert resp.status == 200
