"""Citizen login routes: the broker as an OpenID Connect relying party of FranceConnect, FranceConnect+, any
certified OP (the settings of `broker.config.CitizenLoginConfig`), or the sandbox OP.

* ``GET /citizen/login?next=/path?query``: sends the browser to the OP with a fresh state, nonce and PKCE S256
  verifier; ``next`` must be a local path (`consent.sessions.safe_next`), anything else lands on ``/citizen/``.
  Already logged in: straight to ``next``.
* ``GET /citizen/callback``: checks the state against this browser's login cookie, finishes the login
  (`consent.oidc.OidcClient.finish`), opens a session (a new token, the previous session of this browser deleted),
  then 302 to ``next``.
* ``POST /citizen/logout``: CSRF-checked (form field ``csrf`` or header ``X-CSRF-Token``); deletes the session, then
  303 to the OP's end_session_endpoint, which comes back to ``/citizen/logged-out``.
* ``GET /citizen/logged-out``: says so. ``GET /citizen/`` (where a login lands by default) is the citizen portal's
  home, `broker.portal`.
* ``GET /citizen/jwks.json``: the relying party's public keys (`consent.oidc_keys`), to register at the OP as its
  ``jwks_uri``: the private_key_jwt signing key, the keys the OP encrypts to. Empty when neither is configured.

The login state (state, nonce, PKCE verifier, next, expiry) lives in a short-lived cookie sealed with AES-256-GCM,
not in the database: a login started by anyone on the Internet then writes nothing on the server (the same reason
the nonce table is only written after a signature verified), it works on every broker process without a shared
table, and the cookie is what binds the callback to the browser that started the login (a callback URL carried
to another browser, login CSRF, finds no cookie there). One cookie per login, named after its state and limited to
the callback path, so two tabs logging in at once do not undo each other; each lives `LOGIN_TTL` seconds and is
deleted by its callback. It is sealed rather than only signed because the nonce and the PKCE verifier are secrets of
this login. A replayed callback (same URL, same cookie) reaches the OP with a used code, which the OP refuses.

Refusals are HTML pages in French that say nothing of the reason; the reason goes to the server log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
import structlog
from aiohttp import web

from broker.citizen import pages
from broker.config import LOGGED_OUT_PATH, CitizenLoginConfig, ConfigError
from broker.errors import CsrfFailed, LoginRequired
from broker.service import contract
from broker.service.problems import REQUEST_ID, Handler, problem_for, problem_response
from broker.storage import db
from consent import oidc, oidc_keys
from consent.sealing import Sealer, SealError
from consent.sessions import (
    CITIZEN_SESSIONS,
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    DEFAULT_NEXT,
    LOGIN_PATH,
    CitizenSession,
    CsrfError,
    SessionSettings,
    clear_session_cookie,
    create_session,
    current_citizen,
    delete_session,
    forget_current,
    login_url,
    purge_expired,
    safe_next,
    set_session_cookie,
    verify_csrf,
)

log = structlog.get_logger(__name__)

CALLBACK_PATH = "/citizen/callback"
LOGOUT_PATH = "/citizen/logout"
ACCOUNT_PATH = DEFAULT_NEXT
LOGIN_TTL = 600.0
"""Seconds a citizen has to pick themselves at the OP and come back."""
PURGE_INTERVAL = 300.0
_LOGIN_COOKIE = "dlnuf_login_"
_LOGIN_SEAL = "dlnuf/citizen-login/v1:"

OIDC = web.AppKey("citizen_oidc", oidc.OidcClient)
LOGIN_CONFIG = web.AppKey("citizen_login_config", CitizenLoginConfig)
RP_JWKS: web.AppKey[dict[str, Any]] = web.AppKey("citizen_rp_jwks")
JWKS_PATH = "/citizen/jwks.json"
LoginDeniedHook = Callable[[web.Request, str, str], Awaitable[web.StreamResponse | None]]
LOGIN_DENIED: web.AppKey[LoginDeniedHook] = web.AppKey("citizen_login_denied")
"""Who hears that the citizen cancelled at the OP, given `next` and the OP's error: a response to send instead of
the login's own page, or None. The consent flow sets it, to send the client ``access_denied`` (this module sits
below it and does not know it)."""

LOGIN_REQUIRED = problem_for(LoginRequired("no citizen session"))
CSRF_FAILED = problem_for(CsrfFailed("bad or missing CSRF token"))


# ------------------------------------------------------------------------------------------------ wiring


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(JWKS_PATH, jwks)
    router.add_get(LOGIN_PATH, login)
    router.add_get(CALLBACK_PATH, callback)
    router.add_post(LOGOUT_PATH, logout)
    router.add_get(LOGGED_OUT_PATH, logged_out)


@asynccontextmanager
async def running(app: web.Application, config: CitizenLoginConfig, *, pool: asyncpg.Pool,
                  http: aiohttp.ClientSession, subject_secret: bytes, sealer: Sealer) -> AsyncIterator[None]:
    """Citizen login on the broker's pool and HTTP session, for the life of the app; expired sessions are purged."""
    secret = os.environ.get(config.client_secret_env, "") or None
    if config.auth_method != "private_key_jwt" and not secret:
        raise ConfigError(f"citizen login needs the client secret in {config.client_secret_env}, which is not set")
    try:
        client_key = (oidc_keys.load_or_create_client_key(config.client_key_file)
                      if config.client_key_file is not None else None)
        decryption_keys = (oidc_keys.load_or_create_decryption_keys(config.encryption_key_file)
                           if config.encryption_key_file is not None else None)
    except (oidc_keys.KeyFileError, OSError) as exc:
        raise ConfigError(f"citizen login: {exc}") from None
    rp = oidc.RelyingParty(scopes=config.scopes, acr_values=config.acr_values, accepted_acr=config.accepted_acr,
                           claims=dict(config.claims), userinfo=config.userinfo, auth_method=config.auth_method,
                           id_token_algs=config.id_token_algs, encryption_algs=config.encryption_algs,
                           encryption_encs=config.encryption_encs,
                           france_connect=config.preset.startswith("franceconnect"))
    app[LOGIN_CONFIG] = config
    app[OIDC] = oidc.OidcClient(http, issuer=config.issuer, client_id=config.client_id, client_secret=secret,
                                client_key=client_key, decryption_keys=decryption_keys, rp=rp,
                                redirect_uri=config.redirect_uri)
    app[RP_JWKS] = oidc_keys.public_jwks(client_key, decryption_keys)
    app[CITIZEN_SESSIONS] = SessionSettings(pool=pool, sealer=sealer, subject_secret=subject_secret,
                                            lifetime=timedelta(seconds=config.session_lifetime),
                                            cookie_secure=config.cookie_secure)
    task = asyncio.create_task(_purge(pool))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _purge(pool: asyncpg.Pool) -> None:
    while True:
        await asyncio.sleep(PURGE_INTERVAL)
        try:
            await purge_expired(pool, datetime.now(UTC))
        except db.DB_ERRORS as exc:
            log.warning("citizen session purge failed", error=str(exc))


# ------------------------------------------------------------------------------------------------ pages


def _page(request: web.Request, title: str, message: str, *, links: list[tuple[str, str]],
          status: int = 200) -> web.Response:
    issuer = urlsplit(request.config_dict[LOGIN_CONFIG].issuer)
    # the logout form is redirected to the OP, and browsers apply form-action to a form's redirects too
    response = pages.render("message.html", status=status, form_targets=[f"{issuer.scheme}://{issuer.netloc}"],
                            title=title, message=message, links=links)
    response.headers["Referrer-Policy"] = "no-referrer"  # the callback's URL carries the code and the state
    return response


def _redirect(location: str, *, status: int = 302) -> web.Response:
    return web.Response(status=status, headers={"Location": location, "Cache-Control": "no-store"})


def _login_again(next_path: str) -> list[tuple[str, str]]:
    return [(login_url(next_path), "Se connecter à nouveau")]


# What the citizen reads for each refusal: what to do, never why (the reason is in the server log). {op} is the OP's
# name (DLNUF_OIDC_PROVIDER_NAME).
_REFUSALS: list[tuple[type[oidc.LoginError], int, str, str]] = [
    (oidc.LoginDenied, 400, "Connexion annulée", "Vous avez annulé la connexion avec {op}."),
    (oidc.StateMismatch, 400, "Connexion interrompue",
     "Cette connexion n'a pas été commencée dans ce navigateur, ou elle a pris trop de temps."),
    (oidc.CodeRejected, 400, "Connexion expirée", "Cette connexion a déjà été utilisée ou a expiré."),
    (oidc.ProviderError, 502, "{op} indisponible",
     "{op} n'a pas pu être joint ou a répondu une erreur. Réessayez dans quelques instants."),
    (oidc.LoginError, 502, "Connexion refusée", "La réponse de {op} n'a pas pu être vérifiée."),
]


def _refusal(request: web.Request, exc: oidc.LoginError, next_path: str) -> web.Response:
    log.warning("citizen login refused", error=type(exc).__name__, reason=str(exc))
    op = request.config_dict[LOGIN_CONFIG].provider_name
    status, title, message = next((s, t.format(op=op), m.format(op=op)) for cls, s, t, m in _REFUSALS
                                  if isinstance(exc, cls))
    return _page(request, title, message, links=_login_again(next_path), status=status)


# ------------------------------------------------------------------------------------------------ login state


def _login_cookie_name(state: str) -> str:
    return _LOGIN_COOKIE + hashlib.sha256(state.encode()).hexdigest()[:16]


def _seal_login(sealer: Sealer, auth: oidc.AuthorizationRequest, next_path: str, now: float) -> str:
    payload = orjson.dumps({"state": auth.state, "nonce": auth.nonce, "verifier": auth.code_verifier,
                            "next": next_path, "exp": now + LOGIN_TTL})
    sealed = sealer.seal(payload, _LOGIN_SEAL + _login_cookie_name(auth.state))
    return base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def _open_login(sealer: Sealer, state: str, cookie: str | None, now: float) -> dict[str, Any]:
    """The login this browser started with this state; raise `StateMismatch` when there is none (any more)."""
    if not state or cookie is None:
        raise oidc.StateMismatch("no login with this state in this browser")
    try:
        sealed = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
        login_state = orjson.loads(sealer.open(sealed, _LOGIN_SEAL + _login_cookie_name(state)))
    except (binascii.Error, ValueError, SealError) as exc:
        raise oidc.StateMismatch(f"login cookie does not open: {type(exc).__name__}") from None
    oidc.verify_state(login_state["state"], state)
    if login_state["exp"] <= now:
        raise oidc.StateMismatch("login took longer than the login cookie lives")
    return dict(login_state)


# ------------------------------------------------------------------------------------------------ handlers


async def login(request: web.Request) -> web.Response:
    raw_next = request.query.get("next")
    next_path = safe_next(raw_next)
    if next_path is None:
        if raw_next:
            log.warning("citizen login: next refused (not a local path)", next=raw_next[:200])
        next_path = DEFAULT_NEXT
    if await current_citizen(request) is not None:
        return _redirect(next_path)
    try:
        auth = await request.config_dict[OIDC].authorization_request()
    except oidc.ProviderError as exc:
        return _refusal(request, exc, next_path)
    settings = request.config_dict[CITIZEN_SESSIONS]
    response = _redirect(auth.url)
    response.set_cookie(_login_cookie_name(auth.state), _seal_login(settings.sealer, auth, next_path, time.time()),
                        max_age=int(LOGIN_TTL), path=CALLBACK_PATH, httponly=True, samesite="Lax",
                        secure=settings.cookie_secure)
    return response


async def callback(request: web.Request) -> web.StreamResponse:
    settings = request.config_dict[CITIZEN_SESSIONS]
    state = request.query.get("state", "")
    cookie_name = _login_cookie_name(state)
    next_path = DEFAULT_NEXT
    try:
        # 1. this browser started this login, not long ago (and the state is the one it started with)
        login_state = _open_login(settings.sealer, state, request.cookies.get(cookie_name), time.time())
        next_path = login_state["next"]
        # 2. the OP's answer: an error, or a code to redeem and verify
        if "error" in request.query:
            raise oidc.LoginDenied(request.query["error"][:64])
        code = request.query.get("code")
        if not code:
            raise oidc.ProviderError("callback without code nor error")
        result = await request.config_dict[OIDC].finish(code=code, code_verifier=login_state["verifier"],
                                                        nonce=login_state["nonce"], iss=request.query.get("iss"))
    except oidc.LoginError as exc:
        response: web.StreamResponse | None = None
        denied = request.config_dict.get(LOGIN_DENIED)
        if isinstance(exc, oidc.LoginDenied) and next_path != DEFAULT_NEXT and denied is not None:
            # this browser started this login (its sealed state opened) for `next_path`: let its owner answer
            response = await denied(request, next_path, exc.error)
        if response is None:
            response = _refusal(request, exc, next_path)
        response.del_cookie(cookie_name, path=CALLBACK_PATH)
        return response
    # 3. a new session, under a new token: a token planted in this browser before the login is worth nothing
    now = datetime.now(UTC)
    previous = request.cookies.get(COOKIE)
    if previous:
        await delete_session(settings.pool, previous)
    token, session = await create_session(settings.pool, result, subject_secret=settings.subject_secret,
                                          sealer=settings.sealer, lifetime=settings.lifetime, now=now)
    forget_current(request)
    log.info("citizen logged in", session=session.id[:16], acr=session.acr)
    response = _redirect(next_path)
    response.del_cookie(cookie_name, path=CALLBACK_PATH)
    set_session_cookie(response, token, session, secure=settings.cookie_secure, now=now)
    return response


async def logout(request: web.Request) -> web.Response:
    settings = request.config_dict[CITIZEN_SESSIONS]
    session = await current_citizen(request)
    if session is None:
        response = _redirect(LOGGED_OUT_PATH, status=303)
        clear_session_cookie(response, secure=settings.cookie_secure)
        return response
    try:
        verify_csrf(session, await _csrf_token(request))
    except CsrfError as exc:
        log.warning("citizen logout refused", reason=str(exc), session=session.id[:16])
        return _csrf_page(request)
    await delete_session(settings.pool, request.cookies[COOKIE])
    forget_current(request)
    config = request.config_dict[LOGIN_CONFIG]
    try:
        target = await request.config_dict[OIDC].end_session_url(
            id_token_hint=session.id_token_hint, post_logout_redirect_uri=config.post_logout_redirect_uri,
            state=secrets.token_urlsafe(16))
    except oidc.ProviderError as exc:
        # the broker's session is gone whatever happens; the OP's will end when it expires
        log.warning("OP logout skipped", reason=str(exc))
        target = None
    response = _redirect(target or LOGGED_OUT_PATH, status=303)
    clear_session_cookie(response, secure=settings.cookie_secure)
    return response


async def jwks(request: web.Request) -> web.Response:
    return web.json_response(request.config_dict[RP_JWKS], headers={"Cache-Control": "max-age=300"})


async def logged_out(request: web.Request) -> web.Response:
    op = request.config_dict[LOGIN_CONFIG].provider_name
    return _page(request, "Vous êtes déconnecté·e", f"Votre session est terminée, ici et chez {op}.",
                 links=[(DEFAULT_NEXT, "Se connecter à nouveau")])


# ------------------------------------------------------------------------------------------------ guards


async def _csrf_token(request: web.Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header is not None:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        value = (await request.post()).get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def _not_found_page(request: web.Request) -> web.Response:
    return _page(request, "Page introuvable", "Cette page n'existe pas, ou elle ne vous concerne pas.",
                 links=[(ACCOUNT_PATH, "Revenir à « Mes données »")], status=404)


def _csrf_page(request: web.Request) -> web.Response:
    return _page(request, "Action refusée", "Ce formulaire a expiré ou ne vient pas de ce site. Revenez à votre "
                 "compte et recommencez.", links=[(ACCOUNT_PATH, "Revenir à « Mes données »")], status=403)


CitizenHandler = Callable[[web.Request, CitizenSession], Awaitable[web.StreamResponse]]


def citizen_required(*, html_page: bool) -> Callable[[CitizenHandler], Handler]:
    """Decorate a handler `(request, session)` for citizens only.

    Without a session, an HTML route (`html_page=True`) redirects to the login, which comes back to the same URL
    (for a GET; to ``/citizen/`` otherwise); a JSON route answers a 401 problem. A request with another method than
    GET, HEAD or OPTIONS must carry the session's CSRF token (header ``X-CSRF-Token``, or form field ``csrf``), or it
    gets a 403 (page or problem)."""

    def decorate(handler: CitizenHandler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            # what the published document refuses is refused first, logged in or not (a path naming nothing is a
            # 404 for everyone: a login would only lead to the same 404)
            resource = request.match_info.route.resource
            if resource is not None and not contract.path_parameters_valid(resource.canonical, request.method,
                                                                           request.match_info):
                if html_page:
                    return _not_found_page(request)
                raise web.HTTPNotFound()
            session = await current_citizen(request)
            if session is None:
                if not html_page:
                    return problem_response(LOGIN_REQUIRED, request_id=request.get(REQUEST_ID))
                if request.method in ("GET", "HEAD"):
                    return _redirect(login_url(request.path_qs))
                # a form sent once the session ended: a redirect would drop what was sent and do nothing, a 403
                # says so (as the document does) and offers to log in again
                return _page(request, "Session terminée", "Votre session a pris fin : rien n'a été fait. "
                             "Connectez-vous à nouveau, puis recommencez.", links=_login_again(DEFAULT_NEXT),
                             status=403)
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                try:
                    verify_csrf(session, await _csrf_token(request))
                except CsrfError as exc:
                    log.warning("citizen request refused", reason=str(exc), session=session.id[:16])
                    if html_page:
                        return _csrf_page(request)
                    return problem_response(CSRF_FAILED, request_id=request.get(REQUEST_ID))
            return await handler(request, session)

        return guarded

    return decorate
