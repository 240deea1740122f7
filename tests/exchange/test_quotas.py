"""Quotas (issue 13): per consumer and per habilitation, from the registry or the broker's default, counted in
PostgreSQL for every broker sharing the database, enforced after the signature verified and before any provider
call; 429 with Retry-After and the IETF RateLimit fields (parsed here with http_sf, an independent parser)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import http_sf
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_particulier import create_app as sandbox_app
from tests.broker_harness import Answer, Harness, broker_config, exchange_body, start_broker
from tests.factories import CONSUMER, SANDBOX_TOKEN, TOKEN_ENV, Consumer, consumer, registry_toml

PROBLEM = "https://dlnuf.org/problems/"
DAY = 86_400  # windows are aligned on the epoch: a day-long one does not roll over during a test (see `settle`)


class Provider:
    """The API Particulier sandbox, counting the calls it receives."""

    def __init__(self) -> None:
        self.calls = 0
        self.url = ""

    @web.middleware
    async def count(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        self.calls += 1
        return await handler(request)


@pytest.fixture
async def provider(aiohttp_server: Any) -> Provider:
    p = Provider()
    app = sandbox_app(SANDBOX_TOKEN)
    app.middlewares.append(p.count)
    server: TestServer = await aiohttp_server(app)
    p.url = str(server.make_url("")).rstrip("/")
    return p


async def settle(window: int = DAY) -> None:
    """Not within two seconds of a window's end, so a test's requests share one window."""
    left = window - time.time() % window
    if left < 2:
        await asyncio.sleep(left + 0.1)


def directory(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    return path


async def broker_with(database_url: str, aiohttp_client: Any, tmp_path: Path, provider: Provider,
                      monkeypatch: pytest.MonkeyPatch, registry: str, **config: Any) -> Harness:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    await settle()
    built = broker_config(tmp_path, database_url, registry, **{k: v for k, v in config.items() if v is not None})
    # load_config ignores None overrides (they mean "not given"): a setting turned off is replaced afterwards
    built = dataclasses.replace(built, **{k: v for k, v in config.items() if v is None})
    return await start_broker(aiohttp_client, built, Consumer(CONSUMER, PARIS.key))


PARIS = consumer()


def rate_limit(answer: Answer) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(RateLimit-Policy, RateLimit) by policy name, parsed as RFC 8941 lists by http_sf."""
    def parsed(name: str) -> dict[str, dict[str, Any]]:
        return {str(item): params for item, params in http_sf.parse(answer.headers[name].encode(), tltype="list")}
    return parsed("RateLimit-Policy"), parsed("RateLimit")


async def test_consumer_quota_from_the_registry(database_url: str, aiohttp_client: Any, tmp_path: Path,
                                                provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = registry_toml([PARIS], provider_url=provider.url).replace(
        'roles = ["consumer"]', f'roles = ["consumer"]\nquota = {{ limit = 3, window = {DAY} }}')
    broker = await broker_with(database_url, aiohttp_client, tmp_path, provider, monkeypatch, registry)
    for remaining in (2, 1, 0):
        answer = await broker.exchange()
        assert answer.status == 200, answer.body
        policy, current = rate_limit(answer)
        assert policy == {"consumer": {"q": 3, "w": DAY}}
        assert current["consumer"]["r"] == remaining and 0 < current["consumer"]["t"] <= DAY
    assert provider.calls == 3

    refused = await broker.exchange()
    assert refused.status == 429 and refused.headers["Content-Type"].startswith("application/problem+json")
    problem = refused.json
    assert problem["type"] == PROBLEM + "quota-exceeded"
    assert "consumer quota (3/86400s)" in problem["detail"]
    retry_after = int(refused.headers["Retry-After"])
    _, current = rate_limit(refused)
    assert current["consumer"]["r"] == 0 and 0 < retry_after <= DAY and retry_after == current["consumer"]["t"]
    assert provider.calls == 3, "an exchange over quota must not reach the provider"
    await broker.verify(refused)  # signed and bound to the request, as every answer to a verified request

    rows = await broker.log_rows()
    assert [r["outcome"] for r in rows] == ["released"] * 3 + ["refused"]
    # a verified consumer's refusal stays in the access log, with what it asked
    assert (rows[-1]["consumer"], rows[-1]["problem_type"], rows[-1]["http_status"], rows[-1]["dataset"]) == (
        CONSUMER, PROBLEM + "quota-exceeded", 429, "quotient_familial")
    async with broker.client.get("/metrics") as resp:
        assert 'dlnuf_quota_refusals_total{scope="consumer"} 1.0' in await resp.text()


async def test_habilitation_quota_on_top_of_the_consumers(database_url: str, aiohttp_client: Any, tmp_path: Path,
                                                          provider: Provider,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    registry = registry_toml([PARIS], provider_url=provider.url,
                             habilitation_extra=f"quota = {{ limit = 2, window = {DAY} }}")
    broker = await broker_with(database_url, aiohttp_client, tmp_path, provider, monkeypatch, registry,
                               quota_default=(100, DAY))
    assert [(await broker.exchange()).status for _ in range(2)] == [200, 200]
    refused = await broker.exchange()
    assert refused.status == 429 and "habilitation quota (2/86400s)" in refused.json["detail"]
    policy, current = rate_limit(refused)
    assert policy == {"consumer": {"q": 100, "w": DAY}, "habilitation": {"q": 2, "w": DAY}}
    assert current["consumer"]["r"] == 97 and current["habilitation"]["r"] == 0
    # another dataset, without a habilitation quota: only the consumer's counts (and the refusal is not-authorized)
    other = await broker.exchange(exchange_body(dataset="statut_etudiant", fields=["admissions"]))
    assert other.status == 403
    _, current = rate_limit(other)
    assert set(current) == {"consumer"} and current["consumer"]["r"] == 96
    assert provider.calls == 2


async def test_the_default_quota_applies_when_the_registry_gives_none(
        database_url: str, aiohttp_client: Any, tmp_path: Path, provider: Provider,
        monkeypatch: pytest.MonkeyPatch) -> None:
    registry = registry_toml([PARIS], provider_url=provider.url)
    broker = await broker_with(database_url, aiohttp_client, tmp_path, provider, monkeypatch, registry,
                               quota_default=(1, DAY))
    assert (await broker.exchange()).status == 200
    assert (await broker.exchange()).status == 429
    assert provider.calls == 1


async def test_no_default_quota_means_no_limit_and_no_fields(database_url: str, aiohttp_client: Any,
                                                             tmp_path: Path, provider: Provider,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    registry = registry_toml([PARIS], provider_url=provider.url)
    broker = await broker_with(database_url, aiohttp_client, tmp_path, provider, monkeypatch, registry,
                               quota_default=None)
    answer = await broker.exchange()
    assert answer.status == 200 and "RateLimit" not in answer.headers


async def two_brokers(database_url: str, aiohttp_client: Any, tmp_path: Path, provider: Provider,
                      monkeypatch: pytest.MonkeyPatch, quota: tuple[int, int]) -> tuple[Harness, Harness]:
    registry = registry_toml([PARIS], provider_url=provider.url)
    return (await broker_with(database_url, aiohttp_client, directory(tmp_path / "a"), provider, monkeypatch,
                              registry, quota_default=quota, pool_max=4),
            await broker_with(database_url, aiohttp_client, directory(tmp_path / "b"), provider, monkeypatch,
                              registry, quota_default=quota, pool_max=4))


async def test_two_brokers_on_one_database_share_the_count(database_url: str, aiohttp_client: Any, tmp_path: Path,
                                                           provider: Provider,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = await two_brokers(database_url, aiohttp_client, tmp_path, provider, monkeypatch, (5, DAY))
    statuses = [(await b.exchange()).status for b in (first, second) * 4]
    assert statuses == [200] * 5 + [429] * 3  # one after the other: exact, whichever broker is asked
    assert provider.calls == 5


async def test_concurrent_exchanges_are_counted_exactly(database_url: str, aiohttp_client: Any, tmp_path: Path,
                                                         provider: Provider,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = await two_brokers(database_url, aiohttp_client, tmp_path, provider, monkeypatch, (5, DAY))
    answers = await asyncio.gather(*(b.exchange() for b in (first, second) * 15))
    assert sorted(a.status for a in answers) == [200] * 5 + [429] * 25
    assert provider.calls == 5


async def test_a_replayed_nonce_counts_nothing(database_url: str, aiohttp_client: Any, tmp_path: Path,
                                              provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = registry_toml([PARIS], provider_url=provider.url)
    broker = await broker_with(database_url, aiohttp_client, tmp_path, provider, monkeypatch, registry,
                               quota_default=(2, DAY))
    raw = b'{"dataset": "quotient_familial"}'
    headers = broker.signed_headers(raw)
    assert (await broker.send(raw, headers)).status == 400  # verified (so counted), then refused for its shape
    replayed = await broker.send(raw, headers)
    assert replayed.status == 401  # refused as a replay before anything is counted
    answer = await broker.exchange()
    assert answer.status == 200
    assert rate_limit(answer)[1]["consumer"]["r"] == 0


async def test_only_the_claims_pool_commits_without_waiting_for_the_flush(
        database_url: str, aiohttp_client: Any, tmp_path: Path, provider: Provider,
        monkeypatch: pytest.MonkeyPatch) -> None:
    broker = await broker_with(database_url, aiohttp_client, tmp_path, provider, monkeypatch,
                               registry_toml([PARIS], provider_url=provider.url))
    state = broker.state()
    assert await state.claims_pool.fetchval("SHOW synchronous_commit") == "off"
    # the access log, and everything else, stays synchronous: an exchange answers only after such a commit, which
    # flushes the claim's record with its own (broker/service/quotas.py)
    assert await state.pool.fetchval("SHOW synchronous_commit") == "on"
