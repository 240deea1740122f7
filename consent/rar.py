"""RFC 9396 rich authorization requests of type `dlnuf_exchange`: what a consumer asks the citizen to consent to.

    {"type": "dlnuf_exchange", "dataset": "quotient_familial", "purpose": "tarification-restauration-scolaire",
     "fields": ["quotient_familial", "enfants"], "frequency": "one_time", "duration_days": 30,
     "recipient": "21750001600019"}

`frequency` is `one_time` (one exchange, then the consent is used up) or `periodic` (any number of exchanges until
it expires after `duration_days`, at most 365). Every member is checked against the consumer's habilitation.

A request may carry several objects (RFC 9396 §2): one per dataset, or per purpose or recipient of a dataset. The
citizen decides on each, and each accepted one becomes its own consent record. Two objects may not ask the same
dataset for the same purpose and recipient: the exchange could not tell which consent it stands on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

TYPE = "dlnuf_exchange"
MAX_DAYS = 365
MAX_OBJECTS = 8
_FIELD = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*){0,7}$")


class InvalidAuthorizationDetails(ValueError):
    """Malformed, or outside the consumer's habilitation (OAuth error `invalid_authorization_details`)."""


@dataclass(frozen=True, slots=True)
class ExchangeAuthorization:
    dataset: str
    purpose: str
    fields: tuple[str, ...]
    frequency: str
    duration_days: int
    recipient: str

    def to_json(self) -> dict[str, Any]:
        return {"type": TYPE, "dataset": self.dataset, "purpose": self.purpose, "fields": list(self.fields),
                "frequency": self.frequency, "duration_days": self.duration_days, "recipient": self.recipient}


def parse(raw: str | Sequence[Any], *, default_recipient: str) -> tuple[ExchangeAuthorization, ...]:
    """Parse the `authorization_details` parameter: a JSON array of 1 to `MAX_OBJECTS` `dlnuf_exchange` objects."""
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidAuthorizationDetails("authorization_details is not JSON") from None
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_OBJECTS:
        raise InvalidAuthorizationDetails(f"authorization_details must be an array of 1 to {MAX_OBJECTS} objects")
    parsed = tuple(_parse_one(d, default_recipient=default_recipient) for d in raw)
    keys = [(a.dataset, a.purpose, a.recipient) for a in parsed]
    if len(set(keys)) != len(keys):
        raise InvalidAuthorizationDetails("two authorization_details ask the same dataset, purpose and recipient")
    return parsed


def _parse_one(d: Any, *, default_recipient: str) -> ExchangeAuthorization:
    if not isinstance(d, Mapping):
        raise InvalidAuthorizationDetails("each authorization_details member must be an object")
    if d.get("type") != TYPE:
        raise InvalidAuthorizationDetails(f"authorization_details type must be {TYPE!r}")
    unknown = set(d) - {"type", "dataset", "purpose", "fields", "frequency", "duration_days", "recipient"}
    if unknown:
        raise InvalidAuthorizationDetails(f"unknown members: {', '.join(sorted(unknown))}")
    dataset, purpose = d.get("dataset"), d.get("purpose")
    if not isinstance(dataset, str) or not isinstance(purpose, str):
        raise InvalidAuthorizationDetails("dataset and purpose must be strings")
    fields = d.get("fields")
    if (not isinstance(fields, list) or not fields or len(fields) > 64
            or not all(isinstance(f, str) and _FIELD.match(f) for f in fields) or len(set(fields)) != len(fields)):
        raise InvalidAuthorizationDetails("fields must be a non-empty list of distinct field paths")
    frequency = d.get("frequency", "one_time")
    if frequency not in ("one_time", "periodic"):
        raise InvalidAuthorizationDetails("frequency must be one_time or periodic")
    days = d.get("duration_days", 30)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise InvalidAuthorizationDetails(f"duration_days must be an integer from 1 to {MAX_DAYS}")
    recipient = d.get("recipient", default_recipient)
    if not isinstance(recipient, str):
        raise InvalidAuthorizationDetails("recipient must be a string")
    return ExchangeAuthorization(dataset, purpose, tuple(fields), frequency, days, recipient)


def verify_within(auth: ExchangeAuthorization, *, purposes: Iterable[str], allowed_fields: Iterable[str],
                  recipients: Iterable[str], basis: str) -> None:
    """The request must stay inside the habilitation, whose legal basis must be consent."""
    if basis != "consent":
        raise InvalidAuthorizationDetails(f"the habilitation's legal basis is {basis}, not consent")
    if auth.purpose not in set(purposes):
        raise InvalidAuthorizationDetails(f"purpose {auth.purpose!r} is not in the habilitation")
    allowed = list(allowed_fields)
    outside = [f for f in auth.fields if not any(f == a or f.startswith(a + ".") for a in allowed)]
    if outside:
        raise InvalidAuthorizationDetails(f"fields {outside} are not in the habilitation")
    if auth.recipient not in set(recipients):
        raise InvalidAuthorizationDetails(f"recipient {auth.recipient!r} is not in the habilitation")
