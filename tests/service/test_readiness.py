"""Health (issue 13): /readyz said ready when an adapter could not be built (a missing token variable); two bad
requests opened a provider's breaker for everyone; a wrong base_url answering 404 became subject-not-found."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_particulier import create_app as sandbox_app
from tests.broker_harness import Harness, broker_config, exchange_body, pivot, start_broker
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml

PROBLEM = "https://dlnuf.org/problems/"


async def readyz(broker: Harness) -> tuple[int, dict[str, Any]]:
    async with broker.client.get("/readyz") as resp:
        return resp.status, json.loads(await resp.read())


async def start(database_url: str, aiohttp_client: Any, tmp_path: Path, provider_url: str) -> Harness:
    paris = consumer()
    return await start_broker(aiohttp_client, broker_config(tmp_path, database_url,
                                                            registry_toml([paris], provider_url=provider_url)), paris)


async def test_an_adapter_that_could_not_be_built_is_named(database_url: str, aiohttp_client: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)  # the operator forgot the token variable
    broker = await start(database_url, aiohttp_client, tmp_path, "http://127.0.0.1:9")
    status, ready = await readyz(broker)
    assert status == 200 and ready["status"] == "degraded"
    assert ready["checks"]["providers"] == "not built: api-particulier"
    assert ready["providers"]["api-particulier"].startswith("not built: ")
    assert TOKEN_ENV in ready["providers"]["api-particulier"]
    answer = await broker.exchange()
    assert answer.status == 502 and answer.json["type"] == PROBLEM + "provider-unavailable"


async def test_a_healthy_broker_is_ready(database_url: str, aiohttp_client: Any, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, aiohttp_server: Any) -> None:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    sandbox: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    broker = await start(database_url, aiohttp_client, tmp_path, str(sandbox.make_url("")).rstrip("/"))
    assert await readyz(broker) == (200, {"status": "ready", "checks": {
        "database": "ok", "registry": "version 1", "providers": "ok"}, "providers": {"api-particulier": "closed"}})


async def test_answers_about_people_and_failing_records_do_not_cut_a_provider_off(
        database_url: str, aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        aiohttp_server: Any) -> None:
    # the registry's defaults: 2 retries, 5 failures open the breaker
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    sandbox: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    broker = await start(database_url, aiohttp_client, tmp_path, str(sandbox.make_url("")).rstrip("/"))
    twins = pivot("martin-jean-pierre")
    twins["pivot_identity"]["given_name"] = "Jean"
    for subject, slug in [(pivot("roche-bernard"), "subject-not-found"), (twins, "identity-ambiguous")] * 4:
        assert (await broker.exchange(exchange_body(subject))).json["type"] == PROBLEM + slug
    # two requests about a record the provider fails on (each retried twice: six failed attempts)
    for _ in range(2):
        assert (await broker.exchange(exchange_body(pivot("panne-indisponible")))).status == 502
    assert (await readyz(broker))[1]["providers"] == {"api-particulier": "closed"}
    assert (await broker.exchange()).status == 200


async def test_a_wrong_base_url_answering_404_is_a_misconfiguration(database_url: str, aiohttp_client: Any,
                                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   aiohttp_server: Any) -> None:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    elsewhere: TestServer = await aiohttp_server(web.Application())  # any web server's 404 page
    broker = await start(database_url, aiohttp_client, tmp_path, str(elsewhere.make_url("")).rstrip("/"))
    answer = await broker.exchange()
    assert (answer.status, answer.json["type"]) == (502, PROBLEM + "provider-misconfigured")
    [row] = await broker.log_rows()
    assert row["outcome"] == "failed" and row["problem_type"] == PROBLEM + "provider-misconfigured"
