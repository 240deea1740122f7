"""Request ids and response signatures, applied to every route."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import structlog
from aiohttp import web

from broker.observability import tracing
from broker.service.problems import REQUEST_ID, Handler
from broker.service.state import STATE
from broker.signing import messages

# Set by a route once the request's signature verified; the response signature is then bound to it.
VERIFIED = web.RequestKey("verified_request", messages.VerifiedRequest)
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A fresh id per request (a well-formed client X-Request-Id is kept alongside for correlation)."""
    # uuid4, never time-ordered: its 122 random bits keep the public leaf's hash of the entry unguessable
    request_id = str(uuid.uuid4())
    request[REQUEST_ID] = request_id
    client_id = request.headers.get("X-Request-Id", "")
    bound = {"request_id": request_id, "method": request.method, "path": request.path}
    if _CLIENT_ID.match(client_id):
        bound["client_request_id"] = client_id
    tracing.annotate(request_id)
    with structlog.contextvars.bound_contextvars(**bound):
        response = await handler(request)
    response.headers["X-Request-Id"] = request_id
    return response


@web.middleware
async def signing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sign every response with the broker key; when the request was verified, bind the answer to its signature
    (RFC 9421 `req`), so a consumer knows this answer is to that request and not a replayed one."""
    response = await handler(request)
    if not isinstance(response, web.Response) or response.body is None or "Signature" in response.headers:
        return response  # a route that signs its answer itself (to keep the signature as evidence) is left alone
    body = response.body
    if not isinstance(body, bytes):
        return response
    key = request.app[STATE].signing_key
    headers = messages.sign_response(
        status=response.status,
        headers=response.headers,
        body=body,
        request=request.get(VERIFIED),
        private_key=key,
        now=datetime.now(UTC),
    )
    response.headers.update(headers)
    return response
