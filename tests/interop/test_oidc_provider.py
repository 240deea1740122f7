"""The citizen login against panva's oidc-provider (OpenID-certified) as the OP, the broker configured by its
environment variables alone (`load_config(env=...)`), in the three shapes of tests/interop/js/op.mjs:

- FranceConnect-like, with the ``franceconnect`` preset: one scope per claim, acr eidas1, the identity in a signed
  userinfo (JWT), client_secret_post;
- generic, with the ``generic`` preset: ``openid profile email``, no acr, an issuer ending in ``/``,
  client_secret_basic, RS256, the identity read from the id_token (userinfo off) under the OP's own claim names
  for the birth place and country (DLNUF_OIDC_CLAIMS);
- FranceConnect+-like, with the ``franceconnect-plus`` preset: id_token and userinfo signed then encrypted to the
  broker's keys (RSA-OAEP-256, or ECDH-ES, with A256GCM), acr eidas2, private_key_jwt; then an RP-initiated logout
  with the decrypted id_token as the hint.

And the refusals: cancel at the OP, an id_token encrypted to a key that is not the broker's, an OP whose discovery
names another issuer than the configured one, an authorization response whose RFC 9207 ``iss`` was changed.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import asyncpg
import pytest
import structlog
from aiohttp import web
from joserfc.jwk import ECKey, KeySet, RSAKey
from yarl import URL

import adapters.sandbox
from adapters.sandbox import directory
from broker.app import create_app
from broker.config import load_config
from broker.service.state import STATE
from consent import oidc_keys, sessions
from tests.adapters.test_franceconnect_sandbox import parse_forms, pick_citizen
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml
from tests.interop.node import NodeProcess

CLIENT_ID = "dlnuf-broker"
SECRET = "secret-du-broker-chez-oidc-provider-assez-long"
CITIZENS = Path(adapters.sandbox.__file__).parent / "citizens.json"
MARIE, NOEL = "dupont-marie-claire", "ndiaye-noel"


@dataclass
class Stack:
    broker: str
    issuer: str
    app: web.Application
    database_url: str

    def browser(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def sessions(self) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url)
        try:
            return list(await conn.fetch("SELECT * FROM citizen_sessions"))
        finally:
            await conn.close()


Start = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def start(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Start]:
    # read by the running broker from its environment, as in production: never in its configuration object
    monkeypatch.setenv("DLNUF_OIDC_CLIENT_SECRET", SECRET)
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    closing: list[Any] = []

    async def start(shape: str, *, env: dict[str, str] | None = None, client: dict[str, Any] | None = None,
                    encrypt_to: KeySet | None = None, enc_alg: str = "RSA-OAEP-256",
                    configured_issuer: Callable[[str], str] | None = None) -> Stack:
        """The OP in `shape`, then a broker registered at it, configured by `env` over the shape's own.
        `encrypt_to` makes the OP encrypt to other keys than the broker's; `configured_issuer` derives the
        broker's DLNUF_OIDC_ISSUER from the OP's real one."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        broker = f"http://127.0.0.1:{sock.getsockname()[1]}"
        state = tmp_path / "state"
        registration: dict[str, Any] = {
            "client_id": CLIENT_ID, "redirect_uris": [broker + "/citizen/callback"],
            "post_logout_redirect_uris": [broker + "/citizen/logged-out"], "grant_types": ["authorization_code"],
            "response_types": ["code"]}
        settings = {"DLNUF_OIDC_PRESET": shape, "DLNUF_OIDC_CLIENT_ID": CLIENT_ID, "DLNUF_PUBLIC_URL": broker,
                    "DLNUF_OIDC_REDIRECT_URI": broker + "/citizen/callback", "DLNUF_STATE_DIR": str(state)}
        if shape == "franceconnect":
            registration |= {"client_secret": SECRET, "token_endpoint_auth_method": "client_secret_post",
                             "id_token_signed_response_alg": "ES256", "userinfo_signed_response_alg": "ES256"}
        elif shape == "generic":
            registration |= {"client_secret": SECRET, "token_endpoint_auth_method": "client_secret_basic",
                             "id_token_signed_response_alg": "RS256"}
            settings |= {"DLNUF_OIDC_CLAIMS": "birthplace=place_of_birth,birthcountry=country_of_birth",
                         "DLNUF_OIDC_USERINFO": "false"}
        else:
            # the broker's keys exist before the OP is told about them, as an operator registers its jwks
            signer = oidc_keys.load_or_create_client_key(state / "oidc-client-key.jwk")
            decrypt = oidc_keys.load_or_create_decryption_keys(state / "oidc-encryption-keys.jwks")
            published = oidc_keys.public_jwks(signer, encrypt_to if encrypt_to is not None else decrypt)
            registration |= {"token_endpoint_auth_method": "private_key_jwt", "jwks": published,
                             "token_endpoint_auth_signing_alg": "ES256", "id_token_signed_response_alg": "ES256",
                             "id_token_encrypted_response_alg": enc_alg, "id_token_encrypted_response_enc": "A256GCM",
                             "userinfo_signed_response_alg": "ES256", "userinfo_encrypted_response_alg": enc_alg,
                             "userinfo_encrypted_response_enc": "A256GCM"}
            settings |= {"DLNUF_OIDC_TOKEN_AUTH": "private_key_jwt", "DLNUF_OIDC_ENCRYPTION_ALGS": enc_alg}
        registration |= client or {}
        op = await NodeProcess.start("op.mjs", {
            "shape": shape, "host": "127.0.0.2", "trailing_slash": shape == "generic", "client": registration,
            "citizens_file": str(CITIZENS), "signing_alg": "RS256" if shape == "generic" else "ES256"})
        closing.append(op)
        issuer = (await op.read())["issuer"]
        settings |= {"DLNUF_OIDC_ISSUER": configured_issuer(issuer) if configured_issuer else issuer,
                     "DLNUF_OIDC_CLIENT_SECRET": SECRET, **(env or {})}
        registry = tmp_path / "registry.toml"
        registry.write_text(registry_toml([consumer()]))
        config = load_config(env=settings, database_url=database_url, registry_file=registry, registry_poll=0.2)
        app = create_app(config)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        closing.append(runner)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        return Stack(broker, issuer, app, database_url)

    yield start
    for thing in reversed(closing):
        if isinstance(thing, NodeProcess):
            await thing.close()
        else:
            await thing.cleanup()


@dataclass
class Landing:
    status: int
    url: URL
    text: str
    hops: list[str]


async def login(stack: Stack, browser: aiohttp.ClientSession, citizen: str = MARIE, decision: str = "accept",
                change_callback: Callable[[str], str] | None = None) -> Landing:
    """/citizen/login, oidc-provider's redirects to our picker, pick (or cancel), and every redirect back.
    `change_callback` rewrites the OP's redirect to the broker's callback (an attacker in the middle)."""
    async with browser.get(stack.broker + "/citizen/login") as resp:
        assert resp.status == 200 and str(resp.url).startswith(stack.issuer.rstrip("/")), await resp.text()
        action, form = pick_citizen(await resp.text(), citizen, decision)
        page = resp.url
    url, method, data, hops = str(page.join(URL(action))), "POST", form, []
    for _ in range(12):
        async with browser.request(method, url, data=data, allow_redirects=False) as resp:
            text, location = await resp.text(), resp.headers.get("Location")
            if resp.status not in (302, 303) or location is None:
                return Landing(resp.status, resp.url, text, hops)
        url, method, data = str(resp.url.join(URL(location))), "GET", None
        if url.startswith(stack.broker + "/citizen/callback") and change_callback is not None:
            url = change_callback(url)
        hops.append(url)
    raise AssertionError(f"too many redirects: {hops}")


async def session_of(stack: Stack, browser: aiohttp.ClientSession) -> sessions.CitizenSession:
    token = next(c.value for c in browser.cookie_jar if c.key == sessions.COOKIE)
    state = stack.app[STATE]
    session = await sessions.load_session(state.pool, token, datetime.now(UTC), sealer=state.sealer)
    assert session is not None
    return session


# ------------------------------------------------------------------------------------------ three OPs


async def test_franceconnect_shaped(start: Start) -> None:
    stack = await start("franceconnect")
    async with stack.browser() as browser:
        landed = await login(stack, browser)
        assert landed.status == 200 and landed.url == URL(stack.broker + "/citizen/"), landed.text[:500]
        callback = next(h for h in landed.hops if "/citizen/callback" in h)
        assert dict(parse_qsl(urlsplit(callback).query))["iss"] == stack.issuer  # RFC 9207, checked by the broker
        session = await session_of(stack, browser)
    assert session.identity == directory().citizen(MARIE).pivot
    assert (session.acr, session.oidc_issuer) == ("eidas1", stack.issuer)


async def test_generic_with_a_trailing_slash_no_acr_and_the_identity_in_the_id_token(start: Start) -> None:
    stack = await start("generic")
    assert stack.issuer.endswith("/")
    async with stack.browser() as browser:
        landed = await login(stack, browser, NOEL)  # born abroad: no birth place at all
        assert landed.status == 200 and landed.url == URL(stack.broker + "/citizen/"), landed.text[:500]
        session = await session_of(stack, browser)
    assert session.identity == directory().citizen(NOEL).pivot
    assert (session.acr, session.oidc_issuer) == ("", stack.issuer)


@pytest.mark.parametrize("enc_alg", ["RSA-OAEP-256", "ECDH-ES"])
async def test_franceconnect_plus_shaped_encrypted_then_logout(start: Start, enc_alg: str) -> None:
    stack = await start("franceconnect-plus", enc_alg=enc_alg)
    async with stack.browser() as browser:
        async with browser.get(stack.broker + "/citizen/jwks.json") as resp:
            published = await resp.json()
        assert {k["use"] for k in published["keys"]} == {"sig", "enc"}
        landed = await login(stack, browser)
        assert landed.status == 200 and landed.url == URL(stack.broker + "/citizen/"), landed.text[:500]
        session = await session_of(stack, browser)
        assert session.identity == directory().citizen(MARIE).pivot and session.acr == "eidas2"
        assert session.id_token_hint.count(".") == 2  # kept decrypted: the OP reads it back at logout
        # RP-initiated logout at oidc-provider, which asks the citizen to confirm
        [logout] = [f for f in parse_forms(landed.text) if f.action == "/citizen/logout"]
        async with browser.post(stack.broker + logout.action, data=logout.fields) as resp:
            assert resp.status == 200 and str(resp.url).startswith(stack.issuer), await resp.text()
            [confirm] = [f for f in parse_forms(await resp.text()) if f.method == "post"]
            confirm_url = resp.url.join(URL(confirm.action))
        async with browser.post(confirm_url, data={**confirm.fields, "logout": "yes"}) as resp:
            assert resp.status == 200 and resp.url.path == "/citizen/logged-out", await resp.text()
    assert await stack.sessions() == []


# ------------------------------------------------------------------------------------------ refusals


def _reason(logs: list[dict[str, Any]]) -> str:
    [entry] = [e for e in logs if e["event"] == "citizen login refused"]
    return f"{entry['error']}: {entry['reason']}"


async def test_cancel_at_the_op(start: Start) -> None:
    stack = await start("franceconnect")
    async with stack.browser() as browser:
        with structlog.testing.capture_logs() as logs:
            landed = await login(stack, browser, decision="cancel")
    assert landed.status == 400 and "Connexion annulée" in landed.text and "FranceConnect" in landed.text
    assert _reason(logs).startswith("LoginDenied: the OP answered error=access_denied")
    assert await stack.sessions() == []


async def test_an_id_token_encrypted_to_another_key_is_refused(start: Start) -> None:
    stranger = KeySet([RSAKey.generate_key(2048, {"use": "enc", "alg": "RSA-OAEP-256"}, private=True, auto_kid=True),
                       ECKey.generate_key("P-256", {"use": "enc", "alg": "ECDH-ES"}, private=True, auto_kid=True)])
    stack = await start("franceconnect-plus", encrypt_to=stranger)
    async with stack.browser() as browser:
        with structlog.testing.capture_logs() as logs:
            landed = await login(stack, browser)
    assert landed.status == 502 and "Connexion refusée" in landed.text
    assert "does not decrypt" in _reason(logs) and "InvalidIdToken" in _reason(logs)
    assert await stack.sessions() == []


async def test_an_op_whose_discovery_names_another_issuer(start: Start) -> None:
    # the OP's issuer ends in "/": configured without it, the broker finds a document naming another issuer
    stack = await start("generic", configured_issuer=lambda real: real.rstrip("/"))
    async with stack.browser() as browser, browser.get(stack.broker + "/citizen/login") as resp:
        assert resp.status == 502 and "indisponible" in await resp.text()
        assert str(resp.url).startswith(stack.broker)  # never sent to an OP it could not verify
    assert await stack.sessions() == []


async def test_a_changed_rfc9207_iss_is_refused(start: Start) -> None:
    stack = await start("franceconnect")

    def swap(url: str) -> str:
        parts = urlsplit(url)
        query = {**dict(parse_qsl(parts.query)), "iss": "http://127.0.0.3:1"}
        return f"{stack.broker}{parts.path}?{urlencode(query)}"

    async with stack.browser() as browser:
        with structlog.testing.capture_logs() as logs:
            landed = await login(stack, browser, change_callback=swap)
    assert landed.status == 502 and "RFC 9207" in _reason(logs)
    assert await stack.sessions() == []
