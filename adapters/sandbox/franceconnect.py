"""A FranceConnect-compatible OpenID Provider for tests and demos, whose users are the sandbox's synthetic citizens.

It speaks OpenID Connect the way FranceConnect does, over real HTTP:

* ``GET /.well-known/openid-configuration``: discovery; every endpoint is the issuer URL plus its path, so the OP
  can be mounted under a prefix (`python -m adapters.sandbox` serves it under ``/franceconnect``);
* ``GET /authorize``: authorization code flow only. ``client_id`` and ``redirect_uri`` (exact match with a
  registered one) are checked first, and a request failing them gets an error page, never a redirect. ``scope``
  must hold ``openid``, ``state`` and ``nonce`` are required (as FranceConnect requires them), PKCE is optional and
  S256 only. The answer is a French HTML page listing the citizens of `citizens.json`; the form posts back to
  ``/authorize`` and the answer is a 302 to the redirect URI with ``code`` and ``state`` (or
  ``error=access_denied`` when the person cancels);
* ``POST /token``: ``client_secret_basic`` or ``client_secret_post`` (one of them, not both), then the code: known,
  unexpired, never used before (a second use also revokes the access token the first one got), issued to this
  client for this redirect URI, and the PKCE verifier when a challenge was sent (a verifier without a challenge is
  refused too). The answer holds an ``id_token`` signed with ES256 (or RS256) carrying ``iss``, ``sub``, ``aud``,
  ``exp``, ``iat``, ``auth_time``, ``nonce`` and ``acr`` (``eidas1``), and a short-lived access token;
* ``GET /userinfo``: the claims of the granted scopes (the scopes are claim names, as with FranceConnect, and
  ``identite_pivot`` stands for the six pivot claims); ``birthplace`` is ``""`` for people born abroad and
  ``preferred_name`` is ``""`` when there is no usage name. JSON by default, a signed JWT (``application/jwt``, as
  FranceConnect v2 answers) with ``userinfo_signed=True``;
* ``GET /jwks``: the public signing keys (the previous key stays published after `Provider.rotate_key`);
* ``GET /logout``: the end-session endpoint: ``id_token_hint`` (one of ours, for that client; expired is fine),
  ``post_logout_redirect_uri`` registered for that client, and ``state``; ends the OP's own session and redirects.

``sub`` is pairwise, as FranceConnect's: a keyed hash of the client and the citizen, stable across restarts for
a given ``sub_secret``, different for two clients. Codes live 30 s and access tokens 60 s by default, measured on
the injectable ``clock``.

Test-only misbehaviour: `Provider.misbehaviour` is a set of `Misbehaviour` a test fills to make the OP lie on
purpose (sign with an unknown key, forge a signature, name another audience, issuer or nonce, hand out an expired
token, sign with ``none`` or HS256, answer userinfo about someone else). It is an attribute of the Python object,
not a query parameter, so nothing reaching the OP over HTTP can switch it on.

Invariant: every identity this OP asserts is one of `citizens.json`, synthetic; nothing here is fit for production
(secrets are compared in constant time, but the OP keeps its state in memory and trusts its own HTML form).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import html
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import errors as jose_errors
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

from adapters.sandbox import Citizen, Directory, directory, serve

PIVOT_CLAIMS = ("given_name", "family_name", "birthdate", "gender", "birthplace", "birthcountry")
CLAIMS = (*PIVOT_CLAIMS, "preferred_name", "email")
ACR = "eidas1"
ACR_VALUES = ("eidas1", "eidas2", "eidas3")
CODE_TTL = 30.0
ACCESS_TOKEN_TTL = 60.0
ID_TOKEN_TTL = 60.0
SESSION_COOKIE = "fc_sandbox_session"
DEFAULT_SUB_SECRET = b"dlnuf-sandbox-franceconnect-sub"


class Misbehaviour(enum.Enum):
    """Ways the OP lies on purpose, for testing a relying party's refusals. Test-only."""

    UNKNOWN_KEY = "unknown_key"
    """id_token signed by a key that is not in the JWKS, under a kid nobody published."""
    FORGED_SIGNATURE = "forged_signature"
    """id_token signed by another key under the published kid: the signature does not verify."""
    WRONG_AUDIENCE = "wrong_audience"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_NONCE = "wrong_nonce"
    EXPIRED = "expired"
    """id_token issued two hours ago and expired one hour ago."""
    ISSUED_IN_FUTURE = "issued_in_future"
    ALG_NONE = "alg_none"
    """Unsigned id_token (``alg: none``)."""
    HS256 = "hs256"
    """id_token signed with HS256 under the client secret, as FranceConnect v1 did; a strict RP refuses it."""
    USERINFO_OTHER_SUB = "userinfo_other_sub"
    """userinfo about another person than the id_token's ``sub``."""


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """A relying party registered at the OP (FranceConnect's "fournisseur de service")."""

    secret: str
    redirect_uris: Collection[str]
    post_logout_redirect_uris: Collection[str] = ()
    name: str = "Service de démonstration"


@dataclass(frozen=True, slots=True)
class _SigningKey:
    kid: str
    alg: str
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @classmethod
    def generate(cls, alg: str) -> _SigningKey:
        private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "RS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ValueError(f"the sandbox OP signs with ES256 or RS256, not {alg}")
        return cls(kid="fc-sandbox-" + secrets.token_hex(6), alg=alg, private=private)

    @property
    def jose_key(self) -> ECKey | RSAKey:
        return ECKey.import_key(self.private) if isinstance(self.private, ec.EllipticCurvePrivateKey) \
            else RSAKey.import_key(self.private)

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = dict(self.jose_key.as_dict(private=False))
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def sign(self, claims: Mapping[str, Any], *, kid: str | None = None) -> str:
        return jwt.encode({"alg": self.alg, "kid": kid or self.kid}, dict(claims), self.jose_key,
                          algorithms=[self.alg])


@dataclass(slots=True)
class _Grant:
    client_id: str
    redirect_uri: str
    citizen_id: str
    nonce: str
    scopes: frozenset[str]
    acr: str
    auth_time: int
    expires_at: float
    code_challenge: str | None
    used: bool = False
    access_token: str | None = None


@dataclass(slots=True)
class _AccessToken:
    client_id: str
    citizen_id: str
    scopes: frozenset[str]
    expires_at: float


@dataclass(slots=True)
class Provider:
    """The OP's state: registered clients, keys, codes, tokens and its own browser sessions, all in memory."""

    clients: Mapping[str, ClientConfig]
    citizens: Directory
    alg: str = "ES256"
    issuer: str | None = None
    """None: taken from each request's scheme, host and mount point; `start_franceconnect` pins it."""
    sub_secret: bytes = DEFAULT_SUB_SECRET
    userinfo_signed: bool = False
    clock: Callable[[], float] = time.time
    code_ttl: float = CODE_TTL
    access_token_ttl: float = ACCESS_TOKEN_TTL
    misbehaviour: set[Misbehaviour] = field(default_factory=set)
    """Test-only: see `Misbehaviour`."""
    keys: list[_SigningKey] = field(default_factory=list)
    """Newest first; the first one signs, all are published."""
    grants: dict[str, _Grant] = field(default_factory=dict)
    access_tokens: dict[str, _AccessToken] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)
    """OP browser session id -> citizen id."""

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys.append(_SigningKey.generate(self.alg))

    def rotate_key(self) -> None:
        """Sign with a new key from now on; the previous one stays in the JWKS for the tokens it signed."""
        self.keys.insert(0, _SigningKey.generate(self.alg))
        del self.keys[2:]

    def sub(self, client_id: str, citizen_id: str) -> str:
        """Pairwise subject, like FranceConnect's: 64 hex digits and a version suffix."""
        digest = hmac.new(self.sub_secret, f"{client_id}\x1f{citizen_id}".encode(), hashlib.sha256).hexdigest()
        return digest + "v1"

    def purge_expired(self, now: float) -> None:
        # used grants are kept until they expire, so that a second use is recognised (and revokes its token)
        for code in [c for c, g in self.grants.items() if g.expires_at <= now]:
            del self.grants[code]
        for token in [t for t, a in self.access_tokens.items() if a.expires_at <= now]:
            del self.access_tokens[token]


PROVIDER = web.AppKey("franceconnect_provider", Provider)


def create_app(clients: Mapping[str, ClientConfig], *, citizens: Directory | None = None, alg: str = "ES256",
               issuer: str | None = None, sub_secret: bytes = DEFAULT_SUB_SECRET, userinfo_signed: bool = False,
               clock: Callable[[], float] = time.time, code_ttl: float = CODE_TTL,
               access_token_ttl: float = ACCESS_TOKEN_TTL) -> web.Application:
    """The OP as an aiohttp application; its `Provider` is at `app[PROVIDER]` (keys, misbehaviour, sessions)."""
    for client_id, client in clients.items():
        if not client.secret or not client.redirect_uris:
            raise ValueError(f"client {client_id!r} needs a secret and at least one redirect URI")
    app = web.Application()
    app[PROVIDER] = Provider(clients=dict(clients), citizens=citizens if citizens is not None else directory(),
                             alg=alg, issuer=issuer.rstrip("/") if issuer else None, sub_secret=sub_secret,
                             userinfo_signed=userinfo_signed, clock=clock, code_ttl=code_ttl,
                             access_token_ttl=access_token_ttl)
    app.router.add_get("/.well-known/openid-configuration", discovery, name="discovery")
    app.router.add_get("/authorize", authorize_page, name="authorize")
    app.router.add_post("/authorize", authorize_decision)
    app.router.add_post("/token", token)
    app.router.add_get("/userinfo", userinfo)
    app.router.add_post("/userinfo", userinfo)
    app.router.add_get("/jwks", jwks)
    app.router.add_get("/logout", logout)
    return app


async def start_franceconnect(clients: Mapping[str, ClientConfig], *, host: str = "127.0.0.1", port: int = 0,
                              **options: Any) -> tuple[web.AppRunner, str]:
    """Serve the OP on host:port (0: a free port), its issuer pinned to the URL it listens on. Returns the runner
    (await `runner.cleanup()`) and the issuer URL; the `Provider` is at `runner.app[PROVIDER]`."""
    app = create_app(clients, **options)
    runner, url = await serve(app, host=host, port=port)
    app[PROVIDER].issuer = url
    return runner, url


# ------------------------------------------------------------------------------------------------ helpers


def _provider(request: web.Request) -> Provider:
    return request.app[PROVIDER]


def _issuer(request: web.Request) -> str:
    provider = _provider(request)
    if provider.issuer is not None:
        return provider.issuer
    prefix = str(request.app.router["discovery"].url_for()).removesuffix("/.well-known/openid-configuration")
    return f"{request.scheme}://{request.host}{prefix}"


def _with_query(uri: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(uri)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query))


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def _oauth_error(status: int, error: str, description: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status,
                             headers={"Cache-Control": "no-store", **(headers or {})})


def _page(title: str, body: str, *, status: int = 200, form_target: str | None = None) -> web.Response:
    text = f"""<!doctype html>
<html lang="fr">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} — FranceConnect (bac à sable DLNUF)</title>
</head>
<body>
<header><p>FranceConnect — <strong>bac à sable</strong> : identité de test, personnes fictives</p></header>
<main id="contenu">
{body}
</main>
</body>
</html>
"""
    return web.Response(text=text, content_type="text/html", charset="utf-8", status=status, headers={
        "Cache-Control": "no-store",
        # browsers apply form-action to a form's redirects too: the picker's answer is a 302 to the client
        "Content-Security-Policy": f"default-src 'none'; form-action 'self'{' ' + form_target if form_target else ''}; "
                                   "frame-ancestors 'none'; base-uri 'none'",
        "X-Content-Type-Options": "nosniff",
    })


def _error_page(message: str) -> web.Response:
    return _page("Demande refusée", f"<h1>Demande refusée</h1>\n<p>{html.escape(message)}</p>", status=400)


class _BadRequest(Exception):
    """The authorization request cannot be answered with a redirect (unknown client or redirect URI)."""


@dataclass(frozen=True, slots=True)
class _AuthorizationRequest:
    client_id: str
    redirect_uri: str
    state: str
    nonce: str
    scopes: frozenset[str]
    acr: str
    code_challenge: str | None

    def hidden_fields(self) -> dict[str, str]:
        fields = {"client_id": self.client_id, "redirect_uri": self.redirect_uri, "state": self.state,
                  "nonce": self.nonce, "scope": " ".join(sorted(self.scopes)), "acr_values": self.acr,
                  "response_type": "code"}
        if self.code_challenge is not None:
            fields |= {"code_challenge": self.code_challenge, "code_challenge_method": "S256"}
        return fields


class _Redirectable(Exception):
    """An error the client hears about through its redirect URI (RFC 6749 §4.1.2.1)."""

    def __init__(self, error: str, description: str, redirect_uri: str, state: str) -> None:
        super().__init__(description)
        self.error = error
        self.redirect_uri = redirect_uri
        self.state = state

    def response(self) -> web.Response:
        params = {"error": self.error, "error_description": str(self)}
        return _redirect(_with_query(self.redirect_uri, params | ({"state": self.state} if self.state else {})))


def _parse_authorization(provider: Provider, params: Mapping[str, str]) -> _AuthorizationRequest:
    """Raises `_BadRequest` when there is nowhere safe to redirect to, `_Redirectable` for the other errors."""
    client_id = params.get("client_id", "")
    client = provider.clients.get(client_id)
    if client is None:
        raise _BadRequest("Ce service (client_id) n'est pas connu de FranceConnect.")
    redirect_uri = params.get("redirect_uri", "")
    if redirect_uri not in client.redirect_uris:
        raise _BadRequest("L'adresse de retour (redirect_uri) n'est pas enregistrée pour ce service.")
    state = params.get("state", "")

    def refuse(error: str, description: str) -> _Redirectable:
        return _Redirectable(error, description, redirect_uri, state)

    if params.get("response_type") != "code":
        raise refuse("unsupported_response_type", "only the authorization code flow is supported")
    scopes = frozenset(params.get("scope", "").split())
    if "openid" not in scopes:
        raise refuse("invalid_scope", "scope must include openid")
    if not state:
        raise refuse("invalid_request", "state is required")
    nonce = params.get("nonce", "")
    if not nonce:
        raise refuse("invalid_request", "nonce is required")
    if not any(a in ACR_VALUES for a in params.get("acr_values", ACR).split()):
        raise refuse("invalid_request", f"acr_values must include one of {', '.join(ACR_VALUES)}")
    challenge = params.get("code_challenge") or None
    if challenge is not None and params.get("code_challenge_method") != "S256":
        raise refuse("invalid_request", "code_challenge_method must be S256")
    # the sandbox authenticates at the lowest level, eidas1, which every acr_values above accepts as a floor
    return _AuthorizationRequest(client_id, redirect_uri, state, nonce, scopes, ACR, challenge)


def _citizen_label(c: Citizen) -> str:
    y, m, d = c.pivot.birthdate.split("-")
    born = "née" if c.pivot.gender == "female" else "né"
    date = f"le {d}/{m}/{y}" if d != "00" else (f"en {m}/{y}" if m != "00" else f"en {y}")
    label = f"{c.pivot.given_name} {c.pivot.family_name.upper()}, {born} {date} à {c.birthplace_label}"
    if c.fault is not None:
        label += " (panne simulée chez les fournisseurs de données)"
    return label


# ------------------------------------------------------------------------------------------------ endpoints


async def discovery(request: web.Request) -> web.Response:
    provider = _provider(request)
    issuer = _issuer(request)
    return web.json_response({
        "issuer": issuer,
        "authorization_endpoint": issuer + "/authorize",
        "token_endpoint": issuer + "/token",
        "userinfo_endpoint": issuer + "/userinfo",
        "jwks_uri": issuer + "/jwks",
        "end_session_endpoint": issuer + "/logout",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": [provider.alg],
        "userinfo_signing_alg_values_supported": [provider.alg] if provider.userinfo_signed else [],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "identite_pivot", *CLAIMS],
        "claims_supported": ["sub", *CLAIMS],
        "acr_values_supported": list(ACR_VALUES),
        "request_parameter_supported": False,
    })


async def authorize_page(request: web.Request) -> web.Response:
    provider = _provider(request)
    try:
        parsed = _parse_authorization(provider, request.query)
    except _BadRequest as exc:
        return _error_page(str(exc))
    except _Redirectable as exc:
        return exc.response()
    current = provider.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    hidden = "\n".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                       for k, v in parsed.hidden_fields().items())
    choices = []
    for c in provider.citizens.citizens:
        checked = " checked" if c.id == current else ""
        cid = html.escape(c.id)
        choices.append(f'<div><input type="radio" id="citoyen-{cid}" name="citizen" value="{cid}" required{checked}>'
                       f' <label for="citoyen-{cid}">{html.escape(_citizen_label(c))}</label></div>')
    session_note = ""
    if current is not None:
        session_note = (f"<p>Session FranceConnect en cours : "
                        f"{html.escape(_citizen_label(provider.citizens.citizen(current)))}.</p>")
    client = provider.clients[parsed.client_id]
    action = html.escape(str(request.app.router["authorize"].url_for()))
    body = f"""<h1>Se connecter avec FranceConnect</h1>
<p>Le service <strong>{html.escape(client.name)}</strong> vous demande de vous identifier.
Ce fournisseur d'identité de test ne connaît que des personnes fictives : choisissez celle que vous voulez être.</p>
{session_note}
<form method="post" action="{action}">
{hidden}
<fieldset>
<legend>Personnes fictives</legend>
{chr(10).join(choices)}
</fieldset>
<p>
<button type="submit" name="decision" value="accept">Se connecter</button>
<button type="submit" name="decision" value="cancel" formnovalidate>Annuler et revenir au service</button>
</p>
</form>"""
    back = urlsplit(parsed.redirect_uri)
    return _page("Se connecter", body, form_target=f"{back.scheme}://{back.netloc}")


async def authorize_decision(request: web.Request) -> web.Response:
    provider = _provider(request)
    form = await request.post()
    params = {k: v for k, v in form.items() if isinstance(v, str)}
    try:
        parsed = _parse_authorization(provider, params)
    except _BadRequest as exc:
        return _error_page(str(exc))
    except _Redirectable as exc:
        return exc.response()
    if params.get("decision") != "accept":
        return _Redirectable("access_denied", "the user cancelled", parsed.redirect_uri, parsed.state).response()
    try:
        citizen = provider.citizens.citizen(params.get("citizen", ""))
    except KeyError:
        return _error_page("Choisissez une des personnes fictives de la liste.")
    now = provider.clock()
    provider.purge_expired(now)
    code = secrets.token_urlsafe(32)
    provider.grants[code] = _Grant(
        client_id=parsed.client_id, redirect_uri=parsed.redirect_uri, citizen_id=citizen.id, nonce=parsed.nonce,
        scopes=parsed.scopes, acr=parsed.acr, auth_time=int(now), expires_at=now + provider.code_ttl,
        code_challenge=parsed.code_challenge,
    )
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id is None or session_id not in provider.sessions:
        session_id = secrets.token_urlsafe(32)
    provider.sessions[session_id] = citizen.id
    response = _redirect(_with_query(parsed.redirect_uri, {"code": code, "state": parsed.state}))
    response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="Lax", path="/")
    return response


def _client_credentials(request: web.Request, form: Mapping[str, str]) -> tuple[str, str] | web.Response:
    """client_secret_basic (RFC 6749 §2.3.1: form-urlencoded id and secret, then Basic) or client_secret_post."""
    header = request.headers.get("Authorization", "")
    posted = "client_secret" in form
    if header.lower().startswith("basic "):
        if posted:
            return _oauth_error(400, "invalid_request", "use one client authentication method, not two")
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return _oauth_error(401, "invalid_client", "malformed Basic credentials",
                                {"WWW-Authenticate": 'Basic realm="franceconnect"'})
        client_id, sep, secret = decoded.partition(":")
        if not sep:
            return _oauth_error(401, "invalid_client", "malformed Basic credentials",
                                {"WWW-Authenticate": 'Basic realm="franceconnect"'})
        return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))
    if posted:
        return form.get("client_id", ""), form["client_secret"]
    return _oauth_error(401, "invalid_client", "client authentication required",
                        {"WWW-Authenticate": 'Basic realm="franceconnect"'})


async def token(request: web.Request) -> web.Response:
    provider = _provider(request)
    now = provider.clock()
    provider.purge_expired(now)
    raw = await request.post()
    form = {k: v for k, v in raw.items() if isinstance(v, str)}
    credentials = _client_credentials(request, form)
    if isinstance(credentials, web.Response):
        return credentials
    client_id, secret = credentials
    client = provider.clients.get(client_id)
    if client is None or not hmac.compare_digest(client.secret.encode(), secret.encode()):
        return _oauth_error(401, "invalid_client", "unknown client or wrong secret",
                            {"WWW-Authenticate": 'Basic realm="franceconnect"'})
    if form.get("grant_type") != "authorization_code":
        return _oauth_error(400, "unsupported_grant_type", "only authorization_code is supported")
    grant = provider.grants.get(form.get("code", ""))
    if grant is None or grant.client_id != client_id:
        return _oauth_error(400, "invalid_grant", "unknown or expired code")
    if grant.used:
        # RFC 6749 §4.1.2: a code used twice may have been stolen; what it gave the first time is withdrawn
        if grant.access_token is not None:
            provider.access_tokens.pop(grant.access_token, None)
        return _oauth_error(400, "invalid_grant", "code already used")
    # burnt by its first presentation, even a failing one, so a PKCE verifier cannot be guessed by retrying
    grant.used = True
    if form.get("redirect_uri") != grant.redirect_uri:
        return _oauth_error(400, "invalid_grant", "redirect_uri does not match the authorization request")
    verifier = form.get("code_verifier")
    if grant.code_challenge is None:
        if verifier is not None:
            return _oauth_error(400, "invalid_grant", "code_verifier sent but no code_challenge was")
    else:
        expected = base64.urlsafe_b64encode(hashlib.sha256((verifier or "").encode()).digest()).rstrip(b"=").decode()
        if verifier is None or not hmac.compare_digest(expected, grant.code_challenge):
            return _oauth_error(400, "invalid_grant", "PKCE verification failed")
    access = secrets.token_urlsafe(32)
    provider.access_tokens[access] = _AccessToken(client_id, grant.citizen_id, grant.scopes,
                                                  now + provider.access_token_ttl)
    grant.access_token = access
    id_token = _id_token(provider, _issuer(request), client, client_id, grant, now)
    return web.json_response(
        {"access_token": access, "token_type": "Bearer", "expires_in": int(provider.access_token_ttl),
         "id_token": id_token, "scope": " ".join(sorted(grant.scopes))},
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _id_token(provider: Provider, issuer: str, client: ClientConfig, client_id: str, grant: _Grant,
              now: float) -> str:
    iat = int(now)
    claims: dict[str, Any] = {
        "iss": issuer, "sub": provider.sub(client_id, grant.citizen_id), "aud": client_id,
        "exp": iat + int(ID_TOKEN_TTL), "iat": iat, "auth_time": grant.auth_time, "nonce": grant.nonce,
        "acr": grant.acr,
    }
    lies = provider.misbehaviour
    if Misbehaviour.WRONG_AUDIENCE in lies:
        claims["aud"] = "un-autre-fournisseur-de-service"
    if Misbehaviour.WRONG_ISSUER in lies:
        claims["iss"] = issuer + "/imposteur"
    if Misbehaviour.WRONG_NONCE in lies:
        claims["nonce"] = secrets.token_urlsafe(32)
    if Misbehaviour.EXPIRED in lies:
        claims |= {"iat": iat - 7200, "exp": iat - 3600}
    if Misbehaviour.ISSUED_IN_FUTURE in lies:
        claims |= {"iat": iat + 3600, "exp": iat + 7200}
    key = provider.keys[0]
    if Misbehaviour.ALG_NONE in lies:
        # written by hand: a JOSE library rightly makes "none" hard to produce
        def b64(value: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()

        return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    if Misbehaviour.HS256 in lies:
        return jwt.encode({"alg": "HS256", "kid": key.kid}, claims, OctKey.import_key(client.secret.encode()),
                          algorithms=["HS256"])
    if Misbehaviour.UNKNOWN_KEY in lies:
        stranger = _SigningKey.generate(provider.alg)
        return stranger.sign(claims)
    if Misbehaviour.FORGED_SIGNATURE in lies:
        return _SigningKey.generate(provider.alg).sign(claims, kid=key.kid)
    return key.sign(claims)


def _claims(provider: Provider, token: _AccessToken) -> dict[str, Any]:
    citizen = provider.citizens.citizen(token.citizen_id)
    citizen_id = token.citizen_id
    if Misbehaviour.USERINFO_OTHER_SUB in provider.misbehaviour:
        citizen_id = next(c.id for c in provider.citizens.citizens if c.id != token.citizen_id)
        citizen = provider.citizens.citizen(citizen_id)
    wanted = set(token.scopes)
    if "identite_pivot" in wanted:
        wanted |= set(PIVOT_CLAIMS)
    values = {**citizen.pivot.to_json(), "preferred_name": citizen.pivot.preferred_name,
              "email": f"{citizen.id}@fictif.invalid"}
    claims: dict[str, Any] = {"sub": provider.sub(token.client_id, citizen_id)}
    claims.update({name: values[name] for name in CLAIMS if name in wanted})
    return claims


async def userinfo(request: web.Request) -> web.Response:
    provider = _provider(request)
    now = provider.clock()
    provider.purge_expired(now)
    header = request.headers.get("Authorization", "")
    access = provider.access_tokens.get(header[7:].strip()) if header.lower().startswith("bearer ") else None
    if access is None or access.expires_at <= now:
        return web.json_response({"error": "invalid_token", "error_description": "unknown or expired access token"},
                                 status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"',
                                                      "Cache-Control": "no-store"})
    claims = _claims(provider, access)
    if not provider.userinfo_signed:
        return web.json_response(claims, headers={"Cache-Control": "no-store"})
    iat = int(now)
    signed = provider.keys[0].sign({**claims, "iss": _issuer(request), "aud": access.client_id, "iat": iat,
                                    "exp": iat + int(ID_TOKEN_TTL)})
    return web.Response(text=signed, content_type="application/jwt", headers={"Cache-Control": "no-store"})


async def jwks(request: web.Request) -> web.Response:
    return web.json_response({"keys": [k.public_jwk() for k in _provider(request).keys]},
                             headers={"Cache-Control": "max-age=60"})


def _hinted_client(provider: Provider, issuer: str, hint: str) -> str | None:
    """The client an id_token_hint of ours was issued to; its expiry does not matter (OIDC RP-Initiated Logout)."""
    try:
        header = orjson.loads(base64.urlsafe_b64decode(hint.split(".")[0] + "=="))
    except (ValueError, orjson.JSONDecodeError):
        return None
    key = next((k for k in provider.keys if isinstance(header, dict) and k.kid == header.get("kid")), None)
    if key is None:
        return None
    try:
        claims = jwt.decode(hint, key.jose_key, algorithms=[key.alg]).claims
    except (jose_errors.JoseError, ValueError):
        return None
    if claims.get("iss") != issuer:
        return None
    aud = claims.get("aud")
    return aud if isinstance(aud, str) and aud in provider.clients else None


async def logout(request: web.Request) -> web.Response:
    provider = _provider(request)
    client_id = _hinted_client(provider, _issuer(request), request.query.get("id_token_hint", ""))
    if client_id is None:
        return _error_page("La demande de déconnexion ne porte pas d'id_token_hint valide.")
    target = request.query.get("post_logout_redirect_uri", "")
    if target not in provider.clients[client_id].post_logout_redirect_uris:
        return _error_page("L'adresse de retour après déconnexion n'est pas enregistrée pour ce service.")
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id is not None:
        provider.sessions.pop(session_id, None)
    state = request.query.get("state")
    response = _redirect(_with_query(target, {"state": state} if state else {}))
    response.del_cookie(SESSION_COOKIE, path="/")
    return response
