"""The broker's one HTTP client to providers keeps no cookies: a cookie one exchange's provider answer sets must
never travel with another exchange (another consumer's, another citizen's), so no provider-side session can tie
exchanges together through the broker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_particulier import create_app as sandbox_app
from tests.broker_harness import broker_config, start_broker
from tests.factories import CONSUMER, SANDBOX_TOKEN, TOKEN_ENV, Consumer, consumer, registry_toml

PARIS = consumer()


async def test_a_cookie_set_by_a_provider_is_never_sent_back(database_url: str, aiohttp_client: Any,
                                                              aiohttp_server: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[str | None] = []

    @web.middleware
    async def cookies(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        received.append(request.headers.get("Cookie"))
        response = await handler(request)
        response.set_cookie("provider_session", f"exchange-{len(received)}", path="/")
        return response

    app = sandbox_app(SANDBOX_TOKEN)
    app.middlewares.append(cookies)
    server: TestServer = await aiohttp_server(app)
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    # a host name: aiohttp's default jar ignores cookies from IP addresses, but a provider has a name
    url = str(server.make_url("")).rstrip("/").replace("127.0.0.1", "localhost")
    registry = registry_toml([PARIS], provider_url=url)
    broker = await start_broker(aiohttp_client, broker_config(tmp_path, database_url, registry),
                                Consumer(CONSUMER, PARIS.key))
    for _ in range(3):
        answer = await broker.exchange()
        assert answer.status == 200, answer.body
    assert received == [None, None, None]
