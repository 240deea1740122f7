"""`POST /oauth/token` and `POST /oauth/par` on the gateway: the consent flow's calls that need the organisation's
key, forwarded with the gateway's client authentication (see `broker.gateway.oauth`).

The form service sends the standard form (RFC 6749 §4.1.3 `authorization_code` or §6 `refresh_token`; RFC 9126 for a
pushed authorization request) and no client authentication; it gets the broker's answer back unchanged, OAuth error
or not. The record keeps each call (its assertion's `jti` as the nonce) and its status and error code, never a code,
a verifier or a token.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Final
from urllib.parse import parse_qsl, urlencode

import aiohttp
import orjson
from aiohttp import web

from broker.gateway import errors
from broker.gateway.access import CALLER
from broker.gateway.exchange import read_body
from broker.gateway.oauth import ASSERTION_TYPE, Endpoint, client_assertion
from broker.gateway.problems import RECORD_HEADER, error_response
from broker.gateway.record import Answered, Outcome, Sent
from broker.gateway.state import STATE

FORM: Final = "application/x-www-form-urlencoded"
# The gateway authenticates the client; a caller's own attempt is refused rather than silently replaced.
_CLIENT_AUTH: Final = frozenset({"client_assertion", "client_assertion_type", "client_secret"})
_PASSED_ON: Final = ("Cache-Control", "Pragma", "WWW-Authenticate", "Retry-After")


def _oauth_error(body: bytes) -> str | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, str) else None


async def _forward(request: web.Request, which: Endpoint) -> web.StreamResponse:
    gw = request.app[STATE]
    started = time.perf_counter()
    siret = gw.config.siret

    # 1. The form, without client authentication, for this organisation.
    raw = await read_body(request, FORM, gw.config.max_body)
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw))
    except (UnicodeDecodeError, ValueError):
        raise errors.InvalidCall("the body is not an application/x-www-form-urlencoded form") from None
    names = {k for k, _ in pairs}
    if names & _CLIENT_AUTH:
        raise errors.InvalidCall("the gateway authenticates the client: send no client_assertion nor client_secret")
    for k, v in pairs:
        if k == "client_id" and v != siret:
            raise errors.ConsumerMismatch(f"this gateway authenticates {siret}, not {v}")

    # 2. Where and how: the broker's metadata; the assertion; the call recorded before it leaves.
    metadata = await gw.oauth.metadata()
    endpoint = metadata.endpoint(which)
    assertion, jti = client_assertion(gw.client.key, client_id=siret, metadata=metadata)
    form = [(k, v) for k, v in pairs if k != "client_id"] + [
        ("client_id", siret), ("client_assertion_type", ASSERTION_TYPE), ("client_assertion", assertion)]
    try:
        record_id = await gw.record.sent(Sent(
            kind=which, sent_at=datetime.now(UTC), caller=request[CALLER], consumer=siret, kid=gw.client.key.kid,
            target_uri=endpoint, nonce=jti, request_headers={"Content-Type": FORM}))
    except errors.RecordUnavailable:
        gw.metrics.record_errors.inc()
        raise

    # 3. Once, with no redirect followed.
    sent_at = time.perf_counter()
    try:
        async with gw.client.session.post(endpoint, data=urlencode(form).encode(), headers={"Content-Type": FORM},
                                          allow_redirects=False) as resp:
            status, body = resp.status, await resp.read()
            headers = {n: resp.headers[n] for n in _PASSED_ON if n in resp.headers}
            content_type = resp.headers.get("Content-Type", "application/json")
    except (aiohttp.ClientError, TimeoutError) as exc:
        failure: errors.GatewayError = errors.BrokerTimeout("no answer in time") if isinstance(exc, TimeoutError) \
            else errors.BrokerUnreachable(f"{type(exc).__name__}: {exc}")
        await gw.record.answered(record_id, Answered(datetime.now(UTC), "unreachable", reason=str(failure)))
        gw.metrics.calls.labels(which, "unreachable").inc()
        return error_response(failure, record_id=str(record_id))
    gw.metrics.broker_seconds.labels(which).observe(time.perf_counter() - sent_at)

    # 4. Recorded (status and error code only), then passed on unchanged.
    outcome: Outcome = "released" if 200 <= status < 300 else "failed" if status >= 500 else "refused"
    await gw.record.answered(record_id, Answered(datetime.now(UTC), outcome, status=status,
                                                 problem_type=_oauth_error(body) if outcome != "released" else None))
    gw.metrics.calls.labels(which, outcome).inc()
    gw.metrics.seconds.labels(which).observe(time.perf_counter() - started)
    headers.setdefault("Cache-Control", "no-store")
    headers[RECORD_HEADER] = str(record_id)
    response = web.Response(status=status, body=body, headers=headers)
    response.headers["Content-Type"] = content_type
    return response


async def post_token(request: web.Request) -> web.StreamResponse:
    return await _forward(request, "token")


async def post_par(request: web.Request) -> web.StreamResponse:
    return await _forward(request, "par")
