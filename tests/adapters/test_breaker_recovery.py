"""Breakers that heal (issue 18): the API Particulier sandbox as a real process, stopped and restarted; the
adapter's breaker, on the real clock, calls it again within `breaker_cooldown` (2 s) of its return.

Before, the breaker waited its whole 30 s cool-down: consumers got 502 for 19 to 25 s after the provider was back.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

import schemas
from adapters import registry
from adapters.base import AdapterQuery, ProviderAdapter, ProviderCircuitOpen, ProviderUnavailable
from adapters.resilience import BreakerState, CallPolicy, CircuitBreaker, Outcome
from adapters.sandbox import directory

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "sandbox-token-for-the-recovery-test"
QUERY = AdapterQuery("quotient_familial", schemas.latest("quotient_familial"),
                     directory().citizen("dupont-marie-claire").pivot, frozenset(), "t",
                     recipient="21750001600019")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_wait_starts_short_doubles_per_failed_probe_and_stops_growing() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CallPolicy(breaker_failures=1, probe_delay=0.25, breaker_cooldown=2.0), clock)
    breaker.record(Outcome.FAILURE)
    waits = []
    for _ in range(6):
        waits.append(breaker.reopens_in())
        clock.now += breaker.reopens_in() - 0.01
        assert breaker.admit() is None  # not yet
        clock.now += 0.01
        assert breaker.admit() is True  # the probe
        breaker.record(Outcome.FAILURE, probe=True)
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    clock.now += 2.0
    assert breaker.admit() is True
    breaker.record(Outcome.SUCCESS, probe=True)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(Outcome.FAILURE)  # a new outage starts from the short wait again
    assert breaker.reopens_in() == 0.25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Sandbox:
    """`python -m adapters.sandbox` on one port, started and stopped as the provider's operator would."""

    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, session: aiohttp.ClientSession) -> None:
        with self.log.open("a") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "adapters.sandbox", "--host", "127.0.0.1", "--port", str(self.port),
                cwd=ROOT, env={**os.environ, "DLNUF_SANDBOX_TOKEN": TOKEN}, stdout=log, stderr=log)
        for _ in range(600):  # bounded: 60 s
            assert self.proc.returncode is None, self.log.read_text()
            try:
                async with session.get(self.url + "/") as resp:
                    if resp.status == 404:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError("the sandbox did not start: " + self.log.read_text())

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), timeout=20)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _outcome(adapter: ProviderAdapter) -> str:
    try:
        await adapter.fetch(QUERY)
    except ProviderCircuitOpen:
        return "short-circuited"
    except ProviderUnavailable:
        return "failed"
    return "ok"


async def test_recovery_within_two_seconds_of_the_providers_return(session: aiohttp.ClientSession,
                                                                    tmp_path: Path) -> None:
    sandbox = Sandbox(_free_port(), tmp_path / "sandbox.log")
    await sandbox.start(session)
    try:
        # the registry's defaults, but for retries (none: each call is one attempt) and the failures that open
        adapter = registry.build_adapter(
            "api_particulier", "api-particulier",
            {"base_url": sandbox.url, "token_env": "SANDBOX_TOKEN", "datasets": ["quotient_familial"],
             "retries": 0, "breaker_failures": 2}, session, environ={"SANDBOX_TOKEN": TOKEN})
        assert adapter.policy.breaker_cooldown == 2.0
        assert await _outcome(adapter) == "ok"

        await sandbox.stop()
        assert [await _outcome(adapter) for _ in range(2)] == ["failed", "failed"]
        assert adapter.health().breaker is BreakerState.OPEN
        # a long outage: calls keep coming, failed probes grow the wait to its longest
        outage = []
        while adapter.breaker.delay < 2.0:
            outage.append(await _outcome(adapter))
            await asyncio.sleep(0.05)
        assert "failed" in outage and "short-circuited" in outage and "ok" not in outage
        circuit_open = None
        try:
            await adapter.fetch(QUERY)
        except ProviderCircuitOpen as exc:
            circuit_open = exc
        assert circuit_open is not None and circuit_open.last_fault == "provider-unavailable"
        assert "last: provider-unavailable" in str(circuit_open) and "ClientConnectorError" in circuit_open.reason

        await sandbox.start(session)
        back = time.monotonic()
        longest_wait = adapter.breaker.reopens_in()
        after: list[str] = []
        while not after or after[-1] != "ok":
            assert time.monotonic() - back < 30, after
            started = time.monotonic()
            after.append(await _outcome(adapter))
            last_call = time.monotonic() - started
            if after[-1] != "ok":
                await asyncio.sleep(0.02)
        recovered = time.monotonic() - back
        # the first probe after the return succeeded, and it came no later than the breaker's longest wait
        assert set(after[:-1]) <= {"short-circuited"}, after
        assert longest_wait <= 2.0
        assert recovered <= longest_wait + last_call + 0.5, (recovered, longest_wait, last_call)
        assert adapter.health().breaker is BreakerState.CLOSED
        print(f"recovered {recovered:.2f} s after the sandbox answered again (the breaker's wait then: "
              f"{longest_wait:.2f} s)")
    finally:
        await sandbox.stop()
