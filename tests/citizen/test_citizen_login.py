"""Citizen login end to end: the broker as an OpenID Connect relying party of the sandbox FranceConnect OP, over
real HTTP (real redirects, real signed id_tokens), sessions in a real PostgreSQL, and every refusal."""

from __future__ import annotations

import base64
import dataclasses
import html
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import asyncpg
import jwt
import pytest
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm
from yarl import URL

from adapters.sandbox import directory
from adapters.sandbox.franceconnect import PROVIDER, ClientConfig, Misbehaviour, Provider, start_franceconnect
from adapters.subjects import subject_key
from broker.app import create_app
from broker.citizen.login import citizen_required
from broker.config import CitizenLoginConfig, ConfigError, load_config
from broker.service.openapi import openapi_document
from broker.service.state import STATE
from consent import oidc, sessions
from consent.sealing import Sealer
from consent.sessions import CitizenSession
from tests.adapters.test_franceconnect_sandbox import parse_forms, pick_citizen
from tests.broker_harness import broker_config
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml

CLIENT_ID = "dlnuf-broker"
SECRET = "secret-du-broker-suffisamment-long-pour-hs256"
SECRET_ENV = "DLNUF_TEST_OIDC_CLIENT_SECRET"
LIFETIME = 1800.0


# ------------------------------------------------------------------------------------------ a broker and an OP


@dataclass
class Stack:
    broker: str
    """Base URL of the broker (127.0.0.1): a different host from the OP's (127.0.0.2), so cookies stay apart."""
    issuer: str
    op: Provider
    app: web.Application
    database_url: str
    config: CitizenLoginConfig

    def browser(self) -> aiohttp.ClientSession:
        # unsafe=True: the jar keeps cookies of IP-address hosts, as a browser does
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def rows(self) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url)
        try:
            return list(await conn.fetch("SELECT * FROM citizen_sessions ORDER BY created_at"))
        finally:
            await conn.close()


StartStack = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def start_stack(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                      ) -> AsyncIterator[StartStack]:
    """Start an OP and a broker registered at it; `extra_routes` are added to the broker before it starts."""
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    runners: list[web.AppRunner] = []

    async def start(*, op_options: dict[str, Any] | None = None, issuer: str | None = None,
                    extra_routes: Callable[[web.Application], None] | None = None, **login: Any) -> Stack:
        # the broker's port first: its callback must be registered at the OP before either starts
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        broker = f"http://127.0.0.1:{sock.getsockname()[1]}"
        clients = {CLIENT_ID: ClientConfig(SECRET, [broker + "/citizen/callback"], [broker + "/citizen/logged-out"],
                                           name="DLNUF")}
        op_runner, op_issuer = await start_franceconnect(clients, host="127.0.0.2", **(op_options or {}))
        runners.append(op_runner)
        settings = CitizenLoginConfig(**{
            "issuer": issuer or op_issuer, "client_id": CLIENT_ID, "client_secret_env": SECRET_ENV,
            "redirect_uri": broker + "/citizen/callback", "post_logout_redirect_uri": broker + "/citizen/logged-out",
            "session_lifetime": LIFETIME, "cookie_secure": False, **login})
        config = broker_config(tmp_path, database_url, registry_toml([consumer()]), citizen_login=settings)
        app = create_app(config)
        if extra_routes is not None:
            extra_routes(app)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        await web.SockSite(runner, sock).start()
        assert op_runner.app is not None
        return Stack(broker, op_issuer, op_runner.app[PROVIDER], app, database_url, settings)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def stack(start_stack: StartStack) -> Stack:
    return await start_stack()


@dataclass
class Landing:
    status: int
    url: URL
    text: str
    history: list[tuple[int, str]]
    """Every redirect on the way: (status, Location)."""


async def open_picker(browser: aiohttp.ClientSession, stack: Stack, next_path: str | None = None) -> tuple[URL, str]:
    """Start the login at the broker; follow the real redirect to the OP's picker page."""
    params = {"next": next_path} if next_path is not None else {}
    async with browser.get(stack.broker + "/citizen/login", params=params) as resp:
        assert resp.status == 200, await resp.text()
        assert str(resp.url).startswith(stack.issuer + "/authorize?")
        assert [r.status for r in resp.history] == [302]
        return resp.url, await resp.text()


async def login(browser: aiohttp.ClientSession, stack: Stack, citizen_id: str = "dupont-marie-claire",
                next_path: str | None = None, decision: str = "accept") -> Landing:
    """A citizen logs in: the broker sends them to the OP, they pick themselves, and every redirect is followed."""
    page_url, page = await open_picker(browser, stack, next_path)
    action, form = pick_citizen(page, citizen_id, decision)
    async with browser.post(page_url.join(URL(action)), data=form) as resp:
        return Landing(resp.status, resp.url, await resp.text(),
                       [(r.status, r.headers["Location"]) for r in resp.history])


async def callback_url(browser: aiohttp.ClientSession, stack: Stack, citizen_id: str = "dupont-marie-claire",
                       next_path: str | None = None) -> str:
    """Run the login up to the OP's redirect to the broker's callback, and stop there."""
    page_url, page = await open_picker(browser, stack, next_path)
    action, form = pick_citizen(page, citizen_id)
    async with browser.post(page_url.join(URL(action)), data=form, allow_redirects=False) as resp:
        assert resp.status == 302
        location: str = resp.headers["Location"]
    assert location.startswith(stack.broker + "/citizen/callback?")
    return location


def set_cookies(resp: aiohttp.ClientResponse) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in resp.headers.getall("Set-Cookie", []):
        jar.load(header)
    return jar


def session_token(browser: aiohttp.ClientSession) -> str | None:
    for cookie in browser.cookie_jar:
        if cookie.key == sessions.COOKIE:
            return cookie.value
    return None


ACCOUNT = "/citizen/consentements"
"""A page of the citizen's own: without a session, the login (`/citizen/` itself is a page for visitors too)."""


async def account_page(browser: aiohttp.ClientSession, stack: Stack) -> tuple[int, str]:
    async with browser.get(stack.broker + ACCOUNT, allow_redirects=False) as resp:
        return resp.status, await resp.text()


# ------------------------------------------------------------------------------------------ the happy path


async def test_full_login_over_real_http(stack: Stack) -> None:
    async with stack.browser() as browser:
        landed = await login(browser, stack, "dupont-marie-claire")
        assert landed.status == 200
        assert landed.url == URL(stack.broker + "/citizen/")
        # the OP's 302 to the callback, then the broker's 302 to `next`
        assert [s for s, _ in landed.history] == [302, 302]
        assert landed.history[0][1].startswith(stack.broker + "/citizen/callback?code=")
        assert "Marie Claire DUPONT" in landed.text
        assert '<html lang="fr">' in landed.text

    [row] = await stack.rows()
    pivot = directory().citizen("dupont-marie-claire").pivot
    assert row["subject_key"] == subject_key(stack.app[STATE].subject_secret, pivot)
    assert row["oidc_sub"] == stack.op.sub(CLIENT_ID, "dupont-marie-claire")
    assert row["oidc_issuer"] == stack.issuer
    assert row["acr"] == "eidas1"
    assert row["expires_at"] - row["created_at"] == timedelta(seconds=LIFETIME)
    # the identity is sealed at rest: neither the name nor the birth date appears in the row
    for column in row.values():
        raw = column if isinstance(column, bytes) else str(column).encode()
        assert b"Dupont" not in raw and b"1985-03-14" not in raw


async def test_login_state_cookie_and_session_cookie_attributes(stack: Stack) -> None:
    async with stack.browser() as browser:
        async with browser.get(stack.broker + "/citizen/login", allow_redirects=False) as resp:
            assert resp.status == 302
            [(name, morsel)] = set_cookies(resp).items()
        assert name.startswith("dlnuf_login_")
        assert morsel["httponly"] and morsel["samesite"] == "Lax" and morsel["path"] == "/citizen/callback"
        assert not morsel["secure"]
        assert 0 < int(morsel["max-age"]) <= 600

        location = await callback_url(browser, stack)
        async with browser.get(location, allow_redirects=False) as resp:
            assert resp.status == 302
            jar = set_cookies(resp)
    session = jar[sessions.COOKIE]
    assert session["httponly"] is True
    assert session["samesite"] == "Lax"
    assert session["path"] == "/"
    assert not session["secure"]
    assert int(session["max-age"]) == LIFETIME
    assert len(session.value) == 43
    # the login cookie is deleted by its callback
    [login_cookie] = [m for n, m in jar.items() if n.startswith("dlnuf_login_")]
    assert login_cookie.value == "" and login_cookie["max-age"] == "0"


async def test_cookies_are_secure_when_configured(start_stack: StartStack) -> None:
    stack = await start_stack(cookie_secure=True)
    async with stack.browser() as browser:
        async with browser.get(stack.broker + "/citizen/login", allow_redirects=False) as resp:
            [(name, morsel)] = set_cookies(resp).items()
            assert morsel["secure"]
            picker = resp.headers["Location"]
        async with browser.get(picker) as resp:
            action, form = pick_citizen(await resp.text(), "dupont-marie-claire")
            page_url = resp.url
        async with browser.post(page_url.join(URL(action)), data=form, allow_redirects=False) as resp:
            location = resp.headers["Location"]
    # a Secure cookie does not travel over plain http, so this test carries it by hand
    async with aiohttp.ClientSession() as http, \
            http.get(location, headers={"Cookie": f"{name}={morsel.value}"}, allow_redirects=False) as resp:
        assert resp.status == 302
        assert set_cookies(resp)[sessions.COOKIE]["secure"]


async def test_next_brings_the_citizen_back_where_the_consent_flow_started(stack: Stack) -> None:
    back = "/oauth/authorize?" + urlencode({"client_id": "21750001600019", "state": "xyz", "scope": "a b"})
    async with stack.browser() as browser:
        location = await callback_url(browser, stack, next_path=back)
        async with browser.get(location, allow_redirects=False) as resp:
            assert resp.status == 302
            assert resp.headers["Location"] == back
        # already logged in: the login goes straight back, without the OP
        async with browser.get(stack.broker + "/citizen/login", params={"next": back},
                               allow_redirects=False) as resp:
            assert resp.status == 302
            assert resp.headers["Location"] == back


@pytest.mark.parametrize("evil", [
    "https://evil.example/", "//evil.example/", "/\\evil.example", "\\\\evil.example", "http:/evil.example",
    "javascript:alert(1)", "evil.example", "/ok\r\nSet-Cookie: x=y", " /espace", "/\tx",
])
async def test_next_cannot_redirect_elsewhere(stack: Stack, evil: str) -> None:
    assert sessions.safe_next(evil) is None
    async with stack.browser() as browser:
        location = await callback_url(browser, stack, next_path=evil)
        async with browser.get(location, allow_redirects=False) as resp:
            assert resp.status == 302
            assert resp.headers["Location"] == "/citizen/"


def test_safe_next_keeps_local_paths() -> None:
    for ok in ["/", "/citizen/", "/oauth/authorize?client_id=1&redirect_uri=https%3A%2F%2Fx.example%2Fcb",
               "/%2F%2Fevil.example"]:  # an encoded slash is a path segment, not an authority
        assert sessions.safe_next(ok) == ok
    assert sessions.login_url("/a?b=c&d=e") == "/citizen/login?next=%2Fa%3Fb%3Dc%26d%3De"


async def test_rs256_op_with_signed_userinfo_and_a_citizen_born_abroad(start_stack: StartStack) -> None:
    stack = await start_stack(op_options={"alg": "RS256", "userinfo_signed": True})
    async with stack.browser() as browser:
        landed = await login(browser, stack, "ndiaye-noel")
        assert landed.status == 200
        assert "Noël N'DIAYE" in html.unescape(landed.text)
        token = session_token(browser)
    assert token is not None
    pool = stack.app[STATE].pool
    session = await sessions.load_session(pool, token, datetime.now(UTC), sealer=_sealer(stack))
    assert session is not None
    assert session.identity == directory().citizen("ndiaye-noel").pivot
    assert session.identity.birthplace == ""


async def test_key_rotation_at_the_op_is_followed(stack: Stack) -> None:
    async with stack.browser() as browser:
        assert (await login(browser, stack)).status == 200
    stack.op.rotate_key()
    async with stack.browser() as browser:
        assert (await login(browser, stack, "rousseau-jean-baptiste")).status == 200


# ------------------------------------------------------------------------------------------ logout


async def test_logout_ends_both_sessions(stack: Stack) -> None:
    async with stack.browser() as browser:
        landed = await login(browser, stack)
        assert len(stack.op.sessions) == 1
        [form] = parse_forms(landed.text)
        assert form.method == "post" and form.action == "/citizen/logout"
        async with browser.post(stack.broker + form.action, data=form.fields) as resp:
            assert resp.status == 200
            assert resp.url.with_query(None) == URL(stack.broker + "/citizen/logged-out")
            hops = [(r.status, r.headers["Location"]) for r in resp.history]
            assert "déconnecté" in await resp.text()
        # the broker's 303 to the OP's end_session_endpoint, with the id_token hint and a state; the OP's 302 back
        assert [s for s, _ in hops] == [303, 302]
        end_session = urlsplit(hops[0][1])
        assert f"{end_session.scheme}://{end_session.netloc}{end_session.path}" == stack.issuer + "/logout"
        query = parse_qs(end_session.query)
        assert query["post_logout_redirect_uri"] == [stack.broker + "/citizen/logged-out"]
        assert jwt.decode(query["id_token_hint"][0], options={"verify_signature": False})["aud"] == CLIENT_ID
        assert hops[1][1] == stack.broker + "/citizen/logged-out?" + urlencode({"state": query["state"][0]})

        assert stack.op.sessions == {}
        assert await stack.rows() == []
        assert session_token(browser) is None
        status, _ = await account_page(browser, stack)
        assert status == 302


async def test_a_stolen_cookie_is_worthless_after_logout(stack: Stack) -> None:
    async with stack.browser() as browser:
        landed = await login(browser, stack)
        token = session_token(browser)
        [form] = parse_forms(landed.text)
        async with browser.post(stack.broker + form.action, data=form.fields) as resp:
            assert resp.status == 200
    async with aiohttp.ClientSession() as thief, \
            thief.get(stack.broker + ACCOUNT, headers={"Cookie": f"{sessions.COOKIE}={token}"},
                      allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"].startswith("/citizen/login?next=")


@pytest.mark.parametrize("csrf", [None, "", "faux", "other-session"])
async def test_logout_needs_the_session_csrf_token(stack: Stack, csrf: str | None) -> None:
    async with stack.browser() as other:
        other_page = (await login(other, stack, "rousseau-jean-baptiste")).text
    async with stack.browser() as browser:
        await login(browser, stack)
        if csrf == "other-session":
            [other_form] = parse_forms(other_page)
            csrf = other_form.fields["csrf"]
        data = {"csrf": csrf} if csrf is not None else {}
        async with browser.post(stack.broker + "/citizen/logout", data=data, allow_redirects=False) as resp:
            assert resp.status == 403
            assert "Action refusée" in await resp.text()
        status, text = await account_page(browser, stack)
        assert status == 200 and "Marie Claire DUPONT" in text
    assert len(await stack.rows()) == 2


async def test_logout_without_a_session_just_says_so(stack: Stack) -> None:
    async with stack.browser() as browser, \
            browser.post(stack.broker + "/citizen/logout", allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/citizen/logged-out"


# ------------------------------------------------------------------------------------------ refusals


def _reason_logged(logs: list[MutableMapping[str, Any]], error: type[Exception], words: str) -> None:
    [entry] = [e for e in logs if e["event"] == "citizen login refused"]
    assert entry["error"] == error.__name__
    assert words in entry["reason"], entry["reason"]


@pytest.mark.parametrize(("lie", "error", "words"), [
    (Misbehaviour.FORGED_SIGNATURE, oidc.InvalidIdToken, "BadSignatureError"),
    (Misbehaviour.UNKNOWN_KEY, oidc.InvalidIdToken, "unknown kid"),
    (Misbehaviour.WRONG_AUDIENCE, oidc.InvalidIdToken, "Audience"),
    (Misbehaviour.WRONG_ISSUER, oidc.InvalidIdToken, "Issuer"),
    (Misbehaviour.WRONG_NONCE, oidc.InvalidIdToken, "nonce"),
    (Misbehaviour.EXPIRED, oidc.InvalidIdToken, "expired"),
    (Misbehaviour.ISSUED_IN_FUTURE, oidc.InvalidIdToken, "future"),
    (Misbehaviour.ALG_NONE, oidc.InvalidIdToken, "'none' is not allowed"),
    (Misbehaviour.HS256, oidc.InvalidIdToken, "'HS256' is not allowed"),
    (Misbehaviour.USERINFO_OTHER_SUB, oidc.InvalidUserinfo, "another sub"),
])
async def test_a_lying_op_opens_no_session(stack: Stack, lie: Misbehaviour, error: type[Exception],
                                           words: str) -> None:
    stack.op.misbehaviour = {lie}
    async with stack.browser() as browser:
        with structlog.testing.capture_logs() as logs:
            landed = await login(browser, stack)
        assert landed.status == 502
        assert "Connexion refusée" in landed.text
        assert words not in landed.text  # the citizen is not told which check failed
        assert session_token(browser) is None
    _reason_logged(logs, error, words)
    assert await stack.rows() == []


async def test_state_mismatch_is_refused(stack: Stack) -> None:
    async with stack.browser() as browser:
        location = await callback_url(browser, stack)
        parts = urlsplit(location)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        tampered = f"{stack.broker}{parts.path}?" + urlencode({**query, "state": query["state"][:-2] + "xx"})
        with structlog.testing.capture_logs() as logs:
            async with browser.get(tampered, allow_redirects=False) as resp:
                assert resp.status == 400
                assert "Connexion interrompue" in await resp.text()
        _reason_logged(logs, oidc.StateMismatch, "no login")
        assert session_token(browser) is None
    assert await stack.rows() == []


async def test_a_callback_carried_to_another_browser_is_refused(stack: Stack) -> None:
    """Login CSRF: an attacker's own callback URL, opened in the victim's browser, logs nobody in."""
    async with stack.browser() as attacker:
        location = await callback_url(attacker, stack, "roche-bernard")
    async with stack.browser() as victim, victim.get(location, allow_redirects=False) as resp:
        assert resp.status == 400
        assert session_token(victim) is None
    assert await stack.rows() == []


async def test_a_replayed_callback_meets_a_used_code(stack: Stack) -> None:
    async with stack.browser() as browser:
        location = await callback_url(browser, stack)
        login_cookies = {c.key: c.value for c in browser.cookie_jar if c.key.startswith("dlnuf_login_")}
        async with browser.get(location, allow_redirects=False) as resp:
            assert resp.status == 302
    # the same URL with the same login cookie: only the OP can tell, and it does (single-use code)
    cookie = "; ".join(f"{k}={v}" for k, v in login_cookies.items())
    async with aiohttp.ClientSession() as replay:
        with structlog.testing.capture_logs() as logs:
            async with replay.get(location, headers={"Cookie": cookie}, allow_redirects=False) as resp:
                assert resp.status == 400
                assert "Connexion expirée" in await resp.text()
                assert sessions.COOKIE not in set_cookies(resp)
    _reason_logged(logs, oidc.CodeRejected, "invalid_grant")
    assert len(await stack.rows()) == 1


async def test_cancelling_at_the_op_opens_no_session(stack: Stack) -> None:
    async with stack.browser() as browser:
        landed = await login(browser, stack, decision="cancel")
        assert landed.status == 400
        assert "Connexion annulée" in landed.text
        assert session_token(browser) is None
    assert await stack.rows() == []


async def test_unreachable_op_is_a_page_not_a_crash(start_stack: StartStack) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    stack = await start_stack(issuer=closed)
    async with stack.browser() as browser, \
            browser.get(stack.broker + "/citizen/login", allow_redirects=False) as resp:
        assert resp.status == 502
        assert "FranceConnect indisponible" in await resp.text()


async def test_discovery_for_another_issuer_is_refused(start_stack: StartStack) -> None:
    stack = await start_stack()
    stack.op.issuer = stack.issuer + "/autre"
    async with stack.browser() as browser, \
            browser.get(stack.broker + "/citizen/login", allow_redirects=False) as resp:
        assert resp.status == 502


# ------------------------------------------------------------------------------------------ sessions


def _sealer(stack: Stack) -> Sealer:
    return Sealer.from_file(stack.app[STATE].config.identity_key_file)


def _login_result(citizen_id: str) -> oidc.LoginResult:
    return oidc.LoginResult(identity=directory().citizen(citizen_id).pivot, issuer="https://op.example",
                            sub=f"sub-{citizen_id}", acr="eidas1", id_token="e30.e30.sig")


async def test_expired_session_is_no_session(stack: Stack) -> None:
    pool, sealer = stack.app[STATE].pool, _sealer(stack)
    secret = stack.app[STATE].subject_secret
    now = datetime.now(UTC)
    lifetime = timedelta(seconds=LIFETIME)
    token, created = await sessions.create_session(pool, _login_result("dupont-marie-claire"), subject_secret=secret,
                                                   sealer=sealer, lifetime=lifetime, now=now)
    assert await sessions.load_session(pool, token, now + lifetime - timedelta(seconds=1), sealer=sealer) == created
    assert await sessions.load_session(pool, token, now + lifetime, sealer=sealer) is None

    # over HTTP: a session opened a lifetime ago is expired now
    old, _ = await sessions.create_session(pool, _login_result("dupont-marie-claire"), subject_secret=secret,
                                           sealer=sealer, lifetime=lifetime, now=now - lifetime)
    async with aiohttp.ClientSession() as http, \
            http.get(stack.broker + ACCOUNT, headers={"Cookie": f"{sessions.COOKIE}={old}"},
                     allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/citizen/login?next=%2Fcitizen%2Fconsentements"

    await sessions.purge_expired(pool, now + timedelta(seconds=1))
    assert [r["token_sha256"].hex() for r in await stack.rows()] == [created.id]


async def test_one_citizens_session_never_yields_anothers_identity(stack: Stack) -> None:
    async with stack.browser() as marie, stack.browser() as jean:
        marie_page = (await login(marie, stack, "dupont-marie-claire")).text
        jean_page = (await login(jean, stack, "rousseau-jean-baptiste")).text
        assert "Marie Claire DUPONT" in marie_page and "ROUSSEAU" not in marie_page
        assert "Jean-Baptiste Louis Marie ROUSSEAU" in jean_page and "DUPONT" not in jean_page
        tokens = {"marie": session_token(marie), "jean": session_token(jean)}
        # and again on a later request, each browser its own
        assert "Marie Claire DUPONT" in (await account_page(marie, stack))[1]
        assert "ROUSSEAU" in (await account_page(jean, stack))[1]

    pool, sealer = stack.app[STATE].pool, _sealer(stack)
    now = datetime.now(UTC)
    loaded = {name: await sessions.load_session(pool, token or "", now, sealer=sealer)
              for name, token in tokens.items()}
    assert loaded["marie"] is not None and loaded["jean"] is not None
    assert loaded["marie"].identity == directory().citizen("dupont-marie-claire").pivot
    assert loaded["jean"].identity == directory().citizen("rousseau-jean-baptiste").pivot
    assert loaded["marie"].subject_key != loaded["jean"].subject_key
    assert loaded["marie"].csrf_token != loaded["jean"].csrf_token

    # someone with write access to the table swaps the sealed identities: the seal is bound to its row
    sealed = {r["token_sha256"]: r["sealed"] for r in await stack.rows()}
    marie_id, jean_id = bytes.fromhex(loaded["marie"].id), bytes.fromhex(loaded["jean"].id)
    conn = await asyncpg.connect(stack.database_url)
    try:
        update = "UPDATE citizen_sessions SET sealed = $2 WHERE token_sha256 = $1"
        await conn.execute(update, marie_id, sealed[jean_id])
        await conn.execute(update, jean_id, sealed[marie_id])
    finally:
        await conn.close()
    assert await sessions.load_session(pool, tokens["marie"] or "", now, sealer=sealer) is None
    assert await sessions.load_session(pool, tokens["jean"] or "", now, sealer=sealer) is None


async def test_malformed_or_unknown_tokens_are_no_session(stack: Stack) -> None:
    pool, sealer = stack.app[STATE].pool, _sealer(stack)
    now = datetime.now(UTC)
    for token in ["", "x", "a" * 43, "é" * 43, "a" * 44]:
        assert await sessions.load_session(pool, token, now, sealer=sealer) is None


def test_verify_csrf() -> None:
    session = CitizenSession(id="0" * 64, subject_key="k", identity=directory().citizen("dupont-marie-claire").pivot,
                             oidc_issuer="i", oidc_sub="s", acr="eidas1", id_token_hint="t", csrf_token="jeton",
                             created_at=datetime.now(UTC), expires_at=datetime.now(UTC))
    sessions.verify_csrf(session, "jeton")
    for wrong in [None, "", "jeton2", "JETON"]:
        with pytest.raises(sessions.CsrfError):
            sessions.verify_csrf(session, wrong)
    assert "jeton" not in repr(session) and "Dupont" not in repr(session)


# ------------------------------------------------------------------------------------------ guards for other routes


def _guarded_routes(app: web.Application) -> None:
    @citizen_required(html_page=False)
    async def me(request: web.Request, session: CitizenSession) -> web.Response:
        return web.json_response({"subject_key": session.subject_key})

    @citizen_required(html_page=True)
    async def page(request: web.Request, session: CitizenSession) -> web.Response:
        return web.Response(text=session.identity.family_name)

    app.router.add_get("/test/me", me)
    app.router.add_post("/test/me", me)
    app.router.add_get("/test/page", page)
    app.router.add_post("/test/page", page)


async def test_json_and_html_guards(start_stack: StartStack) -> None:
    stack = await start_stack(extra_routes=_guarded_routes)
    async with stack.browser() as browser:
        async with browser.get(stack.broker + "/test/me") as resp:
            assert resp.status == 401
            assert resp.content_type == "application/problem+json"
            assert (await resp.json())["type"] == "https://dlnuf.org/problems/citizen-login-required"
        async with browser.get(stack.broker + "/test/page?x=1", allow_redirects=False) as resp:
            assert resp.status == 302
            assert resp.headers["Location"] == sessions.login_url("/test/page?x=1")
        # logging in from the guarded page comes back to it
        landed = await login(browser, stack, next_path="/test/page?x=1")
        assert landed.url == URL(stack.broker + "/test/page?x=1")
        assert landed.text == "Dupont"
        [row] = await stack.rows()

        async with browser.get(stack.broker + "/test/me") as resp:
            assert (resp.status, await resp.json()) == (200, {"subject_key": row["subject_key"]})
        csrf = row["csrf_token"]
        async with browser.post(stack.broker + "/test/me") as resp:
            assert resp.status == 403
            assert (await resp.json())["type"] == "https://dlnuf.org/problems/csrf-failed"
        async with browser.post(stack.broker + "/test/me", headers={"X-CSRF-Token": csrf}) as resp:
            assert resp.status == 200
        async with browser.post(stack.broker + "/test/page", data={"csrf": "faux"}) as resp:
            assert resp.status == 403
        async with browser.post(stack.broker + "/test/page", data={"csrf": csrf}) as resp:
            assert resp.status == 200


# ------------------------------------------------------------------------------------------ the relying party alone


NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ISSUER = "https://op.example"


def _claims(**change: Any) -> dict[str, Any]:
    t = int(NOW.timestamp())
    claims = {"iss": ISSUER, "aud": CLIENT_ID, "sub": "abc", "iat": t, "exp": t + 60, "nonce": "n" * 43,
              "acr": "eidas1"}
    claims.update(change)
    return {k: v for k, v in claims.items() if v is not None}


def test_id_token_claims_are_checked_on_the_injected_clock() -> None:
    def check(claims: dict[str, Any], now: datetime = NOW) -> None:
        oidc.verify_id_token_claims(claims, issuer=ISSUER, client_id=CLIENT_ID, nonce="n" * 43, now=now)

    check(_claims())
    skew = timedelta(seconds=oidc.MAX_SKEW)
    check(_claims(), now=NOW + timedelta(seconds=60) + skew - timedelta(seconds=1))
    check(_claims(aud=[CLIENT_ID, "autre"], azp=CLIENT_ID))
    check(_claims(acr="eidas2"))
    refused = [
        (_claims(), NOW + timedelta(seconds=60) + skew),
        (_claims(iat=int((NOW + skew).timestamp()) + 1), NOW),
        (_claims(), NOW + timedelta(seconds=oidc.MAX_ID_TOKEN_AGE + 1)),
        (_claims(iss=ISSUER + "/"), NOW), (_claims(aud="autre"), NOW), (_claims(aud=[CLIENT_ID, "autre"]), NOW),
        (_claims(nonce="m" * 43), NOW), (_claims(nonce=None), NOW), (_claims(acr="eidas0"), NOW),
        (_claims(acr=None), NOW), (_claims(sub=""), NOW), (_claims(exp=None), NOW), (_claims(iat="12"), NOW),
        (_claims(exp=True), NOW),
    ]
    for claims, now in refused:
        with pytest.raises(oidc.InvalidIdToken):
            check(claims, now)


def test_signature_algorithm_comes_from_the_allow_list_and_the_key() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "k1"}
    keys = {"k1": jwk}

    def decode(token: str) -> dict[str, Any]:
        return oidc.decode_signed(token, keys, issuer=ISSUER, audience=CLIENT_ID, error=oidc.InvalidIdToken)

    good = jwt.encode(_claims(), ec_key, algorithm="ES256", headers={"kid": "k1"})
    assert decode(good)["sub"] == "abc"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # the public JWK as an HMAC secret (the classic confusion), none, and an RSA signature under the EC kid
    public_pem = jwt.utils.force_bytes(str(jwk))
    for forged in [jwt.encode(_claims(), public_pem, algorithm="HS256", headers={"kid": "k1"}),
                   jwt.encode(_claims(), "", algorithm="none", headers={"kid": "k1"}),
                   jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"}),
                   good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
                   "pas.un.jeton"]:
        with pytest.raises(oidc.InvalidIdToken):
            decode(forged)
    keys["k1"] = {**jwk, "alg": "ES384"}
    with pytest.raises(oidc.InvalidIdToken):
        decode(good)


def test_pivot_identity_from_franceconnect_claims() -> None:
    claims = {"sub": "x", "given_name": "Noël", "family_name": "N'Diaye", "birthdate": "1998-12-25",
              "gender": "male", "birthplace": "", "birthcountry": "99341", "email": "n@example.invalid"}
    assert oidc.pivot_identity(claims) == directory().citizen("ndiaye-noel").pivot
    assert oidc.pivot_identity({**claims, "birthplace": None, "preferred_name": None}).birthplace == ""
    broken_claims: list[dict[str, Any]] = [{"gender": "x"}, {"birthdate": "25/12/1998"}, {"family_name": None},
                                           {"birthplace": "75114"}]
    for broken in broken_claims:
        with pytest.raises(oidc.InvalidUserinfo):
            oidc.pivot_identity({**claims, **broken})


def test_discovery_document_must_name_the_configured_issuer() -> None:
    doc = {"issuer": ISSUER, "authorization_endpoint": ISSUER + "/a", "token_endpoint": ISSUER + "/t",
           "userinfo_endpoint": ISSUER + "/u", "jwks_uri": ISSUER + "/j"}
    assert oidc.ProviderMetadata.from_json(doc, issuer=ISSUER).end_session_endpoint is None
    broken_docs: list[dict[str, Any]] = [{"issuer": ISSUER + "/"}, {"token_endpoint": "javascript:x"},
                                         {"jwks_uri": None}]
    for broken in broken_docs:
        with pytest.raises(oidc.ProviderError):
            oidc.ProviderMetadata.from_json({**doc, **broken}, issuer=ISSUER)
    with pytest.raises(oidc.ProviderError):
        oidc.ProviderMetadata.from_json([doc], issuer=ISSUER)


def test_verify_state() -> None:
    oidc.verify_state("abc", "abc")
    for received in ["abd", "", "abcd"]:
        with pytest.raises(oidc.StateMismatch):
            oidc.verify_state("abc", received)
    with pytest.raises(oidc.StateMismatch):
        oidc.verify_state("", "")


def test_repr_never_shows_secrets() -> None:
    result = _login_result("dupont-marie-claire")
    assert "Dupont" not in repr(result) and "e30" not in repr(result)
    auth = oidc.AuthorizationRequest(url="u", state="s", nonce="secret-nonce", code_verifier="secret-verifier")
    assert "secret" not in repr(auth)


# ------------------------------------------------------------------------------------------ configuration


BASE_ENV = {"DLNUF_OIDC_ISSUER": "https://fc.example/api/v2", "DLNUF_OIDC_CLIENT_ID": "c",
            "DLNUF_OIDC_CLIENT_SECRET": "s", "DLNUF_OIDC_REDIRECT_URI": "https://dlnuf.example/citizen/callback"}


def test_config_reads_the_oidc_variables() -> None:
    assert load_config(env={}).citizen_login is None
    login = load_config(env=BASE_ENV).citizen_login
    assert login == CitizenLoginConfig(
        issuer="https://fc.example/api/v2", client_id="c", client_secret_env="DLNUF_OIDC_CLIENT_SECRET",
        redirect_uri="https://dlnuf.example/citizen/callback",
        post_logout_redirect_uri="https://dlnuf.example/citizen/logged-out", session_lifetime=1800.0,
        cookie_secure=True)
    assert "s" not in dataclasses.asdict(login).values()  # the secret stays in its variable
    derived = load_config(env={**{k: v for k, v in BASE_ENV.items() if k != "DLNUF_OIDC_REDIRECT_URI"},
                               "DLNUF_PUBLIC_URL": "http://127.0.0.1:8080", "DLNUF_CITIZEN_SESSION_LIFETIME": "600",
                               "DLNUF_OIDC_CLIENT_SECRET_ENV": "AUTRE", "AUTRE": "s"}).citizen_login
    assert derived is not None
    assert derived.redirect_uri == "http://127.0.0.1:8080/citizen/callback"
    assert derived.cookie_secure is False
    assert derived.session_lifetime == 600.0
    assert derived.client_secret_env == "AUTRE"


@pytest.mark.parametrize(("change", "message"), [
    ({"DLNUF_OIDC_ISSUER": None}, "DLNUF_OIDC_ISSUER is missing"),
    ({"DLNUF_OIDC_CLIENT_ID": None}, "DLNUF_OIDC_CLIENT_ID is missing"),
    ({"DLNUF_OIDC_CLIENT_SECRET": None}, "DLNUF_OIDC_CLIENT_SECRET"),
    ({"DLNUF_OIDC_REDIRECT_URI": None}, "DLNUF_OIDC_REDIRECT_URI"),
    ({"DLNUF_OIDC_REDIRECT_URI": "https://dlnuf.example/ailleurs"}, "DLNUF_OIDC_REDIRECT_URI"),
    ({"DLNUF_OIDC_ISSUER": "fc.example"}, "DLNUF_OIDC_ISSUER"),
    ({"DLNUF_COOKIE_SECURE": "false"}, "DLNUF_COOKIE_SECURE"),
    ({"DLNUF_COOKIE_SECURE": "oui"}, "DLNUF_COOKIE_SECURE"),
    ({"DLNUF_CITIZEN_SESSION_LIFETIME": "5"}, "DLNUF_CITIZEN_SESSION_LIFETIME"),
    ({"DLNUF_OIDC_POST_LOGOUT_REDIRECT_URI": "/relatif"}, "DLNUF_OIDC_POST_LOGOUT_REDIRECT_URI"),
])
def test_half_configured_login_fails_loudly(change: dict[str, str | None], message: str) -> None:
    env = {k: v for k, v in {**BASE_ENV, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_only_some_variable_set_is_half_configured() -> None:
    with pytest.raises(ConfigError, match="DLNUF_OIDC_ISSUER is missing"):
        load_config(env={"DLNUF_COOKIE_SECURE": "true"})


async def test_missing_secret_at_start_stops_the_broker(database_url: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    login_config = CitizenLoginConfig(issuer="http://127.0.0.1:9", client_id="c", client_secret_env=SECRET_ENV,
                                      redirect_uri="http://127.0.0.1:1/citizen/callback",
                                      post_logout_redirect_uri="http://127.0.0.1:1/citizen/logged-out",
                                      session_lifetime=600, cookie_secure=False)
    app = create_app(broker_config(tmp_path, database_url, registry_toml([consumer()]), citizen_login=login_config))
    runner = web.AppRunner(app)
    with pytest.raises(ConfigError, match=SECRET_ENV):
        await runner.setup()
    await runner.cleanup()


def test_every_citizen_route_is_documented() -> None:
    config = load_config(env={**BASE_ENV}, database_url="postgresql://unused/x", host_from_request=True)
    app = create_app(config)
    paths = openapi_document()["paths"]
    for route in app.router.routes():
        path = route.resource.get_info().get("path") if route.resource else None
        if path and path.startswith("/citizen/") and route.method != "HEAD":
            assert route.method.lower() in paths.get(path, {}), f"{route.method} {path}"


def test_sealed_login_cookie_is_opaque() -> None:
    # what the browser holds says nothing: no state, nonce or verifier in clear
    from broker.citizen import login as login_routes

    sealer = Sealer(b"k" * 32)
    auth = oidc.AuthorizationRequest(url="u", state="etat" * 8, nonce="nonce" * 8, code_verifier="verif" * 8)
    value = login_routes._seal_login(sealer, auth, "/suite", 0.0)
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    for secret in (b"etat", b"nonce", b"verif", b"/suite"):
        assert secret not in raw
    with pytest.raises(oidc.StateMismatch):
        login_routes._open_login(Sealer(b"j" * 32), auth.state, value, 0.0)
    assert login_routes._open_login(sealer, auth.state, value, 0.0)["next"] == "/suite"
    with pytest.raises(oidc.StateMismatch):
        login_routes._open_login(sealer, auth.state, value, login_routes.LOGIN_TTL)
