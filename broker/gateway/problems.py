"""The gateway's own RFC 9457 problems: the one table from its errors to problem types, and the middleware.

The broker's problems pass through the gateway unchanged; these are the gateway's, under
`https://dlnuf.org/problems/gateway/`, so a form service always knows which side refused: the gateway (the caller,
the path to the broker, an answer that did not verify, its record) or the broker. Invariant: every error the
gateway itself answers is one of these, and no exception text reaches a caller unless its class is public.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web

from broker.gateway import errors
from broker.gateway.state import STATE

log = structlog.get_logger(__name__)

PROBLEM_BASE = "https://dlnuf.org/problems/gateway/"
CONTENT_TYPE = "application/problem+json"
RECORD_HEADER = "DLNUF-Gateway-Record"
ROUTES = {"/v1/exchanges": "exchange", "/oauth/token": "token", "/oauth/par": "par"}


@dataclass(frozen=True, slots=True)
class ProblemType:
    slug: str
    status: int
    title: str
    description: str

    @property
    def uri(self) -> str:
        return PROBLEM_BASE + self.slug


def _p(slug: str, status: int, title: str, description: str) -> ProblemType:
    return ProblemType(slug, status, title, description)


_INVALID = _p("invalid-request", 400, "Invalid request", "The call cannot be forwarded as it is: `detail` says why.")

# Order matters: the first class an exception is an instance of wins, so leaves come before their bases.
PROBLEMS: list[tuple[type[errors.GatewayError], ProblemType]] = [
    (errors.CallerRejected, _p("caller-rejected", 401, "Caller rejected",
                               "Only the form service may call the gateway: send its client secret in "
                               "DLNUF-Gateway-Secret (or its TLS client certificate).")),
    (errors.ConsumerMismatch, _p("consumer-mismatch", 403, "Consumer mismatch",
                                 "The call names another organisation than the one whose key this gateway holds.")),
    (errors.BodyTooLarge, _p("body-too-large", 413, "Body too large", "The body exceeds the gateway's limit.")),
    (errors.UnsupportedMediaType, _p("unsupported-media-type", 415, "Unsupported media type",
                                     "Exchanges take application/json; the OAuth endpoints take "
                                     "application/x-www-form-urlencoded.")),
    (errors.InvalidCall, _INVALID),
    (errors.NotOffered, _p("not-offered", 404, "Not offered by the broker",
                           "The broker's authorization server metadata does not name this endpoint.")),
    (errors.BrokerTimeout, _p("broker-timeout", 504, "Broker timeout",
                              "The broker did not answer in time. Nothing was passed on; the broker may have "
                              "logged the exchange. Retry: the gateway signs each call afresh.")),
    (errors.BrokerUnreachable, _p("broker-unreachable", 502, "Broker unreachable",
                                  "The broker could not be reached. Nothing was exchanged or nothing came back.")),
    (errors.AnswerUnverified, _p("broker-answer-unverified", 502, "Broker answer unverified",
                                 "The broker's answer did not verify (signature, binding to the request, digest, or "
                                 "the transparency log's promise): nothing of it is passed on. The reason is in the "
                                 "gateway's record and log.")),
    (errors.RecordUnavailable, _p("record-unavailable", 503, "Record unavailable",
                                  "The gateway's record could not be written, so nothing was exchanged or passed "
                                  "on. Retry later.")),
]

HTTP_PROBLEMS: dict[int, ProblemType] = {
    400: _INVALID,
    404: _p("not-found", 404, "Not found", "No such resource on the gateway."),
    405: _p("method-not-allowed", 405, "Method not allowed", "This resource does not take that method."),
    413: _p("body-too-large", 413, "Body too large", "The body exceeds the gateway's limit."),
    500: _p("internal-error", 500, "Internal error", "An unexpected error, logged; nothing was passed on."),
}


def all_problem_types() -> list[ProblemType]:
    seen: dict[str, ProblemType] = {}
    for _, p in PROBLEMS:
        seen.setdefault(p.slug, p)
    for p in HTTP_PROBLEMS.values():
        seen.setdefault(p.slug, p)
    return list(seen.values())


def problem_for(exc: BaseException) -> ProblemType:
    for cls, problem in PROBLEMS:
        if isinstance(exc, cls):
            return problem
    return HTTP_PROBLEMS[500]


def problem_response(problem: ProblemType, *, detail: str | None = None, headers: dict[str, str] | None = None,
                     **extra: Any) -> web.Response:
    body: dict[str, Any] = {"type": problem.uri, "title": problem.title, "status": problem.status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.Response(status=problem.status, body=orjson.dumps(body), content_type=CONTENT_TYPE,
                        headers=headers)


def error_response(exc: errors.GatewayError, *, record_id: str | None = None) -> web.Response:
    problem = problem_for(exc)
    headers = {RECORD_HEADER: record_id} if record_id else None
    if isinstance(exc, errors.CallerRejected):
        headers = {"WWW-Authenticate": 'DLNUF-Gateway-Secret realm="dlnuf-gateway"'}
    return problem_response(problem, detail=str(exc) if exc.public else None, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Whatever escapes a handler becomes a problem; nothing escapes as a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        problem = HTTP_PROBLEMS.get(exc.status) or _p(f"http-{exc.status}", exc.status, exc.reason, exc.reason)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem_response(problem, headers=headers)
    except errors.GatewayError as exc:
        log.warning("call refused", problem=problem_for(exc).slug, reason=str(exc), path=request.path)
        if STATE in request.app:
            request.app[STATE].metrics.calls.labels(ROUTES.get(request.path, "other"), "rejected").inc()
        return error_response(exc)
    except Exception:
        log.exception("unhandled error", path=request.path)
        return problem_response(HTTP_PROBLEMS[500])
