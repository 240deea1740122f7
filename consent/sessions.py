"""Citizen web sessions: server-side, in PostgreSQL, opened by the OpenID Connect login (`broker.citizen.login`).

The browser holds a random token in the ``dlnuf_session`` cookie (HttpOnly, SameSite=Lax, Secure when the broker
is served over TLS, path ``/``); the database holds only the token's SHA-256, the citizen's subject key (the
keyed hash of `adapters.identity.subject_key`, under the secret given as argument), the OIDC issuer, ``sub`` and
``acr``, a per-session CSRF token, and the pivot identity with the id_token (the OP logout hint) **encrypted at rest
with AES-256-GCM** (`consent.sealing.Sealer`, the key given as argument), bound to the row's token hash so that a
sealed identity moved to another row does not open. The identity is kept because the broker needs it later to ask
providers for the citizen's data on their behalf.

Invariants: a token is only ever compared through its SHA-256, looked up in one indexed equality; an expired session
loads as None (the lifetime is absolute, counted from the login); a session always yields the identity it was
created with, or nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode, urlsplit

import asyncpg
import orjson
import structlog
from aiohttp import web

from adapters.identity import PivotIdentity, SubjectError
from adapters.subjects import subject_key
from broker.storage import db
from consent.oidc import LoginResult
from consent.sealing import Sealer, SealError

log = structlog.get_logger(__name__)

COOKIE = "dlnuf_session"
LOGIN_PATH = "/citizen/login"
DEFAULT_NEXT = "/citizen/"
"""Where a login without (or with an unacceptable) ``next`` lands."""
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
_SEAL_PURPOSE = "dlnuf/citizen-session/v1:"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)


class CsrfError(Exception):
    """A state-changing request without this session's CSRF token. The message is for logs."""


@dataclass(frozen=True, slots=True)
class CitizenSession:
    id: str
    """SHA-256 of the session token, hex: names the session in logs and rows, and is useless as a cookie."""
    subject_key: str
    """`adapters.identity.subject_key` of the pivot identity: the key of this citizen's consents and log entries."""
    identity: PivotIdentity = field(repr=False)
    oidc_issuer: str
    oidc_sub: str
    """The OP's pairwise identifier of the citizen for our client."""
    acr: str
    id_token_hint: str = field(repr=False)
    csrf_token: str = field(repr=False)
    """Put it in every state-changing form (field `CSRF_FIELD`) or call (header `CSRF_HEADER`)."""
    created_at: datetime
    expires_at: datetime
    email: str | None = field(default=None, repr=False)
    """The e-mail address the OP gave (FranceConnect's `email` claim), sealed with the identity: what the portal
    offers for notifications."""
    france_connect_token: str | None = field(default=None, repr=False)
    """FranceConnect's access token from the login, sealed with the identity; sealed into the citizen's consents
    for providers' FranceConnect-mode endpoints. None when the OP is not FranceConnect."""


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _q() -> dict[str, str]:
    return db.queries("consent", "sessions.sql")


async def create_session(pool: asyncpg.Pool, login: LoginResult, *, subject_secret: bytes, sealer: Sealer,
                         lifetime: timedelta, now: datetime) -> tuple[str, CitizenSession]:
    """Store a new session for a verified login; return the token for the cookie, and the session."""
    token = secrets.token_urlsafe(32)
    token_hash = _hash(token)
    session = CitizenSession(
        id=token_hash.hex(),
        subject_key=subject_key(subject_secret, login.identity),
        identity=login.identity, oidc_issuer=login.issuer, oidc_sub=login.sub, acr=login.acr,
        id_token_hint=login.id_token, csrf_token=secrets.token_urlsafe(32),
        created_at=now, expires_at=now + lifetime, email=login.email, france_connect_token=login.france_connect_token,
    )
    sealed = sealer.seal(orjson.dumps({"identity": login.identity.to_json(), "id_token": login.id_token,
                                       "email": login.email, "france_connect_token": login.france_connect_token}),
                         _SEAL_PURPOSE + session.id)
    try:
        await pool.execute(_q()["session_insert"], token_hash, session.subject_key, session.oidc_issuer,
                           session.oidc_sub, session.acr, sealed, session.csrf_token, session.created_at,
                           session.expires_at)
    except db.DB_ERRORS as exc:
        raise db.DatabaseUnavailable(f"session insert failed: {type(exc).__name__}") from exc
    return token, session


async def load_session(pool: asyncpg.Pool, token: str, now: datetime, *, sealer: Sealer) -> CitizenSession | None:
    """The live session of this token; None when unknown, expired, or when its sealed part does not open."""
    if not _TOKEN.match(token):
        return None
    token_hash = _hash(token)
    try:
        row = await db.fetchrow(pool, _q()["session_get"], token_hash, now)
    except db.DB_ERRORS as exc:
        raise db.DatabaseUnavailable(f"session lookup failed: {type(exc).__name__}") from exc
    if row is None:
        return None
    session_id = token_hash.hex()
    try:
        sealed = orjson.loads(sealer.open(row["sealed"], _SEAL_PURPOSE + session_id))
        identity = PivotIdentity.from_json(sealed["identity"])
        id_token = sealed["id_token"]
        email = sealed.get("email")
        fc_token = sealed.get("france_connect_token")
    except (SealError, SubjectError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        # a changed sealing key or a tampered row: no session rather than someone's identity
        log.error("citizen session does not open", session=session_id, error=type(exc).__name__)
        return None
    return CitizenSession(
        id=session_id, subject_key=row["subject_key"], identity=identity, oidc_issuer=row["oidc_issuer"],
        oidc_sub=row["oidc_sub"], acr=row["acr"], id_token_hint=id_token, csrf_token=row["csrf_token"],
        created_at=row["created_at"], expires_at=row["expires_at"], email=email if isinstance(email, str) else None,
        france_connect_token=fc_token if isinstance(fc_token, str) else None,
    )


async def delete_session(pool: asyncpg.Pool, token: str) -> None:
    try:
        await pool.execute(_q()["session_delete"], _hash(token))
    except db.DB_ERRORS as exc:
        raise db.DatabaseUnavailable(f"session delete failed: {type(exc).__name__}") from exc


async def purge_expired(pool: asyncpg.Pool, now: datetime) -> None:
    await pool.execute(_q()["session_purge"], now)


def verify_csrf(session: CitizenSession, token: str | None) -> None:
    """Return None when `token` is this session's CSRF token; raise `CsrfError` otherwise."""
    if not token or not hmac.compare_digest(token.encode(), session.csrf_token.encode()):
        raise CsrfError("missing or wrong CSRF token")


# ------------------------------------------------------------------------------------------------ aiohttp


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """What a broker needs to open and read citizen sessions; at `CITIZEN_SESSIONS` when login is configured."""

    pool: asyncpg.Pool
    sealer: Sealer = field(repr=False)
    subject_secret: bytes = field(repr=False)
    lifetime: timedelta
    cookie_secure: bool


CITIZEN_SESSIONS = web.AppKey("citizen_sessions", SessionSettings)


@dataclass(frozen=True, slots=True)
class _Looked:
    session: CitizenSession | None


_CURRENT = web.RequestKey("citizen_session", _Looked)


async def current_citizen(request: web.Request) -> CitizenSession | None:
    """The citizen logged in on this request's browser, or None (also when citizen login is not configured).
    Looked up once per request."""
    looked = request.get(_CURRENT)
    if looked is None:
        settings = request.config_dict.get(CITIZEN_SESSIONS)
        token = request.cookies.get(COOKIE)
        session = None
        if settings is not None and token:
            session = await load_session(settings.pool, token, datetime.now(UTC), sealer=settings.sealer)
        looked = request[_CURRENT] = _Looked(session)
    return looked.session


def forget_current(request: web.Request) -> None:
    """After login or logout, the session this request started with is no longer the browser's."""
    request.pop(_CURRENT, None)


def set_session_cookie(response: web.StreamResponse, token: str, session: CitizenSession, *, secure: bool,
                       now: datetime) -> None:
    max_age = max(0, int((session.expires_at - now).total_seconds()))
    response.set_cookie(COOKIE, token, max_age=max_age, path="/", httponly=True, samesite="Lax", secure=secure)


def clear_session_cookie(response: web.StreamResponse, *, secure: bool) -> None:
    response.del_cookie(COOKIE, path="/", httponly=True, samesite="Lax", secure=secure)


def safe_next(raw: str | None) -> str | None:
    """`raw` when it is a local absolute path (``/…``, query allowed), else None: no open redirect.

    Refused: other schemes and hosts (``https://evil``), scheme-relative ``//evil``, backslashes (browsers read
    ``/\\evil`` as ``//evil``), control characters and spaces, and anything very long."""
    if not raw or len(raw) > 2048 or not raw.startswith("/") or raw.startswith("//"):
        return None
    if "\\" in raw or any(c.isspace() or not c.isprintable() for c in raw):
        return None
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return None
    return raw


def login_url(next_path: str) -> str:
    """The URL that logs the citizen in and then comes back to `next_path` (a local path with its query)."""
    return LOGIN_PATH + "?" + urlencode({"next": next_path})
