"""The gateway's errors, free of HTTP: `broker.gateway.problems` maps each to a problem type.

They say which side failed, as X-Road's codes do: the caller (`CallerRejected`, `ConsumerMismatch`, `InvalidCall`),
the path to the broker (`BrokerUnreachable`, `BrokerTimeout`), the broker's answer (`AnswerUnverified`), or the
gateway itself (`RecordUnavailable`).
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of the gateway's refusals. `public` errors show their message to the caller as the problem's detail;
    the others keep it for the server log."""

    public = False


class CallerRejected(GatewayError):
    """The caller is not the form service: no client secret, or a wrong one. Nothing more is said to it."""


class ConsumerMismatch(GatewayError):
    """The call names another organisation than the one whose key the gateway holds."""

    public = True


class InvalidCall(GatewayError):
    """The call cannot be forwarded as it is; the message says what to fix."""

    public = True


class BodyTooLarge(InvalidCall):
    pass


class UnsupportedMediaType(InvalidCall):
    pass


class NotOffered(GatewayError):
    """The broker does not offer this (its authorization server metadata does not name the endpoint)."""

    public = True


class BrokerUnreachable(GatewayError):
    """The broker could not be reached (refused, reset, name or TLS failure): nothing was exchanged, or nothing
    came back."""


class BrokerTimeout(BrokerUnreachable):
    """The broker did not answer in time. It may still have released and logged the exchange: the record keeps
    the request, the broker's log has the entry."""


class AnswerUnverified(GatewayError):
    """The broker's answer did not verify (signature, binding, digest, inclusion promise, or an entry that is not
    this exchange's): nothing of it is passed on. The reason is in the record and the server log."""


class RecordUnavailable(GatewayError):
    """The gateway's own record could not be written: the gateway does not exchange what it cannot keep."""
