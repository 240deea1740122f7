"""Access tokens of the consent flow (RFC 9068), and the OAuth error of its endpoints.

An access token is a JWT signed by the broker, bound to the consents of one decision of the citizen and to the
consumer's key: its `cnf.jkt` is the RFC 7638 thumbprint of the key the consumer authenticated with, and the exchange
endpoint accepts the token only in a request signed (RFC 9421) by that very key. A token copied out of a consumer's
logs is useless without its key. Its `authorization_details` name each consent (`consent_id`): an exchange stands on
the one for its dataset, purpose and recipient.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.signing import jose
from broker.signing.keys import PrivateKey, PublicKey, jwk_thumbprint

ACCESS_TOKEN_TTL = timedelta(minutes=10)


class OAuthError(Exception):
    """An error of the token or PAR endpoint (RFC 6749 §5.2, RFC 9126 §2.3) or of the authorization endpoint
    (§4.1.2.1). `description` goes to the client as ``error_description``."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


class InvalidToken(Exception):
    """An access token presented at the exchange endpoint is not acceptable. Reason for logs only."""


def thumbprint(key: PublicKey) -> str:
    return jwk_thumbprint(key.to_jwk())


@dataclass(frozen=True, slots=True)
class AccessToken:
    consent_ids: tuple[uuid.UUID, ...]
    client_id: str
    jkt: str
    expires_at: datetime
    authorization_details: list[dict[str, Any]]
    """What was granted, one object per consent, each naming its ``consent_id``."""

    def consent_for(self, *, dataset: str, purpose: str, recipient: str) -> uuid.UUID | None:
        """The consent an exchange of `dataset` stands on: the one granted for that purpose and recipient, else
        (so that the refusal names the right reason) the first one for that dataset; None when the token grants
        nothing of that dataset."""
        of_dataset = [d for d in self.authorization_details if d.get("dataset") == dataset]
        exact = [d for d in of_dataset if d.get("purpose") == purpose and d.get("recipient") == recipient]
        chosen = exact[0] if exact else of_dataset[0] if of_dataset else None
        if chosen is None:
            return None
        try:
            consent_id = uuid.UUID(str(chosen["consent_id"]))
        except (KeyError, ValueError):
            raise InvalidToken("authorization_details without a consent_id") from None
        if consent_id not in self.consent_ids:
            raise InvalidToken("authorization_details names a consent the token is not for")
        return consent_id


def issue_access_token(*, signing_key: PrivateKey, issuer: str, consent_ids: Sequence[uuid.UUID], client_id: str,
                       jkt: str, authorization_details: Sequence[Mapping[str, Any]], now: datetime,
                       ttl: timedelta = ACCESS_TOKEN_TTL) -> tuple[str, int]:
    claims = {
        "iss": issuer, "aud": issuer, "sub": f"urn:dlnuf:consent:{consent_ids[0]}", "client_id": client_id,
        "iat": int(now.timestamp()), "exp": int((now + ttl).timestamp()), "jti": str(uuid.uuid4()),
        "consent_ids": [str(c) for c in consent_ids], "cnf": {"jkt": jkt},
        "authorization_details": [dict(d) for d in authorization_details],
    }
    return jose.sign_jwt(claims, signing_key, typ="at+jwt"), int(ttl.total_seconds())


def verify_access_token(token: str, *, broker_key: PublicKey, issuer: str, now: datetime) -> AccessToken:
    """Signature by the broker, `typ` at+jwt, issuer and audience, not expired; binding checked by the caller."""
    try:
        header, _ = jose.peek(token)
        if header.get("typ") != "at+jwt" or header.get("kid") != broker_key.kid:
            raise InvalidToken("not a broker access token")
        _, claims = jose.verify(token, broker_key, algorithms={jose.signing_alg(broker_key)})
        if claims.get("iss") != issuer or claims.get("aud") != issuer:
            raise InvalidToken("access token of another issuer or audience")
        consent_ids = tuple(uuid.UUID(str(c)) for c in claims["consent_ids"])
        if not consent_ids:
            raise InvalidToken("access token for no consent")
        jkt = claims["cnf"]["jkt"]
        int(claims["iat"])
    except (jose.JoseError, ValueError, KeyError, TypeError) as exc:
        raise InvalidToken(f"access token rejected: {exc}") from None
    expires_at = datetime.fromtimestamp(int(claims["exp"]), tz=now.tzinfo)
    if expires_at <= now:
        # checked here, not by the JOSE layer, so the injected clock decides, as everywhere else
        raise InvalidToken("access token expired")
    return AccessToken(consent_ids, str(claims["client_id"]), str(jkt), expires_at,
                       list(claims.get("authorization_details") or []))
