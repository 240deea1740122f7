"""A real broker for tests: its own database, the API Particulier sandbox over HTTP, a registry, signed calls."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from adapters.sandbox import directory
from broker.app import create_app
from broker.config import Config, load_config
from broker.service.state import STATE
from broker.signing import messages
from broker.signing.keys import PublicKey, public_keys_from_jwks
from tests.factories import CONSUMER, PURPOSE, Consumer

EXCHANGES = "/v1/exchanges"


def pivot(citizen_id: str) -> dict[str, Any]:
    return {"pivot_identity": directory().citizen(citizen_id).pivot.to_json()}


def exchange_body(subject: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "dataset": "quotient_familial",
        "purpose": PURPOSE,
        "recipient": CONSUMER,
        "fields": ["quotient_familial", "enfants"],
        "subject": dict(subject) if subject is not None else pivot("dupont-marie-claire"),
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def broker_config(tmp_path: Path, database_url: str, registry_text: str, **overrides: Any) -> Config:
    registry_file = tmp_path / "registry.toml"
    registry_file.write_text(registry_text)
    # tests sign for the test server's own address, which is known only once it listens: the Host header stands
    # in for DLNUF_PUBLIC_URL (the production path is tested on its own, in tests/service/test_public_url.py)
    overrides.setdefault("host_from_request", True)
    return load_config(env={}, database_url=database_url, state_dir=tmp_path / "state",
                       registry_file=registry_file, registry_poll=0.2, **overrides)


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    request_headers: CIMultiDict[str]

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Harness:
    client: TestClient[web.Request, web.Application]
    consumer: Consumer
    database_url: str
    broker_keys: dict[str, PublicKey] = field(default_factory=dict)

    @property
    def app(self) -> web.Application:
        return self.client.app  # type: ignore[return-value]

    def url(self, path: str = EXCHANGES) -> str:
        return str(self.client.make_url(path))

    def signed_headers(self, body: bytes, *, method: str = "POST", path: str = EXCHANGES,
                       consumer: Consumer | None = None, **sign_args: Any) -> CIMultiDict[str]:
        c = consumer or self.consumer
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
        headers.update(messages.sign_request(method=method, url=self.url(path), headers=headers, body=body,
                                            private_key=c.key, **sign_args))
        return headers

    async def send(self, body: bytes, headers: Mapping[str, str], *, method: str = "POST",
                   path: str = EXCHANGES) -> Answer:
        async with self.client.request(method, path, data=body, headers=headers) as resp:
            return Answer(resp.status, CIMultiDict(resp.headers), await resp.read(), CIMultiDict(headers))

    async def exchange(self, body: Mapping[str, Any] | None = None, **sign_args: Any) -> Answer:
        raw = json.dumps(body if body is not None else exchange_body()).encode()
        return await self.send(raw, self.signed_headers(raw, **sign_args))

    async def verify(self, answer: Answer) -> None:
        """The broker's response signature verifies and binds the answer to the request."""
        from datetime import UTC, datetime

        if not self.broker_keys:
            async with self.client.get("/.well-known/jwks.json") as resp:
                self.broker_keys = {k.kid: k for k in public_keys_from_jwks(await resp.json(), owner="broker")}
        messages.verify_response(status=answer.status, headers=answer.headers, body=answer.body,
                                request_headers=answer.request_headers, lookup_key=self.broker_keys.get,
                                now=datetime.now(UTC))

    async def log_rows(self) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url)
        try:
            # with each row's leaf index, NULL until the integrator gives it (migration 0031)
            return list(await conn.fetch("SELECT a.*, x.log_index FROM access_log a "
                                         "LEFT JOIN tlog_entries x ON x.entry_id = a.id ORDER BY a.logged_at, a.id"))
        finally:
            await conn.close()

    async def attempt_rows(self) -> list[asyncpg.Record]:
        """The unauthenticated attempts, once the broker's buffer is flushed (it flushes every second anyway)."""
        await self.state().attempts.flush()
        conn = await asyncpg.connect(self.database_url)
        try:
            return list(await conn.fetch("SELECT * FROM unauthenticated_attempts ORDER BY seq"))
        finally:
            await conn.close()

    def state(self) -> Any:
        return self.app[STATE]


async def start_broker(aiohttp_client: Any, config: Config, consumer: Consumer) -> Harness:
    client = await aiohttp_client(create_app(config))
    return Harness(client, consumer, config.database_url or "")

