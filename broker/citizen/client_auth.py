"""The token and PAR endpoints' shared edge: client authentication over HTTP, and their OAuth error answers.

Status codes and challenges follow RFC 6749 §5.2: errors are 400, including ``invalid_client`` for a client that
authenticated in the body (private_key_jwt is no HTTP authentication scheme, so there is no challenge to send);
when the client tried the ``Authorization`` header instead, the answer is 401 with a ``WWW-Authenticate``
challenge of the scheme it used, carrying ``error`` and ``error_description``. Never ``Bearer``: that is a resource
server's challenge (RFC 6750), and clients that see it treat the answer as one (openid-client then hides the
``error_description``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from aiohttp import web

from broker.service.state import STATE
from broker.service.urls import issuer
from broker.signing.keys import PublicKey
from consent import client_auth
from consent.tokens import OAuthError

log = structlog.get_logger(__name__)

TOKEN_PATH = "/oauth/token"  # noqa: S105 - a path, not a secret
PAR_PATH = "/oauth/par"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_SCHEME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def oauth_error(request: web.Request, exc: OAuthError, *, where: str) -> web.Response:
    """The JSON error of the token or PAR endpoint (RFC 6749 §5.2, RFC 9126 §2.3); the reason goes to the log."""
    log.warning(f"{where} refused", error=exc.error, reason=getattr(exc, "reason", exc.description))
    headers = dict(NO_STORE)
    status = 400
    authorization = request.headers.get("Authorization")
    if exc.error == "invalid_client" and authorization:
        scheme = authorization.split(" ", 1)[0]
        status = 401
        headers["WWW-Authenticate"] = (f"{scheme if _SCHEME.match(scheme) else 'Basic'} "
                                       f"realm={_quoted(issuer(request, request.app[STATE].config.public_url))}, "
                                       f"error=\"invalid_client\", error_description={_quoted(exc.description)}")
    body = {"error": exc.error, "error_description": exc.description}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


async def authenticate(request: web.Request, form: dict[str, str], *, endpoint: str) -> tuple[str, PublicKey]:
    """The client that signed this request's client assertion, and its key; raise `OAuthError`."""
    state = request.app[STATE]
    if request.headers.get("Authorization"):
        if "client_assertion" in form:
            raise OAuthError("invalid_request", "use one client authentication method, not two (RFC 6749 §2.3)")
        raise client_auth.ClientAuthFailed("the only client authentication method is private_key_jwt")
    iss = issuer(request, state.config.public_url)
    issuer_only = state.config.client_assertion_audience == "issuer"
    return await client_auth.verify_client_assertion(
        form, audiences={iss} if issuer_only else {iss, iss + endpoint, iss + TOKEN_PATH}, keys_of=state.keys_of,
        claim_jti=state.claim_nonce, max_lifetime=timedelta(seconds=state.config.client_assertion_max_lifetime),
        now=datetime.now(UTC), single_audience=issuer_only,
    )


async def read_form(request: web.Request) -> dict[str, str]:
    """The form of a token or PAR request; a repeated parameter is refused (RFC 6749 §3.2, RFC 9126 §2.1)."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "this endpoint takes application/x-www-form-urlencoded")
    raw = await request.post()
    form: dict[str, Any] = {}
    for name, value in raw.items():
        if name in form:
            raise OAuthError("invalid_request", f"parameter {name} is repeated")
        if not isinstance(value, str):
            raise OAuthError("invalid_request", f"parameter {name} is not text")
        form[name] = value
    return form
