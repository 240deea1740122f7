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

from broker.signing import jose
from broker.signing.keys import PrivateKey, PublicKey, jwk_thumbprint

ACCESS_TOKEN_TTL = timedelta(minutes=10)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
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
        header, _ = jose.peek(assertion)
    except jose.JoseError:
        raise OAuthError("invalid_client", "client_assertion is not a JWT", status=401) from None
    kid = header.get("kid")
    key = lookup_key(kid) if isinstance(kid, str) else None
    if key is None or key.owner != client_id:
        raise OAuthError("invalid_client", "unknown client key", status=401)
    if not key.is_valid_at(now):
        raise OAuthError("invalid_client", "client key not valid now", status=401)
    try:
        _, claims = jose.verify(assertion, key, algorithms=jose.algorithms_for(key))
    except jose.JoseError as exc:
        raise OAuthError("invalid_client", f"client_assertion rejected: {exc}", status=401) from None
    if not all(claims.get(c) for c in ("iss", "sub", "aud", "exp", "jti")):
        raise OAuthError("invalid_client", "client_assertion lacks iss, sub, aud, exp or jti", status=401)
    aud = claims["aud"]
    if claims["iss"] != client_id or claims["sub"] != client_id:
        raise OAuthError("invalid_client", "client_assertion iss and sub must be the client", status=401)
    if token_endpoint not in (aud if isinstance(aud, list) else [aud]):
        raise OAuthError("invalid_client", "client_assertion aud is not the token endpoint", status=401)
    if isinstance(claims["exp"], bool) or not isinstance(claims["exp"], int | float):
        raise OAuthError("invalid_client", "client_assertion exp is not a number", status=401)
    exp = datetime.fromtimestamp(int(claims["exp"]), tz=now.tzinfo)
    if exp + timedelta(seconds=_LEEWAY) <= now:
        raise OAuthError("invalid_client", "client_assertion expired", status=401)
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
        consent_id = uuid.UUID(str(claims["consent_id"]))
        jkt = claims["cnf"]["jkt"]
        int(claims["iat"])
    except (jose.JoseError, ValueError, KeyError, TypeError) as exc:
        raise InvalidToken(f"access token rejected: {exc}") from None
    expires_at = datetime.fromtimestamp(int(claims["exp"]), tz=now.tzinfo)
    if expires_at <= now:
        # checked here, not by the JOSE layer, so the injected clock decides, as everywhere else
        raise InvalidToken("access token expired")
    return AccessToken(consent_id, str(claims["client_id"]), str(jkt), expires_at,
                       list(claims.get("authorization_details") or []))
