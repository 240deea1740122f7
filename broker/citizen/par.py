"""RFC 9126 pushed authorization requests: ``POST /oauth/par``.

The client authenticates (private_key_jwt, as at the token endpoint) and sends the authorization request's
parameters in the body rather than through the browser; the broker checks them at once, exactly as the
authorization endpoint would, and answers 201 with a ``request_uri`` the browser then carries to
``/oauth/authorize`` with the ``client_id``. Nothing of the request travels through (or can be changed in) the
browser, which is why FAPI 2.0 requires it (``DLNUF_OAUTH_REQUIRE_PAR``).

Invariants: a request_uri is a 256-bit random reference stored as its SHA-256, names one client, lives
`REQUEST_URI_TTL`, and is consumed by its first use at the authorization endpoint (`consume`), fresh or not.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from aiohttp import web

from broker.citizen import oauth_request
from broker.citizen.client_auth import NO_STORE, PAR_PATH, authenticate, oauth_error, read_form
from broker.service.state import STATE, BrokerState
from broker.storage import db
from consent.tokens import OAuthError

log = structlog.get_logger(__name__)

REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:"
REQUEST_URI_TTL = timedelta(seconds=90)
"""Long enough for the client to redirect the browser, short as RFC 9126 §2.2 advises."""


class RequestUriUnusable(Exception):
    """Unknown, already used, expired, or pushed by another client. The message is for the log."""


def _q() -> dict[str, str]:
    return db.queries("consent", "consents.sql")


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def push(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        form = await read_form(request)
        # 1. who pushes: the client authenticates as at the token endpoint
        client_id, _ = await authenticate(request, form, endpoint=PAR_PATH)
        # 2. what: the authorization request, which must be that client's and must not point to another pushed one
        if "request_uri" in form:
            raise OAuthError("invalid_request", "request_uri is not allowed in a pushed authorization request")
        if form.get("client_id", client_id) != client_id:
            raise OAuthError("invalid_request", "client_id differs from the authenticated client")
        params = {name: form[name] for name in oauth_request.PARAMETERS if name in form}
        params["client_id"] = client_id
        try:
            oauth_request.parse(state.registry.current, params, pushed=True, require_pushed=False)
        except oauth_request.NoRedirect as exc:
            raise OAuthError("invalid_request", "redirect_uri is not registered for this client") from exc
        except oauth_request.Refused as exc:
            raise OAuthError(exc.error, exc.description) from None
    except OAuthError as exc:
        return oauth_error(request, exc, where="pushed authorization request")
    # 3. kept under a fresh reference, for one use
    reference = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    await state.pool.execute(_q()["par_insert"], _sha256(reference), client_id, params, now + REQUEST_URI_TTL)
    log.info("authorization request pushed", client_id=client_id)
    body = {"request_uri": REQUEST_URI_PREFIX + reference, "expires_in": int(REQUEST_URI_TTL.total_seconds())}
    return web.Response(status=201, body=orjson.dumps(body), content_type="application/json", headers=NO_STORE)


async def consume(state: BrokerState, query: Mapping[str, str], now: datetime) -> dict[str, Any]:
    """The parameters pushed under the query's ``request_uri``, for its ``client_id``, consumed by this call;
    raise `RequestUriUnusable`. Other query parameters are ignored (RFC 9126 §4)."""
    request_uri, client_id = query.get("request_uri", ""), query.get("client_id", "")
    if not request_uri.startswith(REQUEST_URI_PREFIX):
        raise RequestUriUnusable("request_uri is not one of ours")
    row = await state.pool.fetchrow(_q()["par_consume"], _sha256(request_uri.removeprefix(REQUEST_URI_PREFIX)), now)
    if row is None:
        raise RequestUriUnusable("request_uri unknown or already used")
    if not row["fresh"]:
        raise RequestUriUnusable("request_uri expired")
    if row["client_id"] != client_id:
        raise RequestUriUnusable(f"request_uri pushed by {row['client_id']}, presented for {client_id[:64]!r}")
    return dict(row["parameters"])
