"""The gateway against a real broker, over real HTTP: what a form service gets for plain JSON, what the gateway keeps,
and that nothing it cannot verify reaches the form service."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from multidict import CIMultiDict

from broker.signing import messages
from broker.signing.keys import generate_private_key, public_keys_from_jwks
from broker.tlog.checkpoint import NoteVerifier
from broker.tlog.jcs import canonicalize
from tests.broker_harness import Harness, pivot
from tests.factories import CONSUMER, OTHER_CONSUMER, consumer
from tests.gateway.conftest import BROKER_PROBLEM, GATEWAY_PROBLEM, GatewayUnderTest, StartGateway, ask
from tests.proxy_harness import Exchange, Reply, TamperingProxy, flip_byte


async def test_a_released_exchange_in_plain_json(broker: Harness, gateway: GatewayUnderTest) -> None:
    answer = await gateway.exchange()
    assert answer.status == 200, answer.body
    body = answer.json
    assert set(body["data"]) == {"quotient_familial", "enfants"}
    assert body["data_sha256"] == hashlib.sha256(canonicalize(body["data"])).hexdigest()
    assert answer.headers["DLNUF-Response-Signature"] == "bound"
    assert answer.headers["DLNUF-Inclusion-Promise"] == "verified"
    assert answer.headers["DLNUF-Log-Entry-Id"] == body["log_entry_id"]
    assert answer.headers["DLNUF-Broker-Request-Id"] == body["request_id"]
    assert answer.headers["Content-Type"] == "application/json"  # the broker's, as it sent it
    assert answer.headers["Cache-Control"] == "no-store"

    # the broker logged it under the organisation's key, which only the gateway holds
    [row] = await broker.log_rows()
    assert (row["outcome"], row["consumer"], row["kid"]) == ("released", CONSUMER, broker.consumer.key.kid)
    assert str(row["id"]) == body["log_entry_id"]

    # the gateway's record holds the evidence, and it verifies again later, by anyone with the broker's keys
    [call] = await gateway.records()
    assert str(call["id"]) == answer.headers["DLNUF-Gateway-Record"]
    assert call["id"].version == 7  # time-ordered, as the log's entry ids
    assert (call["kind"], call["outcome"], call["status"], call["verification"]) == ("exchange", "released", 200,
                                                                                      "bound")
    assert (call["caller"], call["consumer"], call["kid"]) == ("loopback", CONSUMER, broker.consumer.key.kid)
    assert str(call["log_entry_id"]) == body["log_entry_id"] and call["broker_request_id"] == body["request_id"]
    assert call["inclusion_promise"] == body["log"]["inclusion_promise"]
    assert json.loads(call["request_body"]) == ask() and call["response_body"] == answer.body
    assert "Authorization" not in call["request_headers"] and not call["with_token"]
    async with aiohttp.ClientSession() as session, session.get(broker.url("/.well-known/jwks.json")) as resp:
        keys = {k.kid: k for k in public_keys_from_jwks(await resp.json(), owner="broker")}
    messages.verify_response(status=call["status"], headers=CIMultiDict(call["response_headers"]),
                             body=call["response_body"], request_headers=CIMultiDict(call["request_headers"]),
                             lookup_key=keys.get, now=datetime.now(UTC))


@pytest.mark.parametrize(("change", "status", "slug"), [
    ({"purpose": "curiosite"}, 403, "not-authorized"),
    ({"fields": ["quotient_familial", "quotient_familial"]}, 400, "invalid-request"),
    ({"dataset": "pointure_chaussures"}, 404, "unknown-dataset"),
    ({"subject": {"pivot_identity": {"family_name": "Dupont"}}}, 400, "invalid-subject"),
    ({"subject": pivot("panne-indisponible")}, 502, "provider-unavailable"),
], ids=["not-authorized", "invalid-request", "unknown-dataset", "invalid-subject", "provider-unavailable"])
async def test_each_broker_refusal_passes_through_unchanged(broker: Harness, gateway: GatewayUnderTest,
                                                            change: dict[str, Any], status: int, slug: str) -> None:
    answer = await gateway.exchange(ask(**change))
    assert answer.status == status
    assert answer.headers["Content-Type"] == "application/problem+json"
    problem = answer.json
    assert (problem["type"], problem["status"]) == (BROKER_PROBLEM + slug, status)
    assert answer.headers["DLNUF-Response-Signature"] == "bound"
    assert "DLNUF-Inclusion-Promise" not in answer.headers
    [call] = await gateway.records()
    assert call["response_body"] == answer.body  # unchanged, byte for byte
    assert (call["outcome"], call["problem_type"], call["verification"]) == (
        "failed" if status >= 500 else "refused", BROKER_PROBLEM + slug, "bound")
    assert call["broker_request_id"] == problem["request_id"]
    [row] = await broker.log_rows()
    assert row["problem_type"] == BROKER_PROBLEM + slug


async def test_a_key_the_broker_does_not_know_gets_its_unbound_401(broker: Harness,
                                                                   start_gateway: StartGateway) -> None:
    gateway = await start_gateway(broker.url("/").rstrip("/"), consumer(kid="not-registered").key)
    answer = await gateway.exchange()
    assert answer.status == 401 and answer.json["type"] == BROKER_PROBLEM + "signature-rejected"
    assert answer.headers["DLNUF-Response-Signature"] == "unbound"
    [call] = await gateway.records()
    assert (call["outcome"], call["verification"]) == ("refused", "unbound")


async def test_a_tampered_release_is_refused_with_no_data(broker: Harness, proxy: TamperingProxy,
                                                          proxied_gateway: GatewayUnderTest) -> None:
    proxy.mutate = lambda sent, reply: flip_byte(reply, b'"valeur"') if sent.path_qs == "/v1/exchanges" else reply
    answer = await proxied_gateway.exchange()
    assert answer.status == 502
    assert answer.json == {"type": GATEWAY_PROBLEM + "broker-answer-unverified", "title": "Broker answer unverified",
                           "status": 502}
    assert b"DUPONT" not in answer.body.upper() and b"valeur" not in answer.body
    # the broker did release and log it: the gateway keeps the altered answer as evidence of what came back
    [row] = await broker.log_rows()
    assert row["outcome"] == "released"
    [call] = await proxied_gateway.records()
    assert call["outcome"] == "unverified" and call["reason"].startswith("signature: digest-mismatch")
    assert call["log_entry_id"] is None and call["response_body"] is not None
    metrics = (await proxied_gateway.get("/metrics")).body.decode()
    assert 'dlnuf_gateway_unverified_answers_total{check="signature"} 1.0' in metrics


async def test_a_tampered_refusal_is_the_gateways_problem(proxy: TamperingProxy,
                                                          proxied_gateway: GatewayUnderTest) -> None:
    proxy.mutate = lambda sent, reply: flip_byte(reply, b"Not authorized") if reply.status == 403 else reply
    answer = await proxied_gateway.exchange(ask(purpose="curiosite"))
    assert (answer.status, answer.json["type"]) == (502, GATEWAY_PROBLEM + "broker-answer-unverified")


async def test_a_release_whose_promise_is_not_by_the_pinned_log_key_is_refused(
        broker: Harness, start_gateway: StartGateway) -> None:
    # a key of the right name, not the broker's log key
    stranger = NoteVerifier.from_key("dlnuf.localhost/log", Ed25519PrivateKey.generate().public_key()).vkey()
    gateway = await start_gateway(broker.url("/").rstrip("/"), broker.consumer.key, log_keys=(stranger,))
    answer = await gateway.exchange()
    assert (answer.status, answer.json["type"]) == (502, GATEWAY_PROBLEM + "broker-answer-unverified")
    [call] = await gateway.records()
    assert call["outcome"] == "unverified" and call["reason"].startswith("promise: ")


async def test_the_broker_down(start_gateway: StartGateway, unused_tcp_port: int, tmp_path: Path) -> None:
    # with the broker's keys pinned, as in production, the request is signed, recorded, and finds nobody
    jwks = tmp_path / "broker-jwks.json"
    jwks.write_text(json.dumps({"keys": [generate_private_key("ed25519", kid="broker").public_jwk()]}))
    log_key = NoteVerifier.from_key("dlnuf.localhost/log", Ed25519PrivateKey.generate().public_key()).vkey()
    gateway = await start_gateway(f"http://127.0.0.1:{unused_tcp_port}", consumer().key, broker_jwks_file=jwks,
                                  log_keys=(log_key,))
    answer = await gateway.exchange()
    assert (answer.status, answer.json["type"]) == (502, GATEWAY_PROBLEM + "broker-unreachable")
    assert "detail" not in answer.json
    [call] = await gateway.records()
    assert call["outcome"] == "unreachable" and call["status"] is None
    assert str(call["id"]) == answer.headers["DLNUF-Gateway-Record"]
    ready = await gateway.get("/readyz")
    assert ready.status == 503 and ready.json["checks"]["broker"].startswith("unreachable")


async def test_the_broker_down_before_its_keys_were_fetched(start_gateway: StartGateway,
                                                            unused_tcp_port: int) -> None:
    # keys not pinned and never fetched: nothing could be verified, so nothing is signed nor sent
    gateway = await start_gateway(f"http://127.0.0.1:{unused_tcp_port}", consumer().key)
    answer = await gateway.exchange()
    assert (answer.status, answer.json["type"]) == (502, GATEWAY_PROBLEM + "broker-unreachable")
    assert await gateway.records() == []


async def test_an_unsigned_error_page_in_the_brokers_place_means_unreachable(
        proxy: TamperingProxy, proxied_gateway: GatewayUnderTest) -> None:
    def down(sent: Exchange, reply: Reply) -> Reply:
        return Reply(503, CIMultiDict({"Content-Type": "text/html"}), b"<h1>Service Unavailable</h1>")

    proxy.mutate = down
    answer = await proxied_gateway.exchange()
    assert (answer.status, answer.json["type"]) == (502, GATEWAY_PROBLEM + "broker-unreachable")


async def test_a_slow_broker_is_a_timeout(broker: Harness, start_gateway: StartGateway) -> None:
    gateway = await start_gateway(broker.url("/").rstrip("/"), broker.consumer.key, timeout=0.5)
    answer = await gateway.exchange(ask(subject=pivot("panne-lenteur")))
    assert (answer.status, answer.json["type"]) == (504, GATEWAY_PROBLEM + "broker-timeout")
    [call] = await gateway.records()
    assert call["outcome"] == "unreachable" and "in time" in call["reason"]


@pytest.mark.parametrize("headers", [{}, {"DLNUF-Gateway-Secret": "not-the-secret-at-all"}], ids=["none", "wrong"])
async def test_a_caller_without_the_client_secret_is_refused(broker: Harness, start_gateway: StartGateway,
                                                             tmp_path: Any, headers: dict[str, str]) -> None:
    secret_file = tmp_path / "client-secret"
    gateway = await start_gateway(broker.url("/").rstrip("/"), broker.consumer.key, client_secret_file=secret_file)
    assert secret_file.stat().st_mode & 0o777 == 0o600  # created on first start
    secret = secret_file.read_text()
    refused = await gateway.call("/v1/exchanges", body=json.dumps(ask()).encode(), headers=headers)
    assert refused.status == 401 and refused.json["type"] == GATEWAY_PROBLEM + "caller-rejected"
    assert "detail" not in refused.json and refused.headers["WWW-Authenticate"].startswith("DLNUF-Gateway-Secret")
    assert (await gateway.get("/metrics", headers=headers)).status == 401
    assert await broker.log_rows() == [] and await gateway.records() == []
    admitted = await gateway.call("/v1/exchanges", body=json.dumps(ask()).encode(),
                                  headers={"DLNUF-Gateway-Secret": secret})
    assert admitted.status == 200
    [call] = await gateway.records()
    assert call["caller"] == "secret"
    assert (await gateway.get("/healthz")).status == 200  # liveness needs no secret


@pytest.mark.parametrize(("body", "headers"), [
    (ask(recipient=OTHER_CONSUMER), {}),
    (ask(recipient=f"{OTHER_CONSUMER}/cantine"), {}),
    (ask(), {"DLNUF-Consumer": OTHER_CONSUMER}),
], ids=["recipient", "recipient-sub-unit", "declared"])
async def test_a_call_for_another_organisation_is_refused(broker: Harness, gateway: GatewayUnderTest,
                                                          body: dict[str, Any], headers: dict[str, str]) -> None:
    answer = await gateway.call("/v1/exchanges", body=json.dumps(body).encode(), headers=headers)
    assert (answer.status, answer.json["type"]) == (403, GATEWAY_PROBLEM + "consumer-mismatch")
    assert OTHER_CONSUMER in answer.json["detail"]
    assert await broker.log_rows() == [] and await gateway.records() == []


async def test_replays_are_impossible_through_the_gateway(broker: Harness, proxy: TamperingProxy,
                                                          proxied_gateway: GatewayUnderTest) -> None:
    first, second = await proxied_gateway.exchange(), await proxied_gateway.exchange()
    assert first.status == second.status == 200
    assert first.json["log_entry_id"] != second.json["log_entry_id"]
    sent = [e for e in proxy.sent if e.path_qs == "/v1/exchanges"]
    nonces = [messages_nonce(e.headers) for e in sent]
    assert len(set(nonces)) == 2
    assert {c["nonce"] for c in await proxied_gateway.records()} == set(nonces)
    # what the gateway sent, sent again to the broker by someone on the path: refused
    replay = await broker.send(sent[0].body, sent[0].headers)
    assert replay.status == 401 and replay.json["type"] == BROKER_PROBLEM + "signature-rejected"
    assert [r["outcome"] for r in await broker.log_rows()].count("released") == 2


def messages_nonce(headers: CIMultiDict[str]) -> str:
    from broker.signing import structured_fields as sf

    inner = sf.parse_dictionary(headers["Signature-Input"])["sig1"]
    assert isinstance(inner, sf.InnerList)
    return str(inner.params["nonce"])


async def test_concurrent_calls(broker: Harness, gateway: GatewayUnderTest) -> None:
    citizens = ["dupont-marie-claire", "rousseau-jean-baptiste", "berger-camille"]
    answers = await asyncio.gather(*(gateway.exchange(ask(subject=pivot(citizens[i % 3]))) for i in range(16)))
    assert [a.status for a in answers] == [200] * 16
    calls = await gateway.records()
    assert len(calls) == 16 and len({c["nonce"] for c in calls}) == 16
    assert {c["outcome"] for c in calls} == {"released"}
    assert {str(c["log_entry_id"]) for c in calls} == {a.json["log_entry_id"] for a in answers}
    assert len({a.json["log_entry_id"] for a in answers}) == 16


async def test_no_record_no_exchange(broker: Harness, gateway: GatewayUnderTest, pg_server: str) -> None:
    name = gateway.record_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    answer = await gateway.exchange()
    assert (answer.status, answer.json["type"]) == (503, GATEWAY_PROBLEM + "record-unavailable")
    assert await broker.log_rows() == []  # the broker was never asked
    ready = await gateway.get("/readyz")
    assert ready.status == 503 and ready.json["checks"]["record"].startswith("unavailable")


@pytest.mark.parametrize(("body", "content_type", "status", "slug"), [
    (b"{}", "text/plain", 415, "unsupported-media-type"),
    (b"x" * 70_000, "application/json", 413, "body-too-large"),
], ids=["media-type", "too-large"])
async def test_bad_calls_are_the_gateways_problems(broker: Harness, gateway: GatewayUnderTest, body: bytes,
                                                   content_type: str, status: int, slug: str) -> None:
    answer = await gateway.call("/v1/exchanges", body=body, content_type=content_type)
    assert (answer.status, answer.json["type"]) == (status, GATEWAY_PROBLEM + slug)
    assert await broker.log_rows() == []


async def test_a_body_that_is_not_json_is_the_brokers_to_refuse(broker: Harness, gateway: GatewayUnderTest) -> None:
    answer = await gateway.call("/v1/exchanges", body=b"not json")
    assert (answer.status, answer.json["type"]) == (400, BROKER_PROBLEM + "invalid-request")


async def test_metrics(broker: Harness, gateway: GatewayUnderTest) -> None:
    assert (await gateway.exchange()).status == 200
    assert (await gateway.exchange(ask(purpose="curiosite"))).status == 403
    text = (await gateway.get("/metrics")).body.decode()
    assert 'dlnuf_gateway_calls_total{outcome="released",route="exchange"} 1.0' in text
    assert 'dlnuf_gateway_calls_total{outcome="refused",route="exchange"} 1.0' in text
    assert 'dlnuf_gateway_call_seconds_count{route="exchange"} 2.0' in text
    assert "dupont" not in text.lower()
    ready = await gateway.get("/readyz")
    assert ready.status == 200 and ready.json["checks"] == {"record": "ok", "broker": "ok"}
