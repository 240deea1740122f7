"""OAuth tokens of the consent flow: client assertions (RFC 7523 private_key_jwt) and access tokens (RFC 9068).

An access token is a JWT signed by the broker, bound to one consent and to the consumer's key: its `cnf.jkt` is the
RFC 7638 thumbprint of the key the consumer authenticated with, and the exchange endpoint accepts the token only in
a request signed (RFC 9421) by that very key. A token copied out of a consumer's logs is useless without its key.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt

from broker.signing.keys import PrivateKey, PublicKey, jwk_thumbprint

ACCESS_TOKEN_TTL = timedelta(minutes=10)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_JWT_ALG = {"ed25519": "EdDSA", "ecdsa-p256-sha256": "ES256"}
_LEEWAY = 30  # seconds of clock difference tolerated between consumer and broker


class OAuthError(Exception):
    """An error of the token endpoint (RFC 6749 §5.2) or of the authorization endpoint (§4.1.2.1)."""

    def __init__(self, error: str, description: str, *, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status


class InvalidToken(Exception):
    """An access token presented at the exchange endpoint is not acceptable. Reason for logs only."""


def thumbprint(key: PublicKey) -> str:
    return jwk_thumbprint(key.to_jwk())


async def verify_client_assertion(
    assertion: str, *, client_id: str, token_endpoint: str, lookup_key: Callable[[str], PublicKey | None],
    claim_jti: Callable[[str, str, datetime], Awaitable[bool]], now: datetime,
) -> PublicKey:
    """Return the client's key that signed a valid, fresh, never-seen assertion; raise `OAuthError(invalid_client)`."""
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise OAuthError("invalid_client", "client_assertion is not a JWT", status=401) from None
    kid = header.get("kid")
    key = lookup_key(kid) if isinstance(kid, str) else None
    if key is None or key.owner != client_id:
        raise OAuthError("invalid_client", "unknown client key", status=401)
    if not key.is_valid_at(now):
        raise OAuthError("invalid_client", "client key not valid now", status=401)
    try:
        claims = jwt.decode(
            assertion, key.key, algorithms=[_JWT_ALG[key.alg]], audience=token_endpoint, issuer=client_id,
            leeway=_LEEWAY, options={"require": ["iss", "sub", "aud", "exp", "jti"], "verify_iat": False},
        )
    except jwt.PyJWTError as exc:
        raise OAuthError("invalid_client", f"client_assertion rejected: {exc}", status=401) from None
    if claims.get("sub") != client_id:
        raise OAuthError("invalid_client", "client_assertion sub is not the client", status=401)
    exp = datetime.fromtimestamp(int(claims["exp"]), tz=now.tzinfo)
    if exp - now > timedelta(minutes=10):
        raise OAuthError("invalid_client", "client_assertion lives too long (at most 10 minutes)", status=401)
    if not await claim_jti(key.kid, "jti:" + str(claims["jti"]), exp + timedelta(seconds=_LEEWAY)):
        raise OAuthError("invalid_client", "client_assertion replayed", status=401)
    return key


@dataclass(frozen=True, slots=True)
class AccessToken:
    consent_id: uuid.UUID
    client_id: str
    jkt: str
    expires_at: datetime
    authorization_details: list[dict[str, Any]]


def issue_access_token(*, signing_key: PrivateKey, issuer: str, consent_id: uuid.UUID, client_id: str, jkt: str,
                       authorization_details: Sequence[Mapping[str, Any]], now: datetime,
                       ttl: timedelta = ACCESS_TOKEN_TTL) -> tuple[str, int]:
    claims = {
        "iss": issuer, "aud": issuer, "sub": f"urn:dlnuf:consent:{consent_id}", "client_id": client_id,
        "iat": int(now.timestamp()), "exp": int((now + ttl).timestamp()), "jti": str(uuid.uuid4()),
        "consent_id": str(consent_id), "cnf": {"jkt": jkt},
        "authorization_details": [dict(d) for d in authorization_details],
    }
    token = jwt.encode(claims, signing_key.private_key, algorithm=_JWT_ALG[signing_key.alg],
                       headers={"typ": "at+jwt", "kid": signing_key.kid})
    return token, int(ttl.total_seconds())


def verify_access_token(token: str, *, broker_key: PublicKey, issuer: str, now: datetime) -> AccessToken:
    """Signature by the broker, `typ` at+jwt, issuer and audience, not expired; binding checked by the caller."""
    try:
        header = jwt.get_unverified_header(token)
        if header.get("typ") != "at+jwt" or header.get("kid") != broker_key.kid:
            raise InvalidToken("not a broker access token")
        claims = jwt.decode(
            token, broker_key.key, algorithms=[_JWT_ALG[broker_key.alg]], audience=issuer, issuer=issuer,
            options={"require": ["iss", "aud", "exp", "iat", "client_id", "consent_id", "cnf"], "verify_exp": False},
        )
        consent_id = uuid.UUID(str(claims["consent_id"]))
        jkt = claims["cnf"]["jkt"]
    except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
        raise InvalidToken(f"access token rejected: {exc}") from None
    expires_at = datetime.fromtimestamp(int(claims["exp"]), tz=now.tzinfo)
    if expires_at <= now:
        # checked here rather than by pyjwt so the injected clock decides, as everywhere else
        raise InvalidToken("access token expired")
    return AccessToken(consent_id, str(claims["client_id"]), str(jkt), expires_at,
                       list(claims.get("authorization_details") or []))
