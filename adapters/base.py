"""The adapter contract: a verified query in, a dataset document (or an `AdapterError`) out.

Invariant: `ProviderAdapter.fetch()` lets only `AdapterError` escape, whatever the provider does (hangs, resets,
answers HTML, answers JSON of the wrong shape). Subclasses write `_fetch`; the base applies the timeout, the retry
budget and the circuit breaker (adapters/resilience.py), and maps transport failures. The broker validates the
returned document against the dataset schema afterwards; an adapter does not need to, but it must never invent
values the provider did not send.

Retries: a call is repeated only when the adapter's policy allows retries (its kind only makes idempotent GETs),
the attempt failed in transport or with a 5xx, the retry budget has room, the breaker is still closed, and the
pause fits in what is left of the one `timeout` that covers every attempt. A 4xx is an answer, never retried.
Subclasses read bodies with `read_body`, which is how the base learns each attempt's method and status.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp

from adapters.resilience import BreakerState, CallPolicy, CircuitBreaker, Clock, Outcome, RetryBudget
from adapters.subjects import Subject


class AdapterError(Exception):
    """Base of every failure an adapter may report. `slug` names the problem type; messages go to server logs."""

    slug: ClassVar[str] = "provider-error"


class ProviderUnavailable(AdapterError):
    """Connection refused or reset, 5xx, or the circuit breaker is open."""

    slug = "provider-unavailable"


class ProviderCircuitOpen(ProviderUnavailable):
    """The circuit breaker is open: the provider was not called. The message is for the caller too (when to
    come back, and the kind of the fault that keeps it open), since a 502 alone leaves a valid request with no
    hint; `reason`, for the server log, adds that fault's own message."""

    public = True

    def __init__(self, message: str, *, retry_after: float, last_fault: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.last_fault = last_fault
        self.reason = reason or message


class ProviderRateLimited(ProviderUnavailable):
    """The provider answered 429: too many calls. `retry_after` (seconds, from its Retry-After header, None when it
    sent none) is passed on to the caller, who can act on it; the message is for the caller too."""

    slug = "provider-rate-limited"
    public = True

    def __init__(self, message: str, *, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 §10.2.3: delay-seconds or an HTTP-date); None when
    absent or unreadable. Capped at a day: a provider's typo must not park a consumer for a year."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(min(int(value), 86400))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    wait = when.timestamp() - (time.time() if now is None else now)
    return float(min(max(math.ceil(wait), 0), 86400))


class ProviderMisconfigured(AdapterError):
    """The provider's URL answers, but not as the provider does: a 404 page that is not its error shape (a wrong
    `base_url` or path). A fault of the configuration, never an answer about the person."""

    slug = "provider-misconfigured"


class ProviderTimeout(AdapterError):
    slug = "provider-timeout"


class SubjectNotFound(AdapterError):
    """The provider does not know this person."""

    slug = "subject-not-found"


class SubjectNotDisclosable(AdapterError):
    """The provider knows the subject but may not disclose it to this caller, for a legal reason (HTTP 451: a
    business that objected to the publication of its data, asked through a public-data endpoint)."""

    slug = "subject-not-disclosable"


class IdentityAmbiguous(AdapterError):
    """The provider matched several people to this identity."""

    slug = "identity-ambiguous"


class ProviderAnswerMalformed(AdapterError):
    """Not JSON, or JSON the adapter cannot map."""

    slug = "provider-answer-malformed"


class ProviderRejectedQuery(AdapterError):
    """The provider cannot take this query as asked, and asking again will not help.

    Either the adapter knows beforehand (a pivot identity sent to an identifier-only endpoint, an unknown birth
    day where the provider requires a full date, no recipient SIRET) or the provider refused the parameters
    (HTTP 400 or 422 other than an ambiguity). Distinct from `ProviderUnavailable` so nobody retries it.
    """

    slug = "provider-rejected-query"


@dataclass(frozen=True, slots=True)
class AdapterQuery:
    """What the broker asks an adapter, after signature, habilitation and legal basis are checked."""

    dataset: str
    version: int
    subject: Subject
    fields: frozenset[str]
    request_id: str
    # API Entreprise's mandatory call context, from the exchange request: the framework of the call (a public
    # tender, a grant) and the procedure's reference, which the provider keeps to trace the call back.
    call_context: str = ""
    call_object: str = ""

    # SIRET of the administration the data is for; API Particulier requires it on every call.
    recipient: str = ""
    # The dataset parameters of the request (a month, a fiscal year), already checked against the schema's
    # `x-parameters`: integers and strings only.
    parameters: Mapping[str, int | str] = field(default_factory=dict)


@dataclass(slots=True)
class _Attempt:
    """What `read_body` saw of the current attempt; None until a response arrived."""

    method: str | None = None
    status: int | None = None


# Set by `fetch()` around each attempt; a context variable, so concurrent calls of one adapter do not mix.
_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("adapter_attempt", default=None)
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Health:
    """An adapter's resilience state, for `/metrics` and `/readyz`."""

    breaker: BreakerState
    # Since the adapter was built: attempts repeated, and calls refused at once by the open breaker.
    retries: int
    short_circuited: int
    # The problem slug of the last failure the breaker counted (what keeps an open breaker open), "" before any.
    last_fault: str = ""


# Generous for the largest dataset answer (a household with many children), small enough not to buffer a runaway.
MAX_ANSWER_BYTES = 1 << 20


async def read_body(response: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The response body, or `ProviderAnswerMalformed` as soon as it exceeds `limit` bytes.

    Also tells `ProviderAdapter.fetch()` the attempt's method and status, which decide whether it may be retried.
    """
    attempt = _ATTEMPT.get()
    if attempt is not None:
        attempt.method, attempt.status = response.method, response.status
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ProviderAnswerMalformed(f"answer larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class ProviderAdapter(ABC):
    """One provider endpoint family. Built once per app with the app's shared `ClientSession`.

    The default policy retries nothing (the base cannot know a subclass's calls are idempotent) and has the
    default breaker; `adapters.registry.build_adapter` sets the registry's policy with `use_policy`.
    """

    def __init__(self, *, name: str, datasets: Mapping[str, int], session: aiohttp.ClientSession,
                 timeout: float = 5.0) -> None:
        self.name = name
        # dataset id -> the schema version this adapter produces
        self.datasets = dict(datasets)
        self.session = session
        self.timeout = timeout
        self.use_policy(CallPolicy())

    def use_policy(self, policy: CallPolicy, *, clock: Clock = time.monotonic) -> None:
        """Set the retry and breaker policy; starts from a closed breaker and an empty budget."""
        self.policy = policy
        self.breaker = CircuitBreaker(policy, clock)
        self._budget = RetryBudget(policy, clock)
        self._retries = 0
        self._short_circuited = 0
        self._last_fault: AdapterError | None = None

    def health(self) -> Health:
        return Health(self.breaker.state, self._retries, self._short_circuited,
                      self._last_fault.slug if self._last_fault is not None else "")

    async def fetch(self, query: AdapterQuery) -> dict[str, Any]:
        probe = self.breaker.admit()
        if probe is None:
            self._short_circuited += 1
            wait = self.breaker.reopens_in()
            last = self._last_fault
            kind = last.slug if last is not None else "provider-unavailable"
            message = (f"{self.name}: circuit breaker open after repeated failures (last: {kind}), provider not "
                       f"called; retry in {math.ceil(wait)} s")
            raise ProviderCircuitOpen(message, retry_after=wait, last_fault=kind,
                                      reason=f"{message}; last fault: {last}" if last is not None else message)
        self._budget.record_call()
        # What the breaker learns in `finally`, once per call (retries are one call: a request whose every
        # attempt fails is one piece of evidence, not three): the last attempt's outcome; nothing when our caller
        # cancels us; a failure when the deadline ends an attempt.
        pending, attempting = Outcome.NEUTRAL, False
        fault: AdapterError | None = None
        try:
            async with asyncio.timeout(self.timeout) as deadline:
                for retry in range(self.policy.retries + 1):
                    attempting = True
                    result = await self._attempt(query)
                    attempting = False
                    if not isinstance(result, _Failure):
                        pending = Outcome.SUCCESS
                        return result
                    pending, fault = result.outcome, result.error
                    if not (result.retryable and retry < self.policy.retries and not probe):
                        raise result.error
                    pause = self.policy.backoff_delay(retry)
                    # A pause that does not fit before the deadline would only turn this error into a timeout.
                    fits = pause < (deadline.when() or 0.0) - asyncio.get_running_loop().time()
                    if not fits or self.breaker.state is not BreakerState.CLOSED or not self._budget.try_spend():
                        raise result.error
                    self._retries += 1
                    await asyncio.sleep(pause)
                raise AssertionError("unreachable: the last attempt returns or raises")
        except TimeoutError as exc:
            timeout = ProviderTimeout(f"{self.name}: no answer within {self.timeout}s")
            if attempting:
                pending, fault = Outcome.FAILURE, timeout
            raise timeout from exc
        finally:
            if pending is Outcome.FAILURE:
                self._last_fault = fault
            self.breaker.record(pending, probe=probe)

    async def _attempt(self, query: AdapterQuery) -> dict[str, Any] | _Failure:
        """One call of `_fetch`: the document, or the failure mapped to an `AdapterError` and classified."""
        attempt = _Attempt()
        token = _ATTEMPT.set(attempt)
        try:
            return await self._fetch(query)
        except AdapterError as exc:
            return _Failure.of(exc, attempt)
        except TimeoutError as exc:
            # raised inside the attempt (aiohttp's own socket timeouts); our deadline surfaces in `fetch()`
            return _Failure.of(_caused(ProviderTimeout(f"{self.name}: {type(exc).__name__}"), exc), attempt,
                               transport=True)
        except aiohttp.ClientResponseError as exc:
            attempt.status = exc.status
            return _Failure.of(_caused(ProviderUnavailable(f"{self.name}: HTTP {exc.status}"), exc), attempt)
        except (aiohttp.ClientError, OSError) as exc:
            return _Failure.of(_caused(ProviderUnavailable(f"{self.name}: {type(exc).__name__}: {exc}"), exc),
                               attempt, transport=True)
        except (ValueError, KeyError, TypeError) as exc:
            return _Failure.of(_caused(ProviderAnswerMalformed(f"{self.name}: {type(exc).__name__}: {exc}"), exc),
                               attempt)
        finally:
            _ATTEMPT.reset(token)

    @abstractmethod
    async def _fetch(self, query: AdapterQuery) -> dict[str, Any]:
        """Call the provider and map its answer to the dataset document."""


@dataclass(frozen=True, slots=True)
class _Failure:
    error: AdapterError
    # May the same call be tried again (transport failure or 5xx, on an idempotent method)?
    retryable: bool
    # What the attempt tells the breaker about the provider's health.
    outcome: Outcome

    @classmethod
    def of(cls, error: AdapterError, attempt: _Attempt, *, transport: bool = False) -> _Failure:
        if isinstance(error, ProviderAnswerMalformed | ProviderMisconfigured):
            return cls(error, False, Outcome.FAILURE)
        if isinstance(error, ProviderRateLimited):
            # An answer, from a provider alive enough to count our calls: never retried (it asked us to wait),
            # and no mark against its health.
            return cls(error, False, Outcome.NEUTRAL)
        if isinstance(error, ProviderUnavailable | ProviderTimeout):
            # With no response seen, the policy's `retries` already says the adapter's calls are idempotent.
            idempotent = attempt.method is None or attempt.method in _IDEMPOTENT_METHODS
            server_error = attempt.status is not None and attempt.status >= 500
            return cls(error, idempotent and (transport or server_error), Outcome.FAILURE)
        # Not found, ambiguous, rejected: an answer, so the provider is alive. The same errors raised by the
        # adapter before any response (a query it cannot express) say nothing, and must not close a half-open
        # breaker.
        return cls(error, False, Outcome.NEUTRAL if attempt.status is None else Outcome.SUCCESS)


def _caused(error: AdapterError, cause: BaseException) -> AdapterError:
    """`error` chained to `cause`, as `raise error from cause` would, for when it is raised later."""
    error.__cause__ = cause
    return error
