"""A pending consent request belongs to the browser that opened the authorization request, and to the first
citizen session that opens its consent screen.

Without this, anyone who learns a request's id (it is in a URL) could log in as themselves and accept it: the
client that started the flow would then redeem, with its own PKCE verifier, a code for someone else's data.

1. `/oauth/authorize` sets a random value in a cookie named after the request (`cookie_name`), path ``/`` so that
   the login callback sees it too (a cancel at the OP must prove the same browser), HttpOnly, SameSite=Lax, for the
   request's lifetime; the request keeps only its SHA-256 (`browser_sha256`).
2. The consent screen, its decision and a cancelled login check the cookie (`verify_browser`), and the first
   session to open the screen claims the request (`claim`): a later session, even in the same browser, is refused.

Refusals are `NotThisBrowser`, whose message is for the log; the citizen gets a page in French.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import timedelta

import asyncpg
from aiohttp import web

from broker.storage import db

COOKIE_PREFIX = "dlnuf_authz_"


class NotThisBrowser(Exception):
    """The request was opened by another browser, or claimed by another citizen session."""


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def cookie_name(request_id: uuid.UUID) -> str:
    return COOKIE_PREFIX + request_id.hex


def new_binding() -> tuple[str, str]:
    """A fresh value for the browser's cookie, and the SHA-256 the request keeps."""
    value = secrets.token_urlsafe(32)
    return value, _sha256(value)


def set_cookie(response: web.StreamResponse, request_id: uuid.UUID, value: str, *, lifetime: timedelta,
               secure: bool) -> None:
    response.set_cookie(cookie_name(request_id), value, max_age=int(lifetime.total_seconds()), path="/",
                        httponly=True, samesite="Lax", secure=secure)


def clear_cookie(response: web.StreamResponse, request_id: uuid.UUID, *, secure: bool) -> None:
    response.del_cookie(cookie_name(request_id), path="/", httponly=True, samesite="Lax", secure=secure)


def verify_browser(request: web.Request, pending: asyncpg.Record | dict[str, object]) -> None:
    """Return None when this browser holds the cookie of the pending request; raise `NotThisBrowser`."""
    expected = pending["browser_sha256"]
    value = request.cookies.get(cookie_name(pending["id"]))  # type: ignore[arg-type]
    if not isinstance(expected, str) or value is None:
        raise NotThisBrowser("no binding cookie for this request in this browser")
    if not hmac.compare_digest(_sha256(value).encode(), expected.encode()):
        raise NotThisBrowser("the binding cookie is another request's or forged")


async def claim(pool: asyncpg.Pool, request_id: uuid.UUID, session_id: str) -> None:
    """Return None when `session_id` is (now) the session of this request; raise `NotThisBrowser`."""
    claimed = await pool.fetchval(db.queries("consent", "consents.sql")["authorization_request_claim"], request_id,
                                  session_id)
    if claimed is None:
        raise NotThisBrowser("another citizen session opened this request first")
