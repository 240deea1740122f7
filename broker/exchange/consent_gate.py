"""The consent gate of the exchange: a consent-based habilitation needs a live consent, presented as an access
token bound to the consumer's key, and the consent must cover what is asked.

`consent_from_token` returns the consent the token stands for (from which the broker takes the citizen: the consumer
sends no identity), so that even a refusal is logged against that citizen; `verify_consent_covers` then returns None or
raises. The consent's use is counted later, atomically, right before the log commit (`consent.records.use`).
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from broker.service.state import BrokerState
from broker.signing.messages import VerifiedRequest
from consent import records, tokens
from consent.basis import ConsentMissing

AUTH_SCHEME = "Bearer "


def bearer_token(request: web.Request) -> str | None:
    value = request.headers.get("Authorization")
    if value is None:
        return None
    if not value.startswith(AUTH_SCHEME) or not value[len(AUTH_SCHEME):].strip():
        raise tokens.InvalidToken("Authorization is not a Bearer token")
    return value[len(AUTH_SCHEME):].strip()


async def consent_from_token(state: BrokerState, verified: VerifiedRequest, token: str | None, *, issuer: str,
                             dataset: str, purpose: str, recipient: str, now: datetime) -> records.Consent:
    # 1. A token must be there, and inside the signature: an unsigned Authorization could be swapped in transit.
    if token is None:
        raise ConsentMissing("consent-based habilitation and no access token presented")
    if not verified.covers("authorization"):
        raise tokens.InvalidToken("the Authorization header is not covered by the request signature")
    # 2. The token is the broker's, unexpired, and bound to this consumer and this very key.
    access = tokens.verify_access_token(token, broker_key=state.signing_key.public_key(owner="broker"),
                                        issuer=issuer, now=now)
    if access.client_id != verified.organisation or access.jkt != tokens.thumbprint(verified.key):
        raise tokens.InvalidToken(f"token of {access.client_id} presented with key {verified.kid}")
    # 3. The consent, among those the token stands for, that this exchange is about, exists.
    consent_id = access.consent_for(dataset=dataset, purpose=purpose, recipient=recipient)
    if consent_id is None:
        raise records.ConsentUnusable("other-dataset")
    consent = await records.get(state.pool, consent_id)
    if consent is None:
        raise records.ConsentUnusable("unknown")
    return consent


def verify_consent_covers(consent: records.Consent, verified: VerifiedRequest, *, dataset: str, purpose: str,
                          recipient: str, fields: tuple[str, ...], now: datetime) -> None:
    """Live, and covering this consumer, dataset, purpose, recipient and every field asked."""
    if consent.state_at(now) != "active":
        raise records.ConsentUnusable(consent.state_at(now))
    records.verify_request_fits(consent, controller=verified.organisation, dataset=dataset, purpose=purpose,
                                recipient=recipient, fields=fields)
