"""RFC 9457 problem details: the one table from errors to problem types, and the middleware that applies it.

Invariant: every error response of the broker is `application/problem+json` with a `type` from `PROBLEMS`; no
exception text or traceback reaches a caller unless its class is marked public.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web

from adapters import base as adapter_errors
from broker import errors
from broker.signing.messages import SignatureRejected
from broker.storage.db import DatabaseUnavailable
from consent.basis import BasisRefused
from consent.tokens import InvalidToken
from schemas.validation import InvalidDocument, InvalidParameters

log = structlog.get_logger(__name__)

PROBLEM_BASE = "https://dlnuf.org/problems/"
CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True, slots=True)
class ProblemType:
    slug: str
    status: int
    title: str
    description: str
    auth_headers: tuple[tuple[str, str], ...] = ()
    """What an answer of this type carries to say how to authenticate: the WWW-Authenticate challenge RFC 9110
    §15.5.2 wants on every 401, and for signatures the RFC 9421 `Accept-Signature`."""

    @property
    def uri(self) -> str:
        return PROBLEM_BASE + self.slug


def _p(slug: str, status: int, title: str, description: str, *auth_headers: tuple[str, str]) -> ProblemType:
    return ProblemType(slug, status, title, description, auth_headers)


# Challenges: RFC 6750 §3 for the consent flow's access tokens (no error_description: the reason stays in the log);
# RFC 9421 defines no authentication scheme, so the signature challenge names the mechanism and `Accept-Signature`
# (RFC 9421 §5.1) says what to sign; a citizen session is a cookie, named after the old Cookie-scheme draft.
BEARER_CHALLENGE = ("WWW-Authenticate", 'Bearer error="invalid_token"')
SIGNATURE_CHALLENGE = ("WWW-Authenticate", 'Signature realm="dlnuf"')
ACCEPT_SIGNATURE = ("Accept-Signature", 'sig1=("@method" "@target-uri" "content-digest");created;keyid;nonce')
COOKIE_CHALLENGE = ("WWW-Authenticate",
                    'Cookie realm="dlnuf-citizen", form-action="/citizen/login", cookie-name="dlnuf_session"')


# Order matters: the first class an exception is an instance of wins, so leaves come before their bases.
_ANSWER_INVALID = _p("provider-answer-invalid", 502, "Provider answer invalid",
                     "The provider's answer did not validate against the dataset schema. No data was released.")

PROBLEMS: list[tuple[type[BaseException], ProblemType]] = [
    (SignatureRejected, _p("signature-rejected", 401, "Signature rejected",
                           "The request is not signed, or its RFC 9421 signature, Content-Digest, key, freshness "
                           "or nonce did not verify. The reason is in the broker's log, not in the answer.",
                           SIGNATURE_CHALLENGE, ACCEPT_SIGNATURE)),
    (InvalidToken, _p("invalid-token", 401, "Invalid access token",
                      "The access token is not the broker's, expired, not covered by the request signature, or "
                      "presented with another key than the one it is bound to. The reason is in the broker's log.",
                      BEARER_CHALLENGE)),
    (errors.LoginRequired, _p("citizen-login-required", 401, "Login required",
                              "This route is for a logged-in citizen (FranceConnect): log in at /citizen/login.",
                              COOKIE_CHALLENGE)),
    (errors.CsrfFailed, _p("csrf-failed", 403, "CSRF check failed",
                           "A state-changing call needs the session's CSRF token in X-CSRF-Token.")),
    (errors.UnknownDataset, _p("unknown-dataset", 404, "Unknown dataset",
                               "The dataset or version is not in the catalogue.")),
    (errors.BodyTooLarge, _p("body-too-large", 413, "Body too large", "The body exceeds the broker's limit.")),
    (errors.UnsupportedMediaType, _p("unsupported-media-type", 415, "Unsupported media type",
                                     "The exchange endpoint takes application/json.")),
    (errors.SubjectKindNotAccepted, _p("subject-kind-not-accepted", 400, "Subject kind not accepted",
                                       "The dataset cannot be asked about this kind of subject; the catalogue "
                                       "lists the kinds each dataset accepts (`subjects`).")),
    (errors.FranceConnectNeedsConsent, _p("france-connect-needs-consent", 400, "FranceConnect needs a consent",
                                          "A FranceConnect-mode request is only possible with the access token "
                                          "of a consent the citizen gave after logging in with FranceConnect.")),
    (InvalidParameters, _p("invalid-parameters", 400, "Invalid dataset parameters",
                           "The dataset's parameters (`parameters`: a month, a fiscal year...) are missing, unknown "
                           "or malformed; the catalogue lists each dataset's parameters. `detail` says which.")),
    (errors.InvalidSubject, _p("invalid-subject", 400, "Invalid subject",
                               "The subject is missing or its pivot identity or identifier is malformed.")),
    (errors.InvalidRequest, _p("invalid-request", 400, "Invalid request",
                               "The body is not valid JSON of the expected shape; `detail` says what to fix.")),
    (errors.NotAuthorized, _p("not-authorized", 403, "Not authorized",
                              "No habilitation allows this consumer this dataset, purpose, fields and recipient.")),
    (BasisRefused, _p("legal-basis-refused", 403, "Legal basis refused",
                                  "The habilitation's legal basis does not allow this exchange now "
                                  "(consent missing, revoked or expired, or the citizen objected).")),
    (adapter_errors.SubjectNotFound, _p("subject-not-found", 404, "Subject not found",
                                        "The provider does not know this person.")),
    (adapter_errors.SubjectNotDisclosable, _p("subject-not-disclosable", 451, "Subject not disclosable",
                                              "The provider knows this subject but may not disclose its data to "
                                              "this caller, for a legal reason (a business that objected to the "
                                              "publication of its data: ask the dataset with protected data, if "
                                              "habilitated).")),
    (adapter_errors.IdentityAmbiguous, _p("identity-ambiguous", 409, "Identity ambiguous",
                                          "The provider matched several people; send a more precise identity.")),
    (adapter_errors.ProviderRejectedQuery, _p("provider-rejected-query", 422, "Provider rejected the query",
                                              "The provider cannot answer this query as asked (for example an "
                                              "identity it requires in full); asking again will not help.")),
    (adapter_errors.ProviderTimeout, _p("provider-timeout", 504, "Provider timeout",
                                        "The provider did not answer in time. No data was released.")),
    (adapter_errors.ProviderAnswerMalformed, _p("provider-answer-malformed", 502, "Provider answer malformed",
                                                "The provider answered something that is not the expected "
                                                "format. No data was released.")),
    (errors.InvalidProviderAnswer, _ANSWER_INVALID),
    (InvalidDocument, _ANSWER_INVALID),
    (adapter_errors.ProviderRateLimited, _p("provider-rate-limited", 429, "Provider rate limited",
                                            "The provider refuses more calls for now (its HTTP 429). Retry after "
                                            "the Retry-After delay, when the provider gave one. No data was "
                                            "released.")),
    (adapter_errors.ProviderMisconfigured, _p("provider-misconfigured", 502, "Provider misconfigured",
                                              "The provider's address answers, but not as the provider (a wrong "
                                              "URL in the broker's registry). No data was released.")),
    (adapter_errors.ProviderUnavailable, _p("provider-unavailable", 502, "Provider unavailable",
                                            "The provider could not be reached or failed, or is cut off for a "
                                            "while after repeated failures (then `detail` and Retry-After say "
                                            "until when). No data was released.")),
    (adapter_errors.AdapterError, _p("provider-error", 502, "Provider error",
                                     "The provider call failed. No data was released.")),
    (errors.QuotaExceeded, _p("quota-exceeded", 429, "Quota exceeded",
                              "The consumer, or this habilitation, used its quota for the current window "
                              "(RateLimit-Policy). Retry after the Retry-After delay.")),
    (errors.TooManyAttempts, _p("too-many-attempts", 429, "Too many attempts",
                                "This address sent too many requests that were refused before any signature "
                                "verified. Retry after the Retry-After delay, with a valid signature.")),
    (errors.LogUnavailable, _p("log-unavailable", 503, "Access log unavailable",
                               "The access-log entry could not be committed, so no data was released. "
                               "Retry later with a new nonce.")),
    (DatabaseUnavailable, _p("service-unavailable", 503, "Service unavailable",
                             "The broker's database is unreachable. Retry later.")),
]

# Problems that do not come from a domain exception.
HTTP_PROBLEMS: dict[int, ProblemType] = {
    400: _p("bad-request", 400, "Bad request", "The HTTP request is malformed."),
    404: _p("not-found", 404, "Not found", "No such resource."),
    405: _p("method-not-allowed", 405, "Method not allowed", "This resource does not take that method."),
    413: _p("body-too-large", 413, "Body too large", "The body exceeds the broker's limit."),
    415: _p("unsupported-media-type", 415, "Unsupported media type", "Send application/json."),
    431: _p("header-too-large", 431, "Request header fields too large",
            "A header field or the request line exceeds the broker's limit, or there are too many header fields."),
    500: _p("internal-error", 500, "Internal error",
            "An unexpected error. It is logged with the request id; nothing was released."),
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


def detail_for(exc: BaseException) -> str | None:
    """The exception's message when its class says it is for the caller (`public`), else nothing."""
    if getattr(exc, "public", False) is True:
        return str(exc)
    return None


def retry_after(exc: BaseException) -> dict[str, str]:
    """The Retry-After header for a refusal that knows when to come back (`retry_after` seconds)."""
    wait = getattr(exc, "retry_after", None)
    return {} if not isinstance(wait, int | float) else {"Retry-After": str(max(1, math.ceil(wait)))}


def problem_response(problem: ProblemType, *, detail: str | None = None, request_id: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"type": problem.uri, "title": problem.title, "status": problem.status}
    if detail:
        body["detail"] = detail
    if request_id:
        body["instance"] = f"urn:uuid:{request_id}"
        body["request_id"] = request_id
    body.update(extra)
    if problem.auth_headers:
        headers = {**(headers or {}), **dict(problem.auth_headers)}
    return web.Response(status=problem.status, body=orjson.dumps(body), content_type=CONTENT_TYPE,
                        headers=headers)


REQUEST_ID = web.RequestKey("request_id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns whatever escapes a handler into a problem; nothing escapes as a traceback."""
    request_id = request.get(REQUEST_ID)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        problem = HTTP_PROBLEMS.get(exc.status) or _p("http-" + str(exc.status), exc.status, exc.reason, exc.reason)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem_response(problem, request_id=request_id, headers=headers)
    except errors.BrokerError as exc:
        # the exchange handler renders its own refusals (it must log them first); this is for other routes
        return problem_response(problem_for(exc), detail=detail_for(exc), request_id=request_id)
    except Exception:
        log.exception("unhandled error")
        return problem_response(HTTP_PROBLEMS[500], request_id=request_id)
