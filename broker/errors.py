"""Errors of the exchange, free of HTTP: `broker/service/problems.py` maps each to a problem type in one table.

`public` errors carry a message safe for the caller (bad input); the others carry a reason for the server log and
the access log only (signature, authorization), because telling an attacker which check failed helps them.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of the broker's own refusals."""

    public = False

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class InvalidRequest(BrokerError):
    """The body is not the JSON the endpoint takes. The message says what to fix."""

    public = True


class InvalidSubject(InvalidRequest):
    pass


class SubjectKindNotAccepted(InvalidSubject):
    """The dataset cannot be asked about this kind of subject (e.g. a SIREN for a citizen's dataset)."""


class FranceConnectNeedsConsent(InvalidSubject):
    """A FranceConnect-mode request without a consent: only the broker's citizen login holds the token."""


class UnknownDataset(InvalidRequest):
    pass


class BodyTooLarge(InvalidRequest):
    pass


class UnsupportedMediaType(InvalidRequest):
    pass


class NotAuthorized(BrokerError):
    """No habilitation, or the purpose, a field or the recipient is outside it."""


class InvalidProviderAnswer(BrokerError):
    """The provider's answer does not validate against the dataset schema: it is never released."""


class LogUnavailable(BrokerError):
    """The access-log entry could not be committed, so nothing may be released."""


class LoginRequired(BrokerError):
    """A citizen route without a citizen session."""


class CsrfFailed(BrokerError):
    """A state-changing citizen call without the session's CSRF token."""


class QuotaExceeded(BrokerError):
    """The consumer, or this habilitation, used its quota for the current window. The message says which and
    when to come back: the consumer signed the request, and knowing its own quota helps it behave."""

    public = True

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyAttempts(BrokerError):
    """The request's source address caused too many refusals before any signature verified; it is answered at
    once until its budget renews."""

    public = True

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
