"""The sandbox FranceConnect OP over real HTTP: discovery, the citizen picker, codes, client authentication, PKCE,
signed id_tokens, userinfo, end of session, and the test-only misbehaviour switches."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import secrets
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from adapters.sandbox import directory, serve
from adapters.sandbox.franceconnect import (
    PROVIDER,
    ClientConfig,
    Misbehaviour,
    Provider,
    create_app,
    start_franceconnect,
)

CLIENT_ID = "commune-de-paris"
SECRET = "secret-du-client-suffisamment-long-pour-hs256"
REDIRECT = "https://service.example/callback"
AFTER_LOGOUT = "https://service.example/deconnecte"
OTHER_ID = "commune-de-lyon"
OTHER_SECRET = "secret-de-lyon-suffisamment-long-pour-hs256"
OTHER_REDIRECT = "https://lyon.example/callback"
CLIENTS = {
    CLIENT_ID: ClientConfig(SECRET, [REDIRECT], [AFTER_LOGOUT], name="Commune de Paris"),
    OTHER_ID: ClientConfig(OTHER_SECRET, [OTHER_REDIRECT]),
}

Client = TestClient[web.Request, web.Application]


class Clock:
    """A clock the test moves by hand: expiry is tested without waiting."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------------ a browser's view


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    choices: dict[str, list[str]] = field(default_factory=dict)
    """Radio groups: name -> values, in page order."""
    buttons: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    """Input id -> label text."""


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._label_for: str | None = None
        self._label_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(action=a.get("action", ""), method=a.get("method", "get").lower()))
        elif tag == "input" and self.forms:
            form = self.forms[-1]
            if a.get("type") in ("radio", "checkbox"):
                form.choices.setdefault(a["name"], []).append(a["value"])
            elif a.get("type") in ("hidden", "text", "email", "date", None, ""):
                form.fields[a["name"]] = a.get("value", "")
        elif tag == "button" and self.forms and "name" in a:
            self.forms[-1].buttons.setdefault(a["name"], []).append(a.get("value", ""))
        elif tag == "label":
            self._label_for, self._label_text = a.get("for"), []

    def handle_data(self, data: str) -> None:
        if self._label_for is not None:
            self._label_text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "label" and self._label_for is not None and self.forms:
            self.forms[-1].labels[self._label_for] = "".join(self._label_text).strip()
            self._label_for = None


def parse_forms(page: str) -> list[Form]:
    """The forms of an HTML page, as a browser would submit them."""
    parser = _FormParser()
    parser.feed(page)
    return parser.forms


def pick_citizen(page: str, citizen_id: str, decision: str = "accept") -> tuple[str, dict[str, str]]:
    """Fill the OP's picker as a person would: the form's action and the fields the browser posts."""
    [form] = parse_forms(page)
    assert form.method == "post"
    assert citizen_id in form.choices["citizen"]
    assert decision in form.buttons["decision"]
    return form.action, {**form.fields, "citizen": citizen_id, "decision": decision}


# ------------------------------------------------------------------------------------------ helpers


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def auth_params(**overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
        "scope": "openid given_name family_name birthdate gender birthplace birthcountry preferred_name email",
        "state": secrets.token_urlsafe(32), "nonce": secrets.token_urlsafe(32), "acr_values": "eidas1",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def authorize(client: Client, citizen_id: str = "dupont-marie-claire", **overrides: str | None) -> dict[str, str]:
    """Run the front channel; return the parameters the OP sent back to the redirect URI."""
    params = auth_params(**overrides)
    async with client.get("/authorize", params=params) as resp:
        assert resp.status == 200, await resp.text()
        page = await resp.text()
    action, form = pick_citizen(page, citizen_id)
    async with client.post(action, data=form, allow_redirects=False) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    assert location.startswith(params["redirect_uri"] + "?")
    back = query_of(location)
    assert back["state"] == params["state"]
    return {**back, "nonce": params["nonce"], "redirect_uri": params["redirect_uri"]}


async def token_request(client: Client, form: Mapping[str, str], *, basic: tuple[str, str] | None = None
                        ) -> tuple[int, dict[str, Any]]:
    headers = {}
    if basic is not None:
        raw = f"{basic[0]}:{basic[1]}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
    async with client.post("/token", data=dict(form), headers=headers) as resp:
        assert resp.headers["Cache-Control"] == "no-store"
        return resp.status, await resp.json()


def code_form(back: Mapping[str, str], **extra: str) -> dict[str, str]:
    return {"grant_type": "authorization_code", "code": back["code"], "redirect_uri": back["redirect_uri"],
            "client_id": CLIENT_ID, "client_secret": SECRET, **extra}


async def published_keys(client: Client) -> dict[str, jwt.PyJWK]:
    async with client.get("/jwks") as resp:
        return {k["kid"]: jwt.PyJWK(k) for k in (await resp.json())["keys"]}


async def verify(client: Client, token: str, audience: str = CLIENT_ID) -> dict[str, Any]:
    keys = await published_keys(client)
    header = jwt.get_unverified_header(token)
    claims: dict[str, Any] = jwt.decode(token, keys[header["kid"]], algorithms=[header["alg"]], audience=audience,
                                        issuer=str(client.make_url("")).rstrip("/"),
                                        options={"verify_exp": False, "verify_iat": False})
    return claims


MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_op(aiohttp_client: Callable[[web.Application], Awaitable[Client]], clock: Clock) -> MakeClient:
    async def make(**options: Any) -> Client:
        return await aiohttp_client(create_app(CLIENTS, **{"clock": clock, **options}))
    return make


@pytest.fixture
async def op(make_op: MakeClient) -> Client:
    return await make_op()


def provider(client: Client) -> Provider:
    assert client.app is not None
    return client.app[PROVIDER]


# ------------------------------------------------------------------------------------------ discovery, keys


async def test_discovery_names_every_endpoint_under_the_issuer(op: Client) -> None:
    async with op.get("/.well-known/openid-configuration") as resp:
        assert resp.status == 200
        meta = await resp.json()
    issuer = str(op.make_url("")).rstrip("/")
    assert meta["issuer"] == issuer
    for name, path in [("authorization_endpoint", "/authorize"), ("token_endpoint", "/token"),
                       ("userinfo_endpoint", "/userinfo"), ("jwks_uri", "/jwks"), ("end_session_endpoint", "/logout")]:
        assert meta[name] == issuer + path
    assert meta["id_token_signing_alg_values_supported"] == ["ES256"]
    assert set(meta["token_endpoint_auth_methods_supported"]) == {"client_secret_post", "client_secret_basic"}
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "eidas1" in meta["acr_values_supported"]


async def test_started_op_pins_its_issuer_and_serves_under_a_prefix() -> None:
    runner, issuer = await start_franceconnect(CLIENTS)
    try:
        assert runner.app is not None
        assert runner.app[PROVIDER].issuer == issuer
    finally:
        await runner.cleanup()
    # mounted under a prefix, the derived issuer carries it, as FranceConnect's /api/v2 does
    root = web.Application()
    root.add_subapp("/franceconnect", create_app(CLIENTS))
    runner, url = await serve(root)
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(url + "/franceconnect/.well-known/openid-configuration") as resp:
            meta = await resp.json()
        assert meta["issuer"] == url + "/franceconnect"
        assert meta["token_endpoint"] == url + "/franceconnect/token"
    finally:
        await runner.cleanup()


async def test_rotation_keeps_the_previous_key_published(op: Client) -> None:
    old = provider(op).keys[0].kid
    provider(op).rotate_key()
    new = provider(op).keys[0].kid
    assert set(await published_keys(op)) == {old, new}
    back = await authorize(op)
    status, body = await token_request(op, code_form(back))
    assert status == 200
    assert jwt.get_unverified_header(body["id_token"])["kid"] == new


# ------------------------------------------------------------------------------------------ the front channel


async def test_picker_is_an_accessible_french_page_listing_every_synthetic_citizen(op: Client) -> None:
    async with op.get("/authorize", params=auth_params()) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert "unsafe-inline" not in resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert '<html lang="fr">' in page
    assert "<title>" in page and "<h1>" in page and "<legend>" in page
    [form] = parse_forms(page)
    assert form.choices["citizen"] == [c.id for c in directory().citizens]
    # every radio button has a label, and the label says who it is
    assert set(form.labels) == {f"citoyen-{c.id}" for c in directory().citizens}
    assert form.labels["citoyen-dupont-marie-claire"].startswith("Marie Claire DUPONT, née le 14/03/1985")
    assert "panne simulée" in form.labels["citoyen-panne-indisponible"]
    assert "Commune de Paris" in page


@pytest.mark.parametrize(("params", "why"), [
    ({"client_id": "inconnu"}, "client_id"),
    ({"redirect_uri": "https://attaquant.example/callback"}, "redirect_uri"),
    ({"redirect_uri": REDIRECT + "/../autre"}, "redirect_uri"),
    ({"client_id": OTHER_ID}, "redirect_uri"),
])
async def test_unknown_client_or_redirect_uri_gets_a_page_never_a_redirect(op: Client, params: dict[str, str],
                                                                            why: str) -> None:
    async with op.get("/authorize", params=auth_params(**params), allow_redirects=False) as resp:
        assert resp.status == 400
        assert "Location" not in resp.headers
        assert why in await resp.text()


@pytest.mark.parametrize(("override", "error"), [
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": "given_name family_name"}, "invalid_scope"),
    ({"nonce": None}, "invalid_request"),
    ({"acr_values": "eidas0"}, "invalid_request"),
    ({"code_challenge": "abc", "code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge": "abc"}, "invalid_request"),
])
async def test_other_authorization_errors_go_back_to_the_client(op: Client, override: dict[str, str | None],
                                                                 error: str) -> None:
    params = auth_params(**override)
    async with op.get("/authorize", params=params, allow_redirects=False) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    back = query_of(location)
    assert back["error"] == error
    assert back["state"] == params["state"]


async def test_missing_state_is_refused(op: Client) -> None:
    async with op.get("/authorize", params=auth_params(state=None), allow_redirects=False) as resp:
        assert resp.status == 302
        back = query_of(resp.headers["Location"])
    assert back == {"error": "invalid_request", "error_description": "state is required"}


async def test_cancel_sends_access_denied_with_the_state(op: Client) -> None:
    params = auth_params()
    async with op.get("/authorize", params=params) as resp:
        action, form = pick_citizen(await resp.text(), "dupont-marie-claire", decision="cancel")
    async with op.post(action, data=form, allow_redirects=False) as resp:
        back = query_of(resp.headers["Location"])
    assert back["error"] == "access_denied"
    assert back["state"] == params["state"]
    assert "code" not in back


async def test_a_forged_form_cannot_pick_an_unlisted_person_or_an_unregistered_uri(op: Client) -> None:
    params = auth_params()
    async with op.get("/authorize", params=params) as resp:
        action, form = pick_citizen(await resp.text(), "dupont-marie-claire")
    async with op.post(action, data={**form, "citizen": "quelqu-un-d-autre"}, allow_redirects=False) as resp:
        assert resp.status == 400
    async with op.post(action, data={**form, "redirect_uri": "https://attaquant.example/"},
                       allow_redirects=False) as resp:
        assert resp.status == 400
        assert "Location" not in resp.headers


# ------------------------------------------------------------------------------------------ the token endpoint


async def test_code_flow_gives_a_signed_id_token_and_the_pivot_claims(op: Client, clock: Clock) -> None:
    back = await authorize(op, "ndiaye-noel")
    status, body = await token_request(op, code_form(back))
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert jwt.get_unverified_header(body["id_token"])["alg"] == "ES256"
    claims = await verify(op, body["id_token"])
    assert claims["aud"] == CLIENT_ID
    assert claims["nonce"] == back["nonce"]
    assert claims["acr"] == "eidas1"
    assert claims["iat"] == int(clock.now)
    assert claims["exp"] > claims["iat"]
    assert claims["sub"] == provider(op).sub(CLIENT_ID, "ndiaye-noel")
    assert "given_name" not in claims  # identity claims come from userinfo, as with FranceConnect

    async with op.get("/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}) as resp:
        assert resp.status == 200
        info = await resp.json()
    assert info == {"sub": claims["sub"], "given_name": "Noël", "family_name": "N'Diaye", "birthdate": "1998-12-25",
                    "gender": "male", "birthplace": "", "birthcountry": "99341", "preferred_name": "",
                    "email": "ndiaye-noel@fictif.invalid"}


async def test_userinfo_gives_only_the_granted_claims(op: Client) -> None:
    back = await authorize(op, "berger-camille", scope="openid identite_pivot preferred_name")
    _, body = await token_request(op, code_form(back))
    async with op.get("/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}) as resp:
        info = await resp.json()
    assert set(info) == {"sub", "given_name", "family_name", "birthdate", "gender", "birthplace", "birthcountry",
                         "preferred_name"}
    assert info["preferred_name"] == "Rousseau"


async def test_client_secret_basic_is_accepted(op: Client) -> None:
    back = await authorize(op)
    form = {k: v for k, v in code_form(back).items() if k not in ("client_id", "client_secret")}
    status, body = await token_request(op, form, basic=(CLIENT_ID, SECRET))
    assert status == 200, body


@pytest.mark.parametrize(("change", "basic", "status", "error"), [
    ({"client_secret": "mauvais"}, None, 401, "invalid_client"),
    ({"client_id": "inconnu"}, None, 401, "invalid_client"),
    ({"client_secret": None, "client_id": None}, None, 401, "invalid_client"),
    ({}, (CLIENT_ID, SECRET), 400, "invalid_request"),  # both methods at once
    ({"client_secret": None, "client_id": None}, (CLIENT_ID, "mauvais"), 401, "invalid_client"),
    ({"grant_type": "refresh_token"}, None, 400, "unsupported_grant_type"),
    ({"redirect_uri": "https://service.example/autre"}, None, 400, "invalid_grant"),
    ({"code": "inconnu"}, None, 400, "invalid_grant"),
    ({"client_id": OTHER_ID, "client_secret": OTHER_SECRET}, None, 400, "invalid_grant"),
])
async def test_token_refusals(op: Client, change: dict[str, str | None], basic: tuple[str, str] | None, status: int,
                              error: str) -> None:
    back = await authorize(op)
    form = {k: v for k, v in {**code_form(back), **change}.items() if v is not None}
    got, body = await token_request(op, form, basic=basic)
    assert (got, body["error"]) == (status, error)


async def test_code_is_single_use_and_a_second_use_revokes_the_first_token(op: Client) -> None:
    back = await authorize(op)
    status, first = await token_request(op, code_form(back))
    assert status == 200
    status, second = await token_request(op, code_form(back))
    assert (status, second["error"]) == (400, "invalid_grant")
    async with op.get("/userinfo", headers={"Authorization": f"Bearer {first['access_token']}"}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_code_expires(op: Client, clock: Clock) -> None:
    back = await authorize(op)
    clock.now += provider(op).code_ttl
    status, body = await token_request(op, code_form(back))
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_access_token_expires(op: Client, clock: Clock) -> None:
    _, body = await token_request(op, code_form(await authorize(op)))
    clock.now += provider(op).access_token_ttl
    async with op.get("/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}) as resp:
        assert resp.status == 401
    async with op.get("/userinfo") as resp:
        assert resp.status == 401


async def test_pkce_s256_is_checked_when_a_challenge_was_sent(op: Client) -> None:
    verifier, challenge = pkce()
    with_pkce = {"code_challenge": challenge, "code_challenge_method": "S256"}
    back = await authorize(op, **with_pkce)
    status, body = await token_request(op, code_form(back, code_verifier=verifier))
    assert status == 200, body

    for extra in ({}, {"code_verifier": pkce()[0]}):
        back = await authorize(op, **with_pkce)
        status, body = await token_request(op, code_form(back, **extra))
        assert (status, body["error"]) == (400, "invalid_grant")
        # and the code is burnt: the right verifier no longer helps
        status, body = await token_request(op, code_form(back, code_verifier=verifier))
        assert (status, body["error"]) == (400, "invalid_grant")

    # a verifier without a challenge is a downgrade attempt
    back = await authorize(op)
    status, body = await token_request(op, code_form(back, code_verifier=verifier))
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_sub_is_pairwise_and_stable(make_op: MakeClient) -> None:
    op1, op2 = await make_op(), await make_op()
    p1, p2 = provider(op1), provider(op2)
    # same citizen, same client: same sub across restarts (another OP instance with the same sub secret)
    assert p1.sub(CLIENT_ID, "dupont-marie-claire") == p2.sub(CLIENT_ID, "dupont-marie-claire")
    assert p1.sub(CLIENT_ID, "dupont-marie-claire") != p1.sub(OTHER_ID, "dupont-marie-claire")
    assert p1.sub(CLIENT_ID, "martin-jean-pierre") != p1.sub(CLIENT_ID, "martin-jean-paul")
    assert len(p1.sub(CLIENT_ID, "dupont-marie-claire")) == 66
    other = await make_op(sub_secret=b"un-autre-secret")
    assert provider(other).sub(CLIENT_ID, "dupont-marie-claire") != p1.sub(CLIENT_ID, "dupont-marie-claire")
    # and the id_token carries it
    _, body = await token_request(op1, code_form(await authorize(op1)))
    assert (await verify(op1, body["id_token"]))["sub"] == p1.sub(CLIENT_ID, "dupont-marie-claire")


async def test_rs256_and_signed_userinfo(make_op: MakeClient) -> None:
    op = await make_op(alg="RS256", userinfo_signed=True)
    _, body = await token_request(op, code_form(await authorize(op, "payet-maelys")))
    assert jwt.get_unverified_header(body["id_token"])["alg"] == "RS256"
    claims = await verify(op, body["id_token"])
    async with op.get("/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}) as resp:
        assert resp.content_type == "application/jwt"
        info = await verify(op, await resp.text())
    assert info["sub"] == claims["sub"]
    assert info["birthplace"] == "97411"


# ------------------------------------------------------------------------------------------ end of session


async def op_session_note(op: Client) -> bool:
    async with op.get("/authorize", params=auth_params()) as resp:
        return "Session FranceConnect en cours" in await resp.text()


async def test_logout_ends_the_op_session_and_returns_with_the_state(op: Client) -> None:
    assert not await op_session_note(op)
    _, body = await token_request(op, code_form(await authorize(op)))
    assert await op_session_note(op)
    assert len(provider(op).sessions) == 1
    params = {"id_token_hint": body["id_token"], "state": "etat-de-deconnexion",
              "post_logout_redirect_uri": AFTER_LOGOUT}
    async with op.get("/logout", params=params, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == AFTER_LOGOUT + "?" + urlencode({"state": "etat-de-deconnexion"})
    assert provider(op).sessions == {}
    assert not await op_session_note(op)


async def test_logout_accepts_an_expired_hint(op: Client, clock: Clock) -> None:
    _, body = await token_request(op, code_form(await authorize(op)))
    clock.now += 86400
    params = {"id_token_hint": body["id_token"], "state": "s", "post_logout_redirect_uri": AFTER_LOGOUT}
    async with op.get("/logout", params=params, allow_redirects=False) as resp:
        assert resp.status == 302


@pytest.mark.parametrize("change", [
    {"post_logout_redirect_uri": "https://attaquant.example/"},
    {"post_logout_redirect_uri": None},
    {"id_token_hint": None},
    {"id_token_hint": "pas-un-jeton"},
    {"id_token_hint": "forged"},
])
async def test_logout_refusals_never_redirect(op: Client, change: dict[str, str | None]) -> None:
    _, body = await token_request(op, code_form(await authorize(op)))
    hint = body["id_token"]
    if change.get("id_token_hint") == "forged":
        provider(op).misbehaviour.add(Misbehaviour.FORGED_SIGNATURE)
        _, forged = await token_request(op, code_form(await authorize(op)))
        change = {"id_token_hint": forged["id_token"]}
    params = {k: v for k, v in {"id_token_hint": hint, "state": "s", "post_logout_redirect_uri": AFTER_LOGOUT,
                                **change}.items() if v is not None}
    async with op.get("/logout", params=params, allow_redirects=False) as resp:
        assert resp.status == 400
        assert "Location" not in resp.headers
    assert len(provider(op).sessions) == 1


# ------------------------------------------------------------------------------------------ misbehaviour


async def lie(op: Client, how: Misbehaviour) -> str:
    provider(op).misbehaviour = {how}
    _, body = await token_request(op, code_form(await authorize(op)))
    token: str = body["id_token"]
    return token


async def test_each_misbehaviour_does_what_it_says(op: Client, clock: Clock) -> None:
    keys = await published_keys(op)
    kid = provider(op).keys[0].kid

    token = await lie(op, Misbehaviour.UNKNOWN_KEY)
    assert jwt.get_unverified_header(token)["kid"] not in keys

    token = await lie(op, Misbehaviour.FORGED_SIGNATURE)
    assert jwt.get_unverified_header(token)["kid"] == kid
    with pytest.raises(jwt.InvalidSignatureError):
        await verify(op, token)

    with pytest.raises(jwt.InvalidAudienceError):
        await verify(op, await lie(op, Misbehaviour.WRONG_AUDIENCE))
    with pytest.raises(jwt.InvalidIssuerError):
        await verify(op, await lie(op, Misbehaviour.WRONG_ISSUER))

    back = await authorize(op)
    provider(op).misbehaviour = {Misbehaviour.WRONG_NONCE}
    _, body = await token_request(op, code_form(back))
    assert (await verify(op, body["id_token"]))["nonce"] != back["nonce"]

    claims = await verify(op, await lie(op, Misbehaviour.EXPIRED))
    assert claims["exp"] < clock.now
    claims = await verify(op, await lie(op, Misbehaviour.ISSUED_IN_FUTURE))
    assert claims["iat"] > clock.now

    assert jwt.get_unverified_header(await lie(op, Misbehaviour.ALG_NONE))["alg"] == "none"
    token = await lie(op, Misbehaviour.HS256)
    assert jwt.decode(token, SECRET, algorithms=["HS256"], audience=CLIENT_ID,
                      options={"verify_exp": False, "verify_iat": False})["aud"] == CLIENT_ID

    provider(op).misbehaviour = {Misbehaviour.USERINFO_OTHER_SUB}
    _, body = await token_request(op, code_form(await authorize(op)))
    async with op.get("/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}) as resp:
        info = await resp.json()
    assert info["sub"] != (await verify(op, body["id_token"]))["sub"]


async def test_python_dash_m_serves_the_op_under_franceconnect() -> None:
    env = {**os.environ, "DLNUF_SANDBOX_TOKEN": "t", "DLNUF_SANDBOX_FC_SECRET": SECRET}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adapters.sandbox", "--port", "0", "--fc-client-id", CLIENT_ID,
        "--fc-redirect-uri", REDIRECT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 10)).decode()
        m = re.search(r"FranceConnect sandbox issuer (http://\S+)", line)
        assert m, line
        async with aiohttp.ClientSession() as http:
            async with http.get(m[1] + "/.well-known/openid-configuration") as resp:
                meta = await resp.json()
            assert meta["issuer"] == m[1]
            async with http.get(meta["authorization_endpoint"], params=auth_params()) as resp:
                assert resp.status == 200
                [form] = parse_forms(await resp.text())
            assert form.action == "/franceconnect/authorize"
    finally:
        proc.terminate()
        await proc.wait()
