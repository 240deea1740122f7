"""`POST /v1/exchanges` on the gateway: the broker's own request, in plain JSON, signed and sent on the form
service's behalf.

Read `post_exchange` top to bottom: each numbered step passes or raises. Invariant: no data reaches the form service
unless step 4 verified the broker's answer and step 5 recorded it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

import aiohttp
import orjson
import structlog
from aiohttp import web

from broker.consumer.client import SignedAnswer, SignedRequest
from broker.gateway import errors
from broker.gateway.access import CALLER
from broker.gateway.evidence import LogTrust, Release, Unverified, verify_release
from broker.gateway.problems import RECORD_HEADER, error_response
from broker.gateway.record import Answered, Outcome, Sent
from broker.gateway.state import STATE, Gateway

log = structlog.get_logger(__name__)

CONSUMER_HEADER: Final = "DLNUF-Consumer"
# The fields of a request worth keeping as evidence: what the signature covers, and the signature. Authorization is
# left out: an access token is a credential, noted as with_token.
_REQUEST_EVIDENCE: Final = ("Content-Type", "Content-Digest", "Signature-Input", "Signature")
_RESPONSE_EVIDENCE: Final = ("Content-Type", "Content-Digest", "Signature-Input", "Signature", "X-Request-Id")
# Broker headers a form service needs to act on an answer (a quota's Retry-After and RateLimit fields, a 401's
# challenge); everything else of the broker's framing stays at the gateway.
_PASSED_ON: Final = ("Retry-After", "RateLimit", "RateLimit-Policy", "WWW-Authenticate")
# An unsigned 502/503/504 is the path to the broker speaking (a reverse proxy), not the broker.
_PATH_STATUSES: Final = frozenset({502, 503, 504})


async def read_body(request: web.Request, content_type: str, limit: int) -> bytes:
    if request.content_type != content_type:
        raise errors.UnsupportedMediaType(f"Content-Type must be {content_type}")
    if request.content_length is not None and request.content_length > limit:
        raise errors.BodyTooLarge(f"the body exceeds {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise errors.BodyTooLarge(f"the body exceeds {limit} bytes") from None


def verify_consumer(request: web.Request, body: bytes, siret: str) -> None:
    """The call is for the organisation whose key the gateway holds: `DLNUF-Consumer` when sent, and the recipient,
    which the broker only accepts as the consumer or one of its sub-units. Anything else about the body is the
    broker's to judge."""
    declared = request.headers.get(CONSUMER_HEADER)
    if declared is not None and declared != siret:
        raise errors.ConsumerMismatch(f"this gateway signs for {siret}, not {declared}")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    recipient = parsed.get("recipient") if isinstance(parsed, dict) else None
    if isinstance(recipient, str) and recipient.split("/", 1)[0] != siret:
        raise errors.ConsumerMismatch(f"recipient {recipient!r} is not {siret} or one of its sub-units")


def bearer_token(request: web.Request) -> str | None:
    value = request.headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.InvalidCall("Authorization carries the consent flow's access token: Bearer <token>")
    return token.strip()


def _problem_type(body: bytes) -> str | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    value = parsed.get("type") if isinstance(parsed, dict) else None
    return value if isinstance(value, str) else None


def _outcome(answer: SignedAnswer) -> tuple[Outcome, str | None]:
    """The outcome of a verified answer, and its problem type."""
    if answer.ok:
        return "released", None
    return ("failed" if answer.status >= 500 else "refused"), _problem_type(answer.body)


async def _verify(gw: Gateway, answer: SignedAnswer, trust: LogTrust) -> Release | None:
    """None for a refusal the broker signed; the release's ids for a verified success; else raises."""
    if answer.signature is None:
        error = answer.signature_error
        reason = f"{error.reason}: {error.detail}" if error else "no signature"
        if not answer.ok and answer.status in _PATH_STATUSES and error is not None \
                and error.reason == "missing-signature":
            raise errors.BrokerUnreachable(f"an unsigned {answer.status} from the path to the broker")
        raise Unverified("signature", reason)
    if not answer.ok:
        return None
    if answer.status != 200 or answer.signature != "bound":
        raise Unverified("signature", f"a {answer.status} answer, signature {answer.signature}")
    try:
        payload = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        raise Unverified("shape", "the answer is not JSON") from None
    if not isinstance(payload, Mapping):
        raise Unverified("shape", "the answer is not a JSON object")
    return verify_release(payload, trust=trust, consumer=gw.config.siret, kid=gw.client.key.kid)


def _headers(signed: SignedRequest, names: tuple[str, ...]) -> dict[str, str]:
    return {n: signed.headers[n] for n in names if n in signed.headers}


async def post_exchange(request: web.Request) -> web.StreamResponse:
    gw = request.app[STATE]
    started = time.perf_counter()
    route = "exchange"

    # 1. Read the call: JSON, within the limit, for this organisation; an access token if the consent flow gave one.
    body = await read_body(request, "application/json", gw.config.max_body)
    verify_consumer(request, body, gw.config.siret)
    token = bearer_token(request)
    # What a release is verified against, known before anything is sent: no way to verify, no exchange.
    trust = await gw.log_trust()

    # 2. Sign it (a fresh nonce) and record it before it leaves: no record, no exchange.
    signed = gw.client.sign("/v1/exchanges", body,
                            extra_headers={"Authorization": f"Bearer {token}"} if token else None)
    try:
        record_id = await gw.record.sent(Sent(
            kind="exchange", sent_at=datetime.now(UTC), caller=request[CALLER], consumer=gw.config.siret,
            kid=signed.kid, target_uri=signed.url, nonce=signed.nonce,
            request_headers=_headers(signed, _REQUEST_EVIDENCE), with_token=token is not None, request_body=body))
    except errors.RecordUnavailable:
        gw.metrics.record_errors.inc()
        raise

    # 3. Send it, once.
    sent_at = time.perf_counter()
    try:
        answer = await gw.client.deliver(signed)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        gw.metrics.broker_seconds.labels(route).observe(time.perf_counter() - sent_at)
        failure: errors.GatewayError = errors.BrokerTimeout("no answer in time") if isinstance(exc, TimeoutError) \
            else errors.BrokerUnreachable(f"{type(exc).__name__}: {exc}")
        await _finish(gw, record_id, Answered(datetime.now(UTC), "unreachable", reason=str(failure)), route, started)
        return _refuse(failure, record_id)
    gw.metrics.broker_seconds.labels(route).observe(time.perf_counter() - sent_at)

    # 4. Verify it: a success bound to this request, with the log's promise for exactly this payload; a refusal
    #    signed by the broker. Anything else is the gateway's problem, and nothing of the answer goes on.
    evidence = {n: answer.headers[n] for n in _RESPONSE_EVIDENCE if n in answer.headers}
    try:
        release = await _verify(gw, answer, trust)
    except errors.BrokerUnreachable as exc:
        await _finish(gw, record_id, Answered(datetime.now(UTC), "unreachable", status=answer.status,
                                              reason=str(exc), response_headers=evidence,
                                              response_body=answer.body), route, started)
        return _refuse(exc, record_id)
    except Unverified as exc:
        gw.metrics.unverified.labels(exc.check).inc()
        log.error("broker answer did not verify", record=str(record_id), reason=str(exc), status=answer.status)
        await _finish(gw, record_id, Answered(datetime.now(UTC), "unverified", status=answer.status,
                                              reason=str(exc), response_headers=evidence,
                                              response_body=answer.body), route, started)
        return _refuse(exc, record_id)
    outcome, problem_type = _outcome(answer)

    # 5. Record the answer; only then pass it on.
    broker_request_id = release.request_id if release else answer.headers.get("X-Request-Id")
    await _finish(gw, record_id, Answered(
        datetime.now(UTC), outcome, status=answer.status, problem_type=problem_type, verification=answer.signature,
        broker_request_id=broker_request_id, log_entry_id=release.log_entry_id if release else None,
        inclusion_promise=release.inclusion_promise if release else None, response_headers=evidence,
        response_body=answer.body), route, started)
    headers = {RECORD_HEADER: str(record_id), "DLNUF-Response-Signature": str(answer.signature),
               "Cache-Control": "no-store"}
    if broker_request_id:
        headers["DLNUF-Broker-Request-Id"] = broker_request_id
    if release is not None:
        headers["DLNUF-Inclusion-Promise"] = "verified"
        headers["DLNUF-Log-Entry-Id"] = str(release.log_entry_id)
    headers.update({n: answer.headers[n] for n in _PASSED_ON if n in answer.headers})
    response = web.Response(status=answer.status, body=answer.body, headers=headers)
    response.headers["Content-Type"] = answer.headers.get("Content-Type", "application/octet-stream")
    return response


async def _finish(gw: Gateway, record_id: uuid.UUID, answered: Answered, route: str, started: float) -> None:
    gw.metrics.calls.labels(route, answered.outcome).inc()
    gw.metrics.seconds.labels(route).observe(time.perf_counter() - started)
    try:
        await gw.record.answered(record_id, answered)
    except errors.RecordUnavailable:
        gw.metrics.record_errors.inc()
        raise


def _refuse(exc: errors.GatewayError, record_id: uuid.UUID) -> web.Response:
    log.warning("call failed", reason=str(exc), record=str(record_id))
    return error_response(exc, record_id=str(record_id))
