"""RFC 9421 between the broker and code it did not write: requests signed by pyauth's http-message-signatures
(Python, sent with requests) and by npm's http-message-signatures (Node.js, sent with fetch), Ed25519 and P-256,
are accepted; each library verifies the broker's response signature, which binds the answer to the request's own
signature ("signature";req;key=...). Keys travel as JWKs parsed by the libraries' side (PyJWT's PyJWK, Node's
crypto), never by the broker's code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp.test_utils import TestServer
from http_message_signatures import InvalidSignature

from adapters.sandbox.api_particulier import create_app as sandbox_app
from tests.broker_harness import EXCHANGES, Harness, broker_config, exchange_body, start_broker
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, Consumer, consumer, registry_toml
from tests.interop import node
from tests.interop.pyauth import signed_exchange


@pytest.fixture(params=["ed25519", "ecdsa-p256-sha256"])
def client(request: pytest.FixtureRequest) -> Consumer:
    return consumer(alg=request.param)


@pytest.fixture
async def broker(database_url: str, aiohttp_client: Any, aiohttp_server: Any, client: Consumer, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    sandbox: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    text = registry_toml([client], provider_url=str(sandbox.make_url("")).rstrip("/"))
    yield await start_broker(aiohttp_client, broker_config(tmp_path, database_url, text), client)


async def broker_jwks(broker: Harness) -> dict[str, Any]:
    async with broker.client.get("/.well-known/jwks.json") as resp:
        jwks: dict[str, Any] = await resp.json()
        return jwks


def _pyauth_round_trip(url: str, body: bytes, client: Consumer, jwks: dict[str, Any], *,
                       tamper: bool = False) -> tuple[requests.Response, list[Any]]:
    return signed_exchange(url, body, jwk=client.key.to_jwk(), broker_jwks=jwks, tamper=tamper)


async def test_pyauth_signed_requests_are_accepted_and_it_verifies_the_answer(broker: Harness,
                                                                            client: Consumer) -> None:
    body = json.dumps(exchange_body()).encode()
    response, [result] = await asyncio.to_thread(_pyauth_round_trip, broker.url(EXCHANGES), body, client,
                                                 await broker_jwks(broker))
    assert response.status_code == 200, response.text
    assert response.json()["data"]["quotient_familial"]["valeur"] == 582
    # the answer is bound to this very request: its signature is a covered component of the response's
    covered = result.covered_components
    assert any(k.startswith('"signature";req') or k.startswith('"signature";key="sig1";req') for k in covered), covered
    assert result.body == response.content
    [row] = await broker.log_rows()
    assert row["kid"] == client.key.kid and row["outcome"] == "released"


async def test_a_request_pyauth_signed_then_changed_is_refused(broker: Harness, client: Consumer) -> None:
    body = json.dumps(exchange_body()).encode()
    jwks = await broker_jwks(broker)
    response, results = await asyncio.to_thread(_pyauth_round_trip, broker.url(EXCHANGES), body, client, jwks,
                                                tamper=True)
    assert response.status_code == 401 and response.json()["type"].endswith("/signature-rejected")
    assert results  # the refusal is signed too (without the request binding), and pyauth verifies it


async def test_pyauth_refuses_a_forged_broker_answer(broker: Harness, client: Consumer) -> None:
    # the broker's kid, another Ed25519 public key: what an attacker answering in the broker's place would publish
    forged = {"keys": [{**(await broker_jwks(broker))["keys"][0], "x": consumer().key.public_jwk()["x"]}]}
    with pytest.raises(InvalidSignature):
        await asyncio.to_thread(_pyauth_round_trip, broker.url(EXCHANGES), json.dumps(exchange_body()).encode(),
                                client, forged)


async def test_npm_signed_requests_are_accepted_and_it_verifies_the_answer(broker: Harness,
                                                                          client: Consumer) -> None:
    jwks = await broker_jwks(broker)
    answer = await node.run("http_signatures.mjs", {
        "url": broker.url(EXCHANGES), "body": json.dumps(exchange_body()), "jwk": client.key.to_jwk(),
        "alg": client.key.alg, "broker_jwks": jwks})
    assert answer["status"] == 200, answer
    assert json.loads(answer["body"])["data"]["quotient_familial"]["valeur"] == 582
    assert answer["verified"] is True, answer.get("error")
    [row] = await broker.log_rows()
    assert row["kid"] == client.key.kid and row["outcome"] == "released"
    # and the npm verifier says no to an answer under another key than the broker's
    stranger = {"keys": [{**jwks["keys"][0], "x": consumer().key.public_jwk()["x"]}]}
    refused = await node.run("http_signatures.mjs", {
        "url": broker.url(EXCHANGES), "body": json.dumps(exchange_body()), "jwk": client.key.to_jwk(),
        "alg": client.key.alg, "broker_jwks": stranger})
    assert refused["status"] == 200 and refused["verified"] is False
