"""The consent flow's authorization server as standard clients see it: RFC 8414 metadata, RFC 9126 pushed
requests, RFC 7523 client assertions as libraries write them (and every refusal the issue lists), and RFC 6749 /
6750 answers on 401s. Assertions are forged with PyJWT, code independent of the broker's JOSE layer."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.consumer.client import BrokerClient
from consent.client_auth import ASSERTION_TYPE
from tests.consent_harness import CALLBACK, LYON, ConsentStack, StartConsentStack, start_consent_stack  # noqa: F401
from tests.factories import PURPOSE, QF_FIELDS, consumer

PROBLEM = "https://dlnuf.org/problems/"
DETAILS = json.dumps([{"type": "dlnuf_exchange", "dataset": "quotient_familial", "purpose": PURPOSE,
                       "fields": list(QF_FIELDS)}])


@pytest.fixture
async def stack(start_consent_stack: StartConsentStack) -> ConsentStack:  # noqa: F811
    return await start_consent_stack()


def assertion(stack: ConsentStack, *, key: Any = None, alg: str | None = None, kid: str | bool | None = True,
              typ: str | None = None, lifetime: int = 60, **claims: Any) -> str:
    """A client assertion for Lyon, as a library would write it; `claims` override (None removes)."""
    now = int(time.time())
    body: dict[str, Any] = {"iss": LYON, "sub": LYON, "aud": stack.broker, "iat": now, "exp": now + lifetime,
                            "jti": secrets.token_urlsafe(16)}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    headers: dict[str, Any] = {}
    if kid is True:
        headers["kid"] = stack.lyon.key.kid
    elif isinstance(kid, str):
        headers["kid"] = kid
    if typ is not None:
        headers["typ"] = typ
    return jwt.encode(body, key if key is not None else stack.lyon.key.private_key, algorithm=alg or "EdDSA",
                      headers=headers)


async def post(stack: ConsentStack, path: str, form: dict[str, str], headers: dict[str, str] | None = None,
               ) -> tuple[int, dict[str, Any], Any]:
    async with aiohttp.ClientSession() as http, http.post(stack.broker + path, data=form,
                                                          headers=headers or {}) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


def with_assertion(value: str, **form: str) -> dict[str, str]:
    return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": value, **form}


async def token_attempt(stack: ConsentStack, value: str, **headers: str) -> tuple[int, dict[str, Any], Any]:
    """A token request whose code is bogus: `invalid_grant` means the client authenticated."""
    return await post(stack, "/oauth/token", with_assertion(value, grant_type="authorization_code", code="x",
                                                            redirect_uri=CALLBACK, code_verifier="v" * 43), headers)


# ------------------------------------------------------------------------------------------ RFC 8414 metadata


async def test_metadata_names_every_endpoint_and_what_the_server_does(start_consent_stack: StartConsentStack) -> None:  # noqa: F811
    for require_par in (False, True):
        stack = await start_consent_stack(oauth_require_par=require_par)
        async with aiohttp.ClientSession() as http:
            docs = []
            for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
                async with http.get(stack.broker + path) as resp:
                    assert resp.status == 200
                    docs.append(await resp.json())
        doc = docs[0]
        assert docs[1] == doc
        assert doc["issuer"] == stack.broker
        assert doc["authorization_endpoint"] == stack.broker + "/oauth/authorize"
        assert doc["token_endpoint"] == stack.broker + "/oauth/token"
        assert doc["pushed_authorization_request_endpoint"] == stack.broker + "/oauth/par"
        assert doc["jwks_uri"] == stack.broker + "/.well-known/jwks.json"
        assert doc["require_pushed_authorization_requests"] is require_par
        assert doc["authorization_details_types_supported"] == ["dlnuf_exchange"]
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert doc["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
        assert set(doc["token_endpoint_auth_signing_alg_values_supported"]) == {"Ed25519", "EdDSA", "ES256"}
        assert doc["authorization_response_iss_parameter_supported"] is True
        assert doc["grant_types_supported"] == ["authorization_code", "refresh_token"]


# ------------------------------------------------------------------------------------------ client assertions


@pytest.mark.parametrize("variant", ["aud-issuer", "aud-token-endpoint", "aud-array", "typ-rfc7523bis", "typ-jwt",
                                     "no-kid", "alg-ed25519", "no-iat", "hour-long"])
async def test_assertions_as_libraries_write_them_are_accepted(stack: ConsentStack, variant: str) -> None:
    token_endpoint = stack.broker + "/oauth/token"
    value = {
        "aud-issuer": lambda: assertion(stack),
        "aud-token-endpoint": lambda: assertion(stack, aud=token_endpoint),
        "aud-array": lambda: assertion(stack, aud=["https://elsewhere.example", token_endpoint]),
        "typ-rfc7523bis": lambda: assertion(stack, typ="client-authentication+jwt"),
        "typ-jwt": lambda: assertion(stack, typ="JWT"),
        "no-kid": lambda: assertion(stack, kid=False),  # Authlib's
        "alg-ed25519": lambda: _ed25519_alg(stack),  # openid-client's (RFC 9864), which PyJWT cannot write
        "no-iat": lambda: assertion(stack, iat=None),
        "hour-long": lambda: assertion(stack, lifetime=3600, aud=token_endpoint, kid=False),  # Authlib's default
    }[variant]()
    status, body, _ = await token_attempt(stack, value)
    assert (status, body["error"]) == (400, "invalid_grant"), body


def _ed25519_alg(stack: ConsentStack) -> str:
    # PyJWT knows Ed25519 only as "EdDSA": write the RFC 9864 header by hand, sign the input with the raw key
    import base64

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    header = {"alg": "Ed25519", "kid": stack.lyon.key.kid, "typ": "client-authentication+jwt"}
    claims = {"iss": LYON, "sub": LYON, "aud": stack.broker, "iat": now, "exp": now + 60, "jti": secrets.token_hex(8)}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = stack.lyon.key.private_key.sign(signing_input.encode())  # type: ignore[call-arg]
    return f"{signing_input}.{b64(signature)}"


async def test_a_p256_client_signs_es256_and_its_jti_is_claimed_under_its_key() -> None:
    from datetime import UTC, datetime, timedelta

    from consent import client_auth

    ec_lyon = consumer(LYON, alg="ecdsa-p256-sha256")
    now = datetime.now(UTC)
    value = jwt.encode({"iss": LYON, "sub": LYON, "aud": "https://b.example", "exp": int(now.timestamp()) + 60,
                        "jti": "j"}, ec_lyon.key.private_key, algorithm="ES256")
    claimed: list[tuple[str, str, datetime]] = []

    async def claim(kid: str, jti: str, until: datetime) -> bool:
        fresh = all((kid, jti) != (k, j) for k, j, _ in claimed)
        claimed.append((kid, jti, until))
        return fresh

    def verify() -> Any:
        return client_auth.verify_client_assertion(
            with_assertion(value), audiences={"https://b.example"}, claim_jti=claim, now=now,
            keys_of=lambda owner: [ec_lyon.key.public_key(owner=LYON)] if owner == LYON else [],
            max_lifetime=timedelta(hours=1))

    client, key = await verify()
    assert (client, key.kid) == (LYON, ec_lyon.key.kid)
    # remembered until the assertion could no longer be accepted: its expiry plus the leeway
    expiry = datetime.fromtimestamp(int(now.timestamp()) + 60, UTC)
    assert claimed == [(ec_lyon.key.kid, "jti:j", expiry + client_auth.LEEWAY)]
    with pytest.raises(client_auth.ClientAuthFailed):
        await verify()


def _hs256_with_public_key(stack: ConsentStack) -> str:
    # the classic confusion: the client's public key, as the registry publishes it, used as an HMAC secret
    public = stack.lyon.key.public_jwk()["x"].encode()
    return jwt.encode({"iss": LYON, "sub": LYON, "aud": stack.broker, "exp": int(time.time()) + 60, "jti": "h"},
                      public, algorithm="HS256", headers={"kid": stack.lyon.key.kid})


@pytest.mark.parametrize(("variant", "description"), [
    ("wrong-aud", "aud must be the issuer"),
    ("expired", "expired"),
    ("too-long", "lives too long"),
    ("alg-none", "alg must be one of"),
    ("hs256-public-key", "alg must be one of"),
    ("unknown-client", "client authentication failed"),
    ("other-clients-key", "client authentication failed"),
    ("typ-access-token", "typ must be"),
    ("iss-not-sub", "iss and sub"),
    ("client-id-differs", "client_id differs"),
    ("no-jti", "jti"),
    ("not-a-jwt", "not a JWT"),
])
async def test_assertion_refusals(stack: ConsentStack, variant: str, description: str) -> None:
    stranger = Ed25519PrivateKey.generate()
    value = {
        "wrong-aud": lambda: assertion(stack, aud="https://another-server.example/oauth/token"),
        "expired": lambda: assertion(stack, exp=int(time.time()) - 120),
        "too-long": lambda: assertion(stack, lifetime=3600 * 3),
        "alg-none": lambda: jwt.encode({"iss": LYON, "sub": LYON, "aud": stack.broker, "jti": "n",
                                        "exp": int(time.time()) + 60}, None, algorithm="none"),
        "hs256-public-key": lambda: _hs256_with_public_key(stack),
        "unknown-client": lambda: assertion(stack, iss="00000000000000", sub="00000000000000"),
        "other-clients-key": lambda: assertion(stack, key=stranger, kid=False),
        "typ-access-token": lambda: assertion(stack, typ="at+jwt"),
        "iss-not-sub": lambda: assertion(stack, sub="someone-else"),
        "client-id-differs": lambda: assertion(stack),
        "no-jti": lambda: assertion(stack, jti=None),
        "not-a-jwt": lambda: "pas-un-jeton",
    }[variant]()
    form = with_assertion(value, grant_type="authorization_code", code="x", redirect_uri=CALLBACK)
    if variant == "client-id-differs":
        form["client_id"] = stack.paris.siret
    status, body, headers = await post(stack, "/oauth/token", form)
    assert (status, body["error"]) == (400, "invalid_client"), body
    assert description in body["error_description"], body
    assert "WWW-Authenticate" not in headers  # a 400: RFC 6749 §5.2 sends no challenge for in-body authentication
    assert headers["Cache-Control"] == "no-store"


async def test_a_replayed_assertion_is_refused(stack: ConsentStack) -> None:
    value = assertion(stack)
    first, _, _ = await token_attempt(stack, value)
    status, body, _ = await token_attempt(stack, value)
    assert first == 400 and (status, body["error"]) == (400, "invalid_client")
    assert body["error_description"] == "client authentication failed"


async def test_the_lifetime_limit_is_the_operators(start_consent_stack: StartConsentStack) -> None:  # noqa: F811
    stack = await start_consent_stack(client_assertion_max_lifetime=120.0)
    status, body, _ = await token_attempt(stack, assertion(stack, lifetime=600))
    assert (status, body["error"]) == (400, "invalid_client")
    assert "at most 120 s" in body["error_description"]
    status, body, _ = await token_attempt(stack, assertion(stack, lifetime=100))
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_fapi2_audience_is_the_issuer_alone_when_the_operator_says_so(
        start_consent_stack: StartConsentStack) -> None:  # noqa: F811
    stack = await start_consent_stack(client_assertion_audience="issuer")
    token_endpoint = stack.broker + "/oauth/token"
    for refused in (assertion(stack, aud=token_endpoint), assertion(stack, aud=[stack.broker])):
        status, body, _ = await token_attempt(stack, refused)
        assert (status, body["error"]) == (400, "invalid_client") and "issuer" in body["error_description"]
    status, body, _ = await token_attempt(stack, assertion(stack, aud=stack.broker))
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_an_authorization_header_gets_a_challenge_of_its_scheme(stack: ConsentStack) -> None:
    basic = {"Authorization": "Basic " + __import__("base64").b64encode(f"{LYON}:secret".encode()).decode()}
    status, body, headers = await post(stack, "/oauth/token", {"grant_type": "authorization_code", "code": "x"},
                                       basic)
    assert (status, body["error"]) == (401, "invalid_client")
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith("Basic realm=") and 'error="invalid_client"' in challenge
    assert "error_description=" in challenge
    # two methods at once is a malformed request, not a failed authentication
    status, body, _ = await post(stack, "/oauth/token", with_assertion(assertion(stack), grant_type="x"), basic)
    assert (status, body["error"]) == (400, "invalid_request")


# ------------------------------------------------------------------------------------------ RFC 9126 PAR


async def pushed(stack: ConsentStack, client: BrokerClient, **change: str | None) -> tuple[int, dict[str, Any], str,
                                                                                           str]:
    auth = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                        fields=QF_FIELDS)
    params = dict(parse_qsl(urlsplit(auth.url).query))
    params.update({k: v for k, v in change.items() if v is not None})
    params = {k: v for k, v in params.items() if change.get(k, "") is not None}
    status, body, _ = await post(stack, "/oauth/par", {**params, "client_assertion_type": ASSERTION_TYPE,
                                                       "client_assertion": client.client_assertion()})
    return status, body, auth.state, auth.code_verifier


async def test_pushed_request_then_the_whole_flow(stack: ConsentStack) -> None:
    async with stack.client() as client, stack.browser() as browser:
        status, body, state, verifier = await pushed(stack, client)
        assert status == 201 and body["expires_in"] == 90
        assert body["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
        url = stack.broker + "/oauth/authorize?" + urlencode({"client_id": LYON, "request_uri": body["request_uri"],
                                                              "state": "ignored: only the pushed one counts"})
        arrival = await stack.walk(browser, url)
        assert arrival.params["state"] == state and arrival.params["iss"] == stack.broker
        token = await client.exchange_code(code=arrival.params["code"], code_verifier=verifier, redirect_uri=CALLBACK)
        answer = await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                       fields=["quotient_familial"], access_token=token.access_token)
        assert answer.data["quotient_familial"]["valeur"] == 582

        # used once: the same request_uri again is a page, never a code
        async with browser.get(url, allow_redirects=False) as resp:
            assert resp.status == 400 and "Location" not in resp.headers
            assert "Demande expirée" in await resp.text()


async def test_pushed_request_expired_or_another_clients(stack: ConsentStack) -> None:
    async with stack.client() as client, stack.browser() as browser:
        _, body, _, _ = await pushed(stack, client)
        url = stack.broker + "/oauth/authorize?" + urlencode({"client_id": stack.paris.siret,
                                                              "request_uri": body["request_uri"]})
        async with browser.get(url, allow_redirects=False) as resp:
            assert resp.status == 400 and "Location" not in resp.headers
        _, body, _, _ = await pushed(stack, client)
        await stack.sql("UPDATE pushed_authorization_requests SET expires_at = now() - interval '1 second' "
                        "WHERE used_at IS NULL")
        url = stack.broker + "/oauth/authorize?" + urlencode({"client_id": LYON, "request_uri": body["request_uri"]})
        async with browser.get(url, allow_redirects=False) as resp:
            assert resp.status == 400 and "Location" not in resp.headers
        for unknown in ("urn:ietf:params:oauth:request_uri:inconnu", "https://evil.example/req"):
            url = stack.broker + "/oauth/authorize?" + urlencode({"client_id": LYON, "request_uri": unknown})
            async with browser.get(url, allow_redirects=False) as resp:
                assert resp.status == 400
    assert await stack.sql("SELECT * FROM authorization_requests") == []


@pytest.mark.parametrize(("change", "error"), [
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"redirect_uri": "https://evil.example/cb"}, "invalid_request"),
    ({"authorization_details": DETAILS.replace(PURPOSE, "autre-chose")}, "invalid_authorization_details"),
    ({"request_uri": "urn:ietf:params:oauth:request_uri:x"}, "invalid_request"),
    ({"client_id": "21750001600019"}, "invalid_client"),  # the client_id must be the authenticated client
])
async def test_pushed_request_refusals(stack: ConsentStack, change: dict[str, str], error: str) -> None:
    async with stack.client() as client:
        status, body, _, _ = await pushed(stack, client, **change)
    assert (status, body["error"]) == (400, error), body
    assert await stack.sql("SELECT * FROM pushed_authorization_requests") == []


async def test_par_required_refuses_a_plain_request(start_consent_stack: StartConsentStack) -> None:  # noqa: F811
    stack = await start_consent_stack(oauth_require_par=True)
    async with stack.client() as client, stack.browser() as browser:
        auth = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                            fields=QF_FIELDS)
        async with browser.get(auth.url, allow_redirects=False) as resp:
            assert resp.status == 302
            back = dict(parse_qsl(urlsplit(resp.headers["Location"]).query))
        assert back["error"] == "invalid_request" and back["state"] == auth.state and back["iss"] == stack.broker
        status, body, _, _ = await pushed(stack, client)
        assert status == 201
        url = stack.broker + "/oauth/authorize?" + urlencode({"client_id": LYON, "request_uri": body["request_uri"]})
        assert "code" in (await stack.walk(browser, url)).params


# ------------------------------------------------------------------------------------------ 401s at /v1/exchanges


async def test_exchange_401s_carry_their_challenge(stack: ConsentStack) -> None:
    async with stack.client() as client:
        # a forged token: invalid-token, RFC 6750 Bearer challenge, no reason
        status, payload, headers = await _exchange_raw(client, access_token="forged.token.value")
        assert status == 401 and payload["type"] == PROBLEM + "invalid-token"
        assert headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    async with aiohttp.ClientSession() as http, http.post(stack.broker + "/v1/exchanges", json={}) as resp:
        assert resp.status == 401 and (await resp.json())["type"] == PROBLEM + "signature-rejected"
        assert resp.headers["WWW-Authenticate"].startswith("Signature")
        assert '"content-digest"' in resp.headers["Accept-Signature"]
        async with http.get(stack.broker + "/citizen/api/consents") as citizen:
            assert citizen.status == 401 and citizen.headers["WWW-Authenticate"].startswith("Cookie")


async def _exchange_raw(client: BrokerClient, *, access_token: str) -> tuple[int, dict[str, Any], Any]:
    """An exchange through the SDK's signing, keeping the answer's headers."""
    from multidict import CIMultiDict

    from broker.signing import messages

    url = client.base_url + "/v1/exchanges"
    raw = json.dumps({"dataset": "quotient_familial", "purpose": PURPOSE, "recipient": LYON,
                      "fields": ["quotient_familial"]}).encode()
    headers = CIMultiDict({"Content-Type": "application/json", "Authorization": f"Bearer {access_token}"})
    headers.update(messages.sign_request(method="POST", url=url, headers=headers, body=raw, private_key=client.key))
    async with aiohttp.ClientSession() as http, http.post(url, data=raw, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers
