"""The consent flow driven by OAuth clients no one here wrote, with their defaults, against a broker on HTTPS:

- panva's openid-client (Node.js, OpenID-certified): discovery from the issuer URL, PAR or a plain authorization
  request, private_key_jwt (``aud`` the issuer, ``alg`` ``Ed25519`` or ``ES256``, a ``kid``), PKCE S256,
  authorization_details, the code grant with its RFC 9207 ``iss`` check, then a refresh;
- Authlib (Python), configured from the RFC 8414 metadata: private_key_jwt as Authlib writes it (``aud`` the
  token endpoint, no ``kid``, one hour of life), PKCE S256, authorization_details, the code grant, a refresh.

Each access token is then used at /v1/exchanges in a request signed by pyauth's http-message-signatures, whose
answer pyauth verifies. The citizen's browser is the suite's scripted one (it logs in at the sandbox OP and
answers the consent screen); nothing of the clients' side is the broker's code.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import ECKey, OKPKey

from tests.consent_harness import CALLBACK, LYON, ConsentStack, StartConsentStack, start_consent_stack  # noqa: F401
from tests.factories import PURPOSE
from tests.interop import node
from tests.interop.pyauth import signed_exchange
from tests.interop.tls import Tls, make_tls

DETAILS = [{"type": "dlnuf_exchange", "dataset": "quotient_familial", "purpose": PURPOSE,
            "fields": ["quotient_familial", "enfants"], "frequency": "periodic", "duration_days": 30}]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    yield make_tls(tmp_path_factory.mktemp("tls"))


async def https_stack(start: StartConsentStack, tls: Tls, key_alg: str) -> ConsentStack:
    return await start(tls=(tls.server_context(), tls.client_context()), key_alg=key_alg)


async def exchange_with_pyauth(stack: ConsentStack, tls: Tls, access_token: str) -> dict[str, Any]:
    """The exchange a consumer makes with its token: signed by pyauth, sent by requests, answer verified."""
    async with stack.browser() as http, http.get(stack.broker + "/.well-known/jwks.json") as resp:
        jwks = await resp.json()
    body = json.dumps({"dataset": "quotient_familial", "purpose": PURPOSE, "recipient": LYON,
                       "fields": ["quotient_familial"]}).encode()
    response, results = await asyncio.to_thread(
        signed_exchange, stack.broker + "/v1/exchanges", body, jwk=stack.lyon.key.to_jwk(), broker_jwks=jwks,
        access_token=access_token, verify=str(tls.ca))
    assert response.status_code == 200, response.text
    assert results and results[0].body == response.content
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("par", [True, False], ids=["par", "plain"])
@pytest.mark.parametrize("key_alg", ["ed25519", "ecdsa-p256-sha256"])
async def test_openid_client(start_consent_stack: StartConsentStack, tls: Tls, par: bool,  # noqa: F811
                             key_alg: str) -> None:
    stack = await https_stack(start_consent_stack, tls, key_alg)
    client = await node.NodeProcess.start("oauth_client.mjs", {
        "issuer": stack.broker, "client_id": LYON, "jwk": stack.lyon.key.to_jwk(), "redirect_uri": CALLBACK,
        "authorization_details": DETAILS, "par": par}, env={"NODE_EXTRA_CA_CERTS": str(tls.ca)})
    try:
        start = await client.read()
        assert "authorization_url" in start, start
        if par:
            assert "request_uri=urn" in start["authorization_url"]
        async with stack.browser() as browser:
            arrival = await stack.walk(browser, start["authorization_url"], untick=("enfants",))
        await client.send({"callback_url": arrival.url})
        tokens = await client.read()
        assert "access_token" in tokens, tokens
        assert tokens["token_type"].lower() == "bearer" and tokens["refresh_token"]
        [granted] = tokens["authorization_details"]
        assert granted["fields"] == ["quotient_familial"]  # what the citizen kept ticked
        answer = await exchange_with_pyauth(stack, tls, tokens["access_token"])
        assert answer["data"]["quotient_familial"]["valeur"] == 582
        await client.send({"refresh": True})
        refreshed = await client.read()
        assert "access_token" in refreshed, refreshed
        assert refreshed["access_token"] != tokens["access_token"]
        await exchange_with_pyauth(stack, tls, refreshed["access_token"])
    finally:
        await client.close()
    [assertion_jti] = await stack.sql("SELECT count(*) AS n FROM seen_nonces WHERE nonce LIKE 'jti:%'")
    assert assertion_jti["n"] == (3 if par else 2)  # PAR, token and refresh: each assertion claimed once


def _authlib_flow(stack_url: str, tls: Tls, jwk: dict[str, Any], walk: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a Python démarche writes with Authlib: metadata, then the code flow and a refresh. `walk` is the
    citizen's browser, given the authorization URL, returning the callback URL."""
    ca = str(tls.ca)  # given per call: requests lets REQUESTS_CA_BUNDLE override a session's verify
    metadata = requests.get(stack_url + "/.well-known/oauth-authorization-server", verify=ca, timeout=30).json()
    private = {k: v for k, v in jwk.items() if k != "kid"}
    key = OKPKey.import_key(private) if private["kty"] == "OKP" else ECKey.import_key(private)
    alg = "Ed25519" if private["kty"] == "OKP" else "ES256"
    assert alg in metadata["token_endpoint_auth_signing_alg_values_supported"]
    session = OAuth2Session(LYON, key, token_endpoint_auth_method=PrivateKeyJWT(metadata["token_endpoint"], alg=alg),
                            redirect_uri=CALLBACK, code_challenge_method="S256")
    with session:
        verifier = generate_token(64)
        url, _ = session.create_authorization_url(metadata["authorization_endpoint"], code_verifier=verifier,
                                                      authorization_details=json.dumps(DETAILS))
        callback = walk(url)
        token = session.fetch_token(metadata["token_endpoint"], authorization_response=callback,
                                    code_verifier=verifier, verify=ca)
        refreshed = session.refresh_token(metadata["token_endpoint"], refresh_token=token["refresh_token"], verify=ca)
    return dict(token), dict(refreshed)


@pytest.mark.parametrize("key_alg", ["ed25519", "ecdsa-p256-sha256"])
async def test_authlib(start_consent_stack: StartConsentStack, tls: Tls, key_alg: str) -> None:  # noqa: F811
    stack = await https_stack(start_consent_stack, tls, key_alg)
    loop = asyncio.get_running_loop()

    async def browse(url: str) -> str:
        async with stack.browser() as browser:
            return (await stack.walk(browser, url)).url

    def walk(url: str) -> str:  # from Authlib's thread, the browser runs on the test's loop
        return asyncio.run_coroutine_threadsafe(browse(url), loop).result(timeout=60)

    token, refreshed = await asyncio.to_thread(_authlib_flow, stack.broker, tls, stack.lyon.key.to_jwk(), walk)
    assert token["authorization_details"][0]["fields"] == ["quotient_familial", "enfants"]
    answer = await exchange_with_pyauth(stack, tls, token["access_token"])
    assert answer["data"]["quotient_familial"]["valeur"] == 582
    await exchange_with_pyauth(stack, tls, refreshed["access_token"])
    # Authlib's own assertions: an hour long (each jti is kept until then), and no kid (the key was found anyway)
    rows = await stack.sql("SELECT kid, expires_at - now() AS left FROM seen_nonces WHERE nonce LIKE 'jti:%'")
    assert len(rows) == 2 and all(r["kid"] == stack.lyon.key.kid and r["left"].total_seconds() > 3000 for r in rows)
