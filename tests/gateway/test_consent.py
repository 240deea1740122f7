"""The consent flow through the gateway, as a form service that writes no crypto does it: it sends the citizen to the
broker with a PKCE challenge (a SHA-256, not a signature), then posts the code to the gateway's token endpoint and
the exchange to the gateway's `/v1/exchanges` with the access token, in plain HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from broker.consumer.client import BrokerClient, BrokerProblem
from tests.consent_harness import CALLBACK, LYON, ConsentStack, StartConsentStack, start_consent_stack  # noqa: F401
from tests.factories import PURPOSE, QF_FIELDS
from tests.gateway.conftest import GATEWAY_PROBLEM, GatewayUnderTest, StartGateway

FORM = "application/x-www-form-urlencoded"


def _authorize_url(stack: ConsentStack, *, frequency: str = "one_time") -> tuple[str, str, str]:
    """What the form service sends the citizen to: the URL, its state and its PKCE verifier."""
    verifier, state = secrets.token_urlsafe(48), secrets.token_urlsafe(16)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    details = [{"type": "dlnuf_exchange", "dataset": "quotient_familial", "purpose": PURPOSE,
                "fields": list(QF_FIELDS), "frequency": frequency, "duration_days": 30}]
    query = urlencode({"response_type": "code", "client_id": LYON, "redirect_uri": CALLBACK, "state": state,
                       "code_challenge": challenge, "code_challenge_method": "S256",
                       "authorization_details": json.dumps(details)})
    return f"{stack.broker}/oauth/authorize?{query}", state, verifier


@pytest.fixture
async def stack(start_consent_stack: StartConsentStack) -> ConsentStack:  # noqa: F811
    return await start_consent_stack()


@pytest.fixture
async def gateway(stack: ConsentStack, start_gateway: StartGateway) -> GatewayUnderTest:
    return await start_gateway(stack.broker, stack.lyon.key, siret=LYON)


async def _code(stack: ConsentStack, *, frequency: str = "one_time") -> tuple[str, str]:
    url, state, verifier = _authorize_url(stack, frequency=frequency)
    async with stack.browser() as browser:
        arrival = await stack.walk(browser, url)
    assert arrival.params["state"] == state and "code" in arrival.params, arrival
    return arrival.params["code"], verifier


async def _token(gateway: GatewayUnderTest, **form: str) -> Any:
    return await gateway.call("/oauth/token", body=urlencode(form).encode(), content_type=FORM)


async def test_consent_then_exchange_through_the_gateway(stack: ConsentStack, gateway: GatewayUnderTest) -> None:
    code, verifier = await _code(stack)
    token = await _token(gateway, grant_type="authorization_code", code=code, code_verifier=verifier,
                         redirect_uri=CALLBACK)
    assert token.status == 200, token.body
    assert token.headers["Cache-Control"] == "no-store"
    access_token = token.json["access_token"]

    answer = await gateway.call("/v1/exchanges", headers={"Authorization": f"Bearer {access_token}"},
                                body=json.dumps({"dataset": "quotient_familial", "purpose": PURPOSE,
                                                 "recipient": LYON, "fields": ["quotient_familial"]}).encode())
    assert answer.status == 200, answer.body
    assert answer.json["data"]["quotient_familial"]["valeur"] == 582  # Marie Claire Dupont's household
    assert answer.headers["DLNUF-Inclusion-Promise"] == "verified"

    calls = await gateway.records()
    assert [(c["kind"], c["outcome"]) for c in calls] == [("token", "released"), ("exchange", "released")]
    assert calls[0]["request_body"] is None and calls[0]["response_body"] is None  # no code, no token kept
    assert calls[1]["with_token"] and access_token not in json.dumps(calls[1]["request_headers"])
    assert code not in json.dumps([{k: str(v) for k, v in c.items()} for c in calls])

    # the token is bound to the gateway's key: in anyone else's hands, at the broker, it is refused
    async with BrokerClient(stack.broker, key=stack.paris.key) as other:
        with pytest.raises(BrokerProblem) as stolen:
            await other.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                 fields=["quotient_familial"], access_token=access_token)
    assert stolen.value.status in (401, 403)


async def test_a_refresh_through_the_gateway(stack: ConsentStack, gateway: GatewayUnderTest) -> None:
    code, verifier = await _code(stack, frequency="periodic")
    first = await _token(gateway, grant_type="authorization_code", code=code, code_verifier=verifier,
                         redirect_uri=CALLBACK)
    assert first.status == 200 and "refresh_token" in first.json
    again = await _token(gateway, grant_type="refresh_token", refresh_token=first.json["refresh_token"])
    assert again.status == 200 and again.json["access_token"] != first.json["access_token"]


async def test_the_brokers_oauth_errors_pass_through_unchanged(stack: ConsentStack,
                                                               gateway: GatewayUnderTest) -> None:
    answer = await _token(gateway, grant_type="authorization_code", code="not-a-code",
                          code_verifier="v" * 43, redirect_uri=CALLBACK)
    assert answer.status == 400
    assert answer.json == {"error": "invalid_grant", "error_description": "unknown or already used code"}
    [call] = await gateway.records()
    assert (call["kind"], call["outcome"], call["problem_type"]) == ("token", "refused", "invalid_grant")


@pytest.mark.parametrize(("form", "status", "slug"), [
    ({"grant_type": "refresh_token", "refresh_token": "r", "client_assertion": "x"}, 400, "invalid-request"),
    ({"grant_type": "refresh_token", "refresh_token": "r", "client_secret": "x"}, 400, "invalid-request"),
    ({"grant_type": "refresh_token", "refresh_token": "r", "client_id": "21750001600019"}, 403, "consumer-mismatch"),
], ids=["own-assertion", "own-secret", "other-client"])
async def test_token_calls_the_gateway_refuses(stack: ConsentStack, gateway: GatewayUnderTest, form: dict[str, str],
                                               status: int, slug: str) -> None:
    answer = await _token(gateway, **form)
    assert (answer.status, answer.json["type"]) == (status, GATEWAY_PROBLEM + slug)
    assert await gateway.records() == []
    wrong_type = await gateway.call("/oauth/token", body=b'{"grant_type": "refresh_token"}')
    assert (wrong_type.status, wrong_type.json["type"]) == (415, GATEWAY_PROBLEM + "unsupported-media-type")


async def test_pushed_authorization_requests_as_the_broker_offers_them(stack: ConsentStack,
                                                                      gateway: GatewayUnderTest) -> None:
    async with aiohttp.ClientSession() as session, session.get(
            stack.broker + "/.well-known/oauth-authorization-server") as resp:
        metadata = await resp.json() if resp.status == 200 else {}
    url, _, _ = _authorize_url(stack)
    params = dict(p.split("=", 1) for p in url.split("?", 1)[1].split("&"))
    answer = await gateway.call("/oauth/par", body="&".join(f"{k}={v}" for k, v in params.items()).encode(),
                                content_type=FORM)
    if "pushed_authorization_request_endpoint" in metadata:
        assert answer.status == 201, answer.body  # RFC 9126 §2.2
        assert isinstance(answer.json["request_uri"], str) and isinstance(answer.json["expires_in"], int)
        [call] = await gateway.records()
        assert (call["kind"], call["outcome"]) == ("par", "released")
    else:
        assert (answer.status, answer.json["type"]) == (404, GATEWAY_PROBLEM + "not-offered")
        assert await gateway.records() == []
