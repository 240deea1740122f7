"""The SDK against a real broker: the broker's problem is raised whenever it answered one, with what its signature
proved; data is handed back only when the broker's signature, bound to the request, verified.

A transparent proxy between the two plays the attacker on the path (tests/proxy_harness.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.consumer.client import BrokerClient, BrokerProblem
from broker.signing.messages import SignatureRejected
from tests.broker_harness import Harness, broker_config, pivot, start_broker
from tests.factories import CONSUMER, PURPOSE, SANDBOX_TOKEN, TOKEN_ENV, Consumer, consumer, registry_toml
from tests.proxy_harness import Exchange, Reply, TamperingProxy, flip_byte

ROOT = Path(__file__).resolve().parents[2]
PROBLEM = "https://dlnuf.org/problems/"
ASK: dict[str, Any] = {"dataset": "quotient_familial", "purpose": PURPOSE, "recipient": CONSUMER,
                       "fields": ["quotient_familial"], "subject": pivot("dupont-marie-claire")}


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> str:
    server: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    return str(server.make_url("")).rstrip("/")


async def _broker(aiohttp_client: Any, database_url: str, sandbox: str, tmp_path: Path, paris: Consumer,
                  **registry: Any) -> Harness:
    text = registry_toml([paris], provider_url=sandbox, **registry)
    return await start_broker(aiohttp_client, broker_config(tmp_path, database_url, text), paris)


@pytest.fixture
async def broker(database_url: str, aiohttp_client: Any, sandbox: str, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    yield await _broker(aiohttp_client, database_url, sandbox, tmp_path, consumer())


def _client(url: str, who: Consumer) -> BrokerClient:
    return BrokerClient(url.rstrip("/"), key=who.key)


async def test_a_released_exchange_is_bound_to_its_request(broker: Harness) -> None:
    async with _client(broker.url("/"), broker.consumer) as client:
        answer = await client.exchange(**ASK)
        signed = await client.send("/v1/exchanges", json.dumps(ASK).encode())
    assert answer.fields_released == ("quotient_familial",)
    assert signed.status == 200 and signed.signature == "bound" and signed.signature_error is None


async def test_an_unknown_key_gets_the_brokers_401_problem_not_a_signature_error(broker: Harness) -> None:
    # the broker could not verify the request, so its answer cannot be bound to it: signed by the broker only
    stranger = consumer(kid="not-in-the-registry")
    async with _client(broker.url("/"), stranger) as client:
        with pytest.raises(BrokerProblem) as refused:
            await client.exchange(**ASK)
    problem = refused.value
    assert (problem.status, problem.type) == (401, PROBLEM + "signature-rejected")
    assert problem.title == "Signature rejected" and problem.detail is None  # no reason given to the caller
    assert problem.signature == "unbound" and problem.signature_error is None


async def test_a_key_not_yet_valid_gets_the_brokers_401_problem(database_url: str, aiohttp_client: Any,
                                                                sandbox: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    paris = consumer()
    harness = await _broker(aiohttp_client, database_url, sandbox, tmp_path, paris,
                            extra_key_lines="not_before = 2099-01-01T00:00:00Z")
    async with _client(harness.url("/"), paris) as client:
        with pytest.raises(BrokerProblem) as refused:
            await client.exchange(**ASK)
    assert (refused.value.status, refused.value.type, refused.value.signature) == (
        401, PROBLEM + "signature-rejected", "unbound")


@pytest.mark.parametrize(("change", "status", "slug", "detail"), [
    ({"purpose": "curiosite"}, 403, "not-authorized", None),
    ({"fields": ["quotient_familial", "quotient_familial"]}, 400, "invalid-request", "fields: has duplicates"),
], ids=["not-authorized", "invalid-request"])
async def test_a_refusal_of_a_verified_request_is_bound_to_it(broker: Harness, change: dict[str, Any], status: int,
                                                              slug: str, detail: str | None) -> None:
    async with _client(broker.url("/"), broker.consumer) as client:
        with pytest.raises(BrokerProblem) as refused:
            await client.exchange(**{**ASK, **change})
    problem = refused.value
    assert (problem.status, problem.type, problem.detail, problem.signature) == (status, PROBLEM + slug, detail,
                                                                                 "bound")
    assert problem.problem["request_id"]


@pytest.fixture
async def proxy(broker: Harness, aiohttp_server: Any) -> TamperingProxy:
    proxy = TamperingProxy(broker.url("/").rstrip("/"))
    server: TestServer = await aiohttp_server(proxy.app())
    proxy.url = str(server.make_url("")).rstrip("/")
    return proxy


async def test_through_an_honest_proxy_nothing_changes(broker: Harness, proxy: TamperingProxy) -> None:
    async with _client(proxy.url, broker.consumer) as client:
        answer = await client.exchange(**ASK)
    assert answer.data["quotient_familial"]["valeur"] > 0
    assert [e.path_qs for e in proxy.sent] == ["/.well-known/jwks.json", "/v1/exchanges"]


async def test_a_tampered_success_gives_no_data(broker: Harness, proxy: TamperingProxy) -> None:
    proxy.mutate = lambda sent, reply: flip_byte(reply, b'"valeur"') if sent.path_qs == "/v1/exchanges" else reply
    async with _client(proxy.url, broker.consumer) as client:
        with pytest.raises(SignatureRejected) as rejected:
            await client.exchange(**ASK)
    assert rejected.value.reason == "digest-mismatch"


async def test_a_tampered_problem_is_raised_as_unsigned(broker: Harness, proxy: TamperingProxy) -> None:
    proxy.mutate = lambda sent, reply: flip_byte(reply, b"Not authorized") if reply.status == 403 else reply
    async with _client(proxy.url, broker.consumer) as client:
        with pytest.raises(BrokerProblem) as refused:
            await client.exchange(**{**ASK, "purpose": "curiosite"})
    problem = refused.value
    assert problem.status == 403 and problem.signature is None
    assert problem.signature_error is not None and problem.signature_error.reason == "digest-mismatch"


async def test_an_error_page_in_the_brokers_place_is_an_unsigned_about_blank_problem(
        broker: Harness, proxy: TamperingProxy) -> None:
    def bad_gateway(sent: Exchange, reply: Reply) -> Reply:
        if sent.path_qs != "/v1/exchanges":
            return reply
        return Reply(502, CIMultiDict({"Content-Type": "text/html"}), b"<html><h1>502 Bad Gateway</h1></html>")

    proxy.mutate = bad_gateway
    async with _client(proxy.url, broker.consumer) as client:
        with pytest.raises(BrokerProblem) as refused:
            await client.exchange(**ASK)
    problem = refused.value
    assert (problem.status, problem.type, problem.title) == (502, "about:blank", "Bad Gateway")
    assert problem.signature is None and problem.signature_error is not None
    assert problem.signature_error.reason == "missing-signature"


async def test_a_problem_replayed_from_another_request_is_not_bound(broker: Harness, proxy: TamperingProxy) -> None:
    # an attacker on the path keeps a signed refusal and serves it to a later request
    kept: list[Reply] = []

    def replay(sent: Exchange, reply: Reply) -> Reply:
        if reply.status == 403:
            kept.append(reply)
        return kept[0] if kept and sent.path_qs == "/v1/exchanges" else reply

    proxy.mutate = replay
    async with _client(proxy.url, broker.consumer) as client:
        with pytest.raises(BrokerProblem):
            await client.exchange(**{**ASK, "purpose": "curiosite"})
        with pytest.raises(BrokerProblem) as replayed:
            await client.exchange(**ASK)
    assert replayed.value.status == 403 and replayed.value.signature is None
    assert replayed.value.signature_error is not None
    assert replayed.value.signature_error.reason == "bad-signature"


async def test_the_request_command_prints_the_brokers_401_problem(broker: Harness, tmp_path: Path) -> None:
    key_file = tmp_path / "stranger.jwk"
    key_file.write_text(json.dumps(consumer(kid="not-in-the-registry").key.to_jwk()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "request", "--url", broker.url("/").rstrip("/"), "--key", str(key_file),
        "--dataset", "quotient_familial", "--purpose", PURPOSE, "--recipient", CONSUMER,
        "--fields", "quotient_familial", "--subject", json.dumps(ASK["subject"]),
        cwd=ROOT, env={**os.environ, "DLNUF_STATE_DIR": str(tmp_path / "state")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 1, err.decode()
    assert json.loads(out)["type"] == PROBLEM + "signature-rejected"
    assert "before it could verify the request" in err.decode()
    assert "did not verify" not in err.decode()
