"""Retry budget and circuit breaker of `ProviderAdapter.fetch()`, against a real aiohttp server that counts its hits.

The adapter is a declarative `http_json` one built from registry options, as in production; the breaker's clock is
a fake one the tests move, so no test waits for a cool-down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters import registry
from adapters.base import (
    AdapterQuery,
    ProviderAdapter,
    ProviderCircuitOpen,
    ProviderMisconfigured,
    ProviderRejectedQuery,
    ProviderTimeout,
    ProviderUnavailable,
    SubjectNotFound,
)
from adapters.resilience import BreakerState, CallPolicy, CircuitBreaker, Outcome, RetryBudget
from adapters.sandbox.api_particulier import create_app as sandbox_app
from adapters.subjects import ProviderIdentifier
from tests.broker_harness import Harness, broker_config, exchange_body, pivot, start_broker
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml

DATASET = "revenu_fiscal_reference"
NOTICE = {"anneeRevenus": 2023, "revenuFiscalReference": 9800, "nombreParts": 2.0}
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


@dataclass
class Flaky:
    """A provider that answers the statuses of `script` in turn, then `then`; it counts every request."""

    script: list[int] = field(default_factory=list)
    then: int = 200
    hits: int = 0
    # When set, requests wait for it: a call can be held in flight without any sleep.
    gate: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.gate is not None:
            await self.gate.wait()
        status = self.script.pop(0) if self.script else self.then
        if status == 200:
            return web.json_response(NOTICE)
        return web.json_response({"code": "ERREUR", "message": "échec simulé"}, status=status)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def flaky() -> Flaky:
    return Flaky()


@pytest.fixture
async def provider_url(aiohttp_server: ServerFactory, flaky: Flaky) -> str:
    app = web.Application()
    app.router.add_get("/avis/{identifier}", flaky.handle)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def options(base_url: str, **policy: Any) -> dict[str, Any]:
    """What an operator writes in the registry's `options` table for this provider."""
    return {
        "base_url": base_url,
        "datasets": [DATASET],
        "timeout": 5,
        "endpoints": {DATASET: {
            "identifiers": {"spi": {"path": "/avis/{identifier}"}},
            "fields": {"annee_revenus": "/anneeRevenus", "revenu_fiscal_reference": "/revenuFiscalReference",
                       "nombre_parts": "/nombreParts"},
        }},
        **policy,
    }


Build = Callable[..., ProviderAdapter]


@pytest.fixture
def build(session: aiohttp.ClientSession, provider_url: str) -> Build:
    def make(*, clock: FakeClock | None = None, base_url: str = provider_url, **policy: Any) -> ProviderAdapter:
        adapter = registry.build_adapter("http_json", "dgfip", options(base_url, **policy), session, environ={})
        if clock is not None:
            adapter.use_policy(adapter.policy, clock=clock)
        return adapter

    return make


QUERY = AdapterQuery(DATASET, 1, ProviderIdentifier("spi", "3123456789012"), frozenset(), "t")


# ------------------------------------------------------------------------------------------------ retries


async def test_503_is_retried_up_to_the_configured_count(build: Build, flaky: Flaky) -> None:
    flaky.then = 503
    adapter = build(retries=2)
    with pytest.raises(ProviderUnavailable, match="HTTP 503"):
        await adapter.fetch(QUERY)
    assert flaky.hits == 3
    assert adapter.health().retries == 2


async def test_a_retry_that_succeeds_returns_the_document(build: Build, flaky: Flaky) -> None:
    flaky.script = [503, 502]
    assert (await build(retries=2).fetch(QUERY))["revenu_fiscal_reference"] == 9800
    assert flaky.hits == 3


@pytest.mark.parametrize(("status", "error"), [
    (404, SubjectNotFound), (400, ProviderRejectedQuery), (401, ProviderUnavailable), (429, ProviderUnavailable),
])
async def test_4xx_is_never_retried(build: Build, flaky: Flaky, status: int, error: type[Exception]) -> None:
    flaky.then = status
    with pytest.raises(error):
        await build(retries=5).fetch(QUERY)
    assert flaky.hits == 1


async def test_retries_zero_disables_them(build: Build, flaky: Flaky) -> None:
    flaky.then = 503
    with pytest.raises(ProviderUnavailable):
        await build(retries=0).fetch(QUERY)
    assert flaky.hits == 1


async def test_connection_refused_is_retried(build: Build, unused_tcp_port: int) -> None:
    adapter = build(base_url=f"http://127.0.0.1:{unused_tcp_port}", retries=2)
    with pytest.raises(ProviderUnavailable):
        await adapter.fetch(QUERY)
    assert adapter.health().retries == 2


async def test_no_retry_whose_pause_would_overrun_the_timeout(build: Build, flaky: Flaky) -> None:
    flaky.then = 503
    adapter = build(retries=2)
    # a pause of up to ~10 days: it never fits in the 5 s budget, so the real error is reported at once
    adapter.use_policy(replace(adapter.policy, backoff=1e6))
    with pytest.raises(ProviderUnavailable, match="HTTP 503"):
        await adapter.fetch(QUERY)
    assert flaky.hits == 1


async def test_retry_budget_caps_retries_as_a_fraction_of_calls(build: Build, flaky: Flaky) -> None:
    flaky.then = 503
    adapter = build(retries=2, breaker_failures=1000)
    adapter.use_policy(replace(adapter.policy, retry_floor=0, retry_ratio=0.5, backoff=0.0))
    calls = 10
    for _ in range(calls):
        with pytest.raises(ProviderUnavailable):
            await adapter.fetch(QUERY)
    # without a budget: 3 hits per call; with it, retries are at most half the calls
    assert flaky.hits <= calls * 1.5
    assert adapter.health().retries == flaky.hits - calls > 0


def test_retry_budget_refills_as_the_window_slides() -> None:
    clock = FakeClock()
    budget = RetryBudget(CallPolicy(retry_floor=1, retry_ratio=0.2, window=10.0), clock)
    for _ in range(10):
        budget.record_call()
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]  # 1 + 0.2 * 10
    clock.now += 10.5
    assert budget.try_spend()  # the old retries left the window


# ------------------------------------------------------------------------------------------------ breaker


async def test_breaker_opens_fails_fast_then_a_probe_closes_it(build: Build, flaky: Flaky) -> None:
    clock = FakeClock()
    flaky.then = 500
    adapter = build(retries=0, breaker_failures=3, breaker_cooldown=30, clock=clock)
    for _ in range(3):
        with pytest.raises(ProviderUnavailable, match="HTTP 500"):
            await adapter.fetch(QUERY)
    assert adapter.health().breaker is BreakerState.OPEN
    assert flaky.hits == 3

    for _ in range(5):
        with pytest.raises(ProviderUnavailable, match="circuit breaker open"):
            await adapter.fetch(QUERY)
    assert flaky.hits == 3, "an open breaker must not call the provider"
    assert adapter.health().short_circuited == 5

    clock.now += 0.2  # the first probe waits 0.25 s, not the whole `breaker_cooldown` (issue 18)
    with pytest.raises(ProviderUnavailable, match="circuit breaker open"):
        await adapter.fetch(QUERY)
    clock.now += 0.05
    assert adapter.health().breaker is BreakerState.HALF_OPEN

    flaky.then = 200
    assert (await adapter.fetch(QUERY))["nombre_parts"] == 2.0
    assert flaky.hits == 4
    assert adapter.health().breaker is BreakerState.CLOSED


async def test_a_failed_probe_opens_the_breaker_again(build: Build, flaky: Flaky) -> None:
    clock = FakeClock()
    flaky.then = 503
    adapter = build(retries=2, breaker_failures=2, breaker_cooldown=10, clock=clock)
    for _ in range(2):
        with pytest.raises(ProviderUnavailable):
            await adapter.fetch(QUERY)
    # two failed calls (of three attempts each) opened it
    assert flaky.hits == 6
    assert adapter.health().breaker is BreakerState.OPEN

    clock.now += 10
    with pytest.raises(ProviderUnavailable, match="HTTP 503"):
        await adapter.fetch(QUERY)
    assert flaky.hits == 7, "the probe is one attempt, never retried"
    assert adapter.health().breaker is BreakerState.OPEN
    # a failed probe doubles the wait (0.25 s, then 0.5 s)
    with pytest.raises(ProviderCircuitOpen, match="retry in 1 s") as refused:
        await adapter.fetch(QUERY)
    assert refused.value.retry_after == 0.5 and refused.value.public
    assert flaky.hits == 7


async def test_a_call_counts_once_however_many_times_it_was_retried(build: Build, flaky: Flaky) -> None:
    # issue 13: with the defaults (2 retries, 5 failures), two requests about a person whose record makes the
    # provider fail opened the breaker for everyone, each attempt counting as a failure
    flaky.then = 503
    adapter = build(retries=2, breaker_failures=3)
    for _ in range(2):
        with pytest.raises(ProviderUnavailable, match="HTTP 503"):
            await adapter.fetch(QUERY)
    assert flaky.hits == 6 and adapter.health().breaker is BreakerState.CLOSED
    flaky.then = 200
    assert (await adapter.fetch(QUERY))["annee_revenus"] == 2023  # a retried success is a success
    flaky.script, flaky.then = [503], 200
    assert (await adapter.fetch(QUERY))["annee_revenus"] == 2023
    assert adapter.health().breaker is BreakerState.CLOSED


async def test_a_404_page_is_a_misconfiguration_not_an_answer(aiohttp_server: ServerFactory,
                                                            session: aiohttp.ClientSession) -> None:
    # a wrong base_url: a server that is not the provider answers its HTML 404 page
    elsewhere = await aiohttp_server(web.Application())
    adapter = registry.build_adapter("http_json", "dgfip", options(str(elsewhere.make_url("")).rstrip("/"),
                                                                   retries=0, breaker_failures=1), session,
                                     environ={})
    with pytest.raises(ProviderMisconfigured, match="not JSON"):
        await adapter.fetch(QUERY)
    assert adapter.health().breaker is BreakerState.OPEN  # a fault, not an answer about the person


async def test_half_open_lets_one_probe_through_at_a_time(build: Build, flaky: Flaky) -> None:
    clock = FakeClock()
    flaky.then = 500
    adapter = build(retries=0, breaker_failures=1, breaker_cooldown=5, clock=clock)
    with pytest.raises(ProviderUnavailable):
        await adapter.fetch(QUERY)
    clock.now += 5
    flaky.then, flaky.gate = 200, asyncio.Event()
    probe = asyncio.create_task(adapter.fetch(QUERY))
    while flaky.hits < 2:  # until the probe reached the provider, where it is held
        assert not probe.done(), probe
        await asyncio.sleep(0)
    with pytest.raises(ProviderUnavailable, match="circuit breaker open"):
        await adapter.fetch(QUERY)
    flaky.gate.set()
    assert (await probe)["annee_revenus"] == 2023
    assert flaky.hits == 2
    assert adapter.health().breaker is BreakerState.CLOSED


async def test_answers_about_the_person_keep_the_breaker_closed(build: Build, flaky: Flaky) -> None:
    flaky.then = 404
    adapter = build(retries=0, breaker_failures=2)
    for _ in range(5):
        with pytest.raises(SubjectNotFound):
            await adapter.fetch(QUERY)
    assert adapter.health().breaker is BreakerState.CLOSED
    assert flaky.hits == 5


async def test_a_timeout_counts_as_a_failure(build: Build, flaky: Flaky) -> None:
    flaky.gate = asyncio.Event()  # never set: the provider hangs
    adapter = build(retries=2, breaker_failures=1, timeout=0.1)
    with pytest.raises(ProviderTimeout):
        await adapter.fetch(QUERY)
    assert flaky.hits == 1
    assert adapter.health().breaker is BreakerState.OPEN
    flaky.gate.set()


def test_failure_ratio_opens_the_breaker_without_consecutive_failures() -> None:
    breaker = CircuitBreaker(CallPolicy(breaker_failures=5, breaker_ratio=0.5, breaker_min_calls=20), FakeClock())
    for i in range(19):
        breaker.record(Outcome.FAILURE if i % 2 else Outcome.SUCCESS)
    assert breaker.state is BreakerState.CLOSED  # 9 failures of 19 attempts, never two in a row
    breaker.record(Outcome.FAILURE)
    assert breaker.state is BreakerState.OPEN  # 10 of 20


def test_neutral_probe_keeps_the_breaker_half_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CallPolicy(breaker_failures=1, breaker_cooldown=1), clock)
    breaker.record(Outcome.FAILURE)
    clock.now += 1
    assert breaker.admit() is True
    assert breaker.admit() is None  # the probe is in flight
    breaker.record(Outcome.NEUTRAL, probe=True)
    assert breaker.state is BreakerState.HALF_OPEN and breaker.admit() is True


# ------------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize(("change", "message"), [
    ({"retries": -1}, "retries"), ({"retries": 6}, "retries"), ({"retries": True}, "retries"),
    ({"breaker_failures": 0}, "breaker_failures"), ({"breaker_failures": 2.5}, "breaker_failures"),
    ({"breaker_cooldown": 0}, "breaker_cooldown"), ({"breaker_cooldown": "30s"}, "breaker_cooldown"),
    ({"breaker_probe_delay": 0}, "breaker_probe_delay"), ({"breaker_probe_delay": 3601}, "breaker_probe_delay"),
])
def test_bad_policy_options_are_refused(change: dict[str, Any], message: str) -> None:
    for kind, base in (("http_json", options("http://p.example")),
                       ("api_particulier", {"base_url": "http://p.example", "token_env": "T",
                                            "datasets": ["quotient_familial"]})):
        with pytest.raises(registry.AdapterConfigError, match=f"^{message}:"):
            registry.check_options(kind, {**base, **change})


def test_policy_options_reach_the_adapter(build: Build) -> None:
    policy = build(retries=1, breaker_failures=7, breaker_cooldown=12.5).policy
    assert (policy.retries, policy.breaker_failures, policy.breaker_cooldown) == (1, 7, 12.5)
    defaults = build().policy
    assert (defaults.retries, defaults.breaker_failures, defaults.breaker_cooldown, defaults.probe_delay) == (
        2, 5, 2.0, 0.25)
    assert build(breaker_probe_delay=1.5).policy.probe_delay == 1.5


# ------------------------------------------------------------------------------------------------ broker


@pytest.fixture
async def failing_broker(database_url: str, aiohttp_client: Any, aiohttp_server: ServerFactory, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    # The API Particulier sandbox, with a citizen whose every call answers 503.
    sandbox: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    paris = consumer()
    text = registry_toml([paris], provider_url=str(sandbox.make_url("")).rstrip("/"), timeout=2.0)
    # a long first probe delay: the test reads the breaker while it is open, whatever the machine's speed
    text = text.replace("timeout = 2.0 }", "timeout = 2.0, retries = 0, breaker_failures = 2, "
                                           "breaker_probe_delay = 60, breaker_cooldown = 60 }")
    assert "breaker_failures" in text
    yield await start_broker(aiohttp_client, broker_config(tmp_path, database_url, text), paris)


async def test_open_breaker_shows_in_metrics_and_readyz(failing_broker: Harness) -> None:
    async def breaker_metric() -> str:
        async with failing_broker.client.get("/metrics") as resp:
            text = await resp.text()
        return next(line for line in text.splitlines() if line.startswith("dlnuf_provider_breaker_state{"))

    assert await breaker_metric() == 'dlnuf_provider_breaker_state{adapter="api-particulier"} 0.0'
    down = exchange_body(pivot("panne-indisponible"))
    for _ in range(3):
        answer = await failing_broker.exchange(down)
        assert answer.json["type"].endswith("/provider-unavailable")
    assert await breaker_metric() == 'dlnuf_provider_breaker_state{adapter="api-particulier"} 2.0'

    async with failing_broker.client.get("/readyz") as resp:
        assert resp.status == 200  # still ready: other providers' datasets are served
        ready = json.loads(await resp.read())
    assert ready["status"] == "degraded"
    # the cause that keeps it open, while every refusal says provider-unavailable (issue 18)
    assert ready["providers"] == {"api-particulier": "open (last fault: provider-unavailable)"}
    assert ready["checks"]["providers"] == "breaker not closed: api-particulier"

    async with failing_broker.client.get("/metrics") as resp:
        text = await resp.text()
    assert 'dlnuf_provider_short_circuited_total{adapter="api-particulier"} 1.0' in text
    # two calls reached the provider; the refusal the breaker made without calling it is not a provider latency
    assert 'dlnuf_provider_seconds_count{adapter="api-particulier",outcome="provider-unavailable"} 2.0' in text
    assert 'dlnuf_provider_last_fault{adapter="api-particulier",kind="provider-unavailable"} 1.0' in text
    # a healthy citizen is refused too while the breaker is open: the provider is not called; the problem says
    # why and until when (issue 13: a 502 with no hint)
    answer = await failing_broker.exchange()
    assert answer.json["type"].endswith("/provider-unavailable")
    assert "circuit breaker open" in answer.json["detail"] and 0 < int(answer.headers["Retry-After"]) <= 60
