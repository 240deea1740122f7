"""A real broker (its own database, the API Particulier sandbox over HTTP) and a real gateway in front of it, with
the gateway's record in a database of its own; a transparent proxy can sit between the two."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.gateway.app import Trust, create_gateway_app, start
from broker.gateway.config import GatewayConfig, load_gateway_config
from broker.signing.keys import PrivateKey
from broker.storage import db
from tests.broker_harness import Harness, broker_config, pivot, start_broker
from tests.conftest import _with_database
from tests.factories import CONSUMER, PURPOSE, SANDBOX_TOKEN, TOKEN_ENV, Consumer, consumer, registry_toml
from tests.proxy_harness import TamperingProxy

GATEWAY_PROBLEM = "https://dlnuf.org/problems/gateway/"
BROKER_PROBLEM = "https://dlnuf.org/problems/"


def ask(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"dataset": "quotient_familial", "purpose": PURPOSE, "recipient": CONSUMER,
                            "fields": ["quotient_familial", "enfants"], "subject": pivot("dupont-marie-claire")}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class GatewayUnderTest:
    url: str
    config: GatewayConfig
    trust: Trust
    record_url: str
    app: web.Application
    connector: Callable[[], aiohttp.BaseConnector | None] = lambda: None
    headers: dict[str, str] = field(default_factory=dict)

    async def call(self, path: str, *, body: bytes, content_type: str = "application/json",
                   headers: dict[str, str] | None = None, method: str = "POST") -> Answer:
        async with aiohttp.ClientSession(connector=self.connector()) as session, session.request(
                method, self.url + path, data=body,
                headers={"Content-Type": content_type, **self.headers, **(headers or {})}) as resp:
            return Answer(resp.status, dict(resp.headers), await resp.read())

    async def exchange(self, body: dict[str, Any] | None = None, **headers: str) -> Answer:
        return await self.call("/v1/exchanges", body=json.dumps(body if body is not None else ask()).encode(),
                               headers=headers)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return await self.call(path, body=b"", method="GET", headers=headers)

    async def records(self) -> list[dict[str, Any]]:
        conn = await db.connect(self.record_url)  # with the JSON codecs
        try:
            return [dict(r) for r in await conn.fetch("SELECT * FROM gateway_calls ORDER BY sent_at, id")]
        finally:
            await conn.close()


StartGateway = Callable[..., Awaitable[GatewayUnderTest]]


@pytest.fixture
async def record_urls(pg_server: str) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Empty databases for gateways' records (each gateway migrates its own)."""
    made: list[str] = []

    async def make() -> str:
        name = f"dlnuf_gw_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(pg_server)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        made.append(name)
        return _with_database(pg_server, name)

    yield make
    admin = await asyncpg.connect(pg_server)
    try:
        for name in made:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> str:
    server: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN, slow_delay=3.0))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def paris() -> Consumer:
    return consumer()


@pytest.fixture
async def broker(database_url: str, aiohttp_client: Any, sandbox: str, paris: Consumer, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    text = registry_toml([paris], provider_url=sandbox, timeout=2.0)
    (tmp_path / "broker").mkdir()
    yield await start_broker(aiohttp_client, broker_config(tmp_path / "broker", database_url, text), paris)


@pytest.fixture
async def start_gateway(record_urls: Callable[[], Awaitable[str]], tmp_path: Path,
                        ) -> AsyncIterator[StartGateway]:
    runners: list[web.AppRunner] = []

    async def go(broker_url: str, key: PrivateKey, *, siret: str = CONSUMER, record_url: str | None = None,
                 **overrides: Any) -> GatewayUnderTest:
        record = record_url or await record_urls()
        config = load_gateway_config(env={}, broker_url=broker_url, siret=siret, key_file=tmp_path / "unused.jwk",
                                     database_url=record, state_dir=tmp_path / "gateway", port=0, **overrides)
        trust = Trust.load(config, key)
        app = create_gateway_app(config, trust)
        runner, url = await start(app, config)
        runners.append(runner)
        return GatewayUnderTest(url, config, trust, record, app)

    yield go
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def gateway(broker: Harness, start_gateway: StartGateway) -> GatewayUnderTest:
    return await start_gateway(broker.url("/").rstrip("/"), broker.consumer.key)


@pytest.fixture
async def proxy(broker: Harness, aiohttp_server: Any) -> TamperingProxy:
    proxy = TamperingProxy(broker.url("/").rstrip("/"))
    server: TestServer = await aiohttp_server(proxy.app())
    proxy.url = str(server.make_url("")).rstrip("/")
    return proxy


@pytest.fixture
async def proxied_gateway(broker: Harness, proxy: TamperingProxy, start_gateway: StartGateway) -> GatewayUnderTest:
    """A gateway whose way to the broker goes through the proxy."""
    return await start_gateway(proxy.url, broker.consumer.key)
