"""Client authentication of the consent flow's token and PAR endpoints: RFC 7523 ``private_key_jwt``, signed by
one of the organisation keys the registry already holds for the client.

What standard clients send unmodified is accepted, and nothing weaker:

- ``aud``: the broker's issuer identifier (what draft-ietf-oauth-rfc7523bis recommends and openid-client sends),
  the URL of the endpoint called (RFC 7523, what Authlib sends), or the token endpoint (RFC 9126 §2 lets a PAR
  client use it); as a string or in an array. An operator may narrow it to the issuer alone, as a string
  (`single_audience`, what FAPI 2.0 requires against audience injection);
- ``typ``: absent, ``JWT``, or ``client-authentication+jwt`` (rfc7523bis). Any other type (an access token's
  ``at+jwt``, a receipt) is refused: a JWT made for another purpose is not a client assertion;
- ``alg``: ``Ed25519`` (RFC 9864, openid-client) or ``EdDSA`` (RFC 8037) for an Ed25519 key, ``ES256`` for a P-256
  key; never ``none`` nor HMAC, checked before any key is looked at;
- ``kid``: names one of the client's keys; when absent (Authlib sends none), each of the client's currently valid
  keys is tried, so that a client need not know the broker wants one;
- lifetime: ``exp`` at most `max_lifetime` ahead (the operator's setting; the default, 3600 s, is Authlib's own),
  and a ``jti`` never seen before with that key, remembered until the assertion expires.

Invariant: `verify_client_assertion` returns a client id and the key that signed, only for an assertion whose every
check passed; the nonce (``jti``) is claimed last, after the signature verified, so that unauthenticated traffic
cannot fill the nonce store. Refusals are `ClientAuthFailed`: a description a client can act on when the fault is
one of policy (audience, lifetime, type, algorithm), a bare "client authentication failed" when it is about keys or
signatures; the full reason is for the server log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from broker.signing import jose
from broker.signing.keys import PublicKey
from consent.tokens import OAuthError

ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TYP: Final = "client-authentication+jwt"
ALGORITHMS: Final = ("Ed25519", "EdDSA", "ES256")
"""Advertised in the metadata, Ed25519 first (RFC 9864's fully specified name)."""
LEEWAY: Final = timedelta(seconds=30)
"""Clock difference tolerated between a client and the broker."""
MAX_KEYS_TRIED: Final = 8
"""Without a kid, at most this many keys are tried: an organisation rotating keys holds two or three."""
_FAILED: Final = "client authentication failed"


class ClientAuthFailed(OAuthError):
    """``invalid_client``: `description` is for the client, `reason` for the server log."""

    def __init__(self, description: str, reason: str | None = None) -> None:
        super().__init__("invalid_client", description)
        self.reason = reason or description


def _typ_ok(typ: object) -> bool:
    if typ is None:
        return True
    if not isinstance(typ, str):
        return False
    # RFC 7515 §4.1.9: "application/" may be omitted, and media types compare case-insensitively
    value = typ.lower().removeprefix("application/")
    return value in ("jwt", TYP)


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClientAuthFailed(f"client_assertion {name} must be a number")
    return float(value)


def verify_assertion_claims(claims: Mapping[str, Any], *, client_id: str, audiences: Collection[str],
                            max_lifetime: timedelta, now: datetime, single_audience: bool = False) -> datetime:
    """The expiry of a signature-verified assertion whose claims are acceptable; raise `ClientAuthFailed`."""
    # 1. from the client, about the client (RFC 7523 §3, points 1 and 2)
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise ClientAuthFailed("client_assertion iss and sub must both be the client_id")
    # 2. for us: the issuer identifier or the endpoint (point 3)
    aud = claims.get("aud")
    named = [aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []
    if single_audience and not isinstance(aud, str):  # FAPI 2.0: the issuer, as a string, and nothing else
        raise ClientAuthFailed("client_assertion aud must be the issuer identifier, as a string")
    if not set(named) & set(audiences):
        raise ClientAuthFailed("client_assertion aud must be the issuer identifier or the endpoint URL",
                               f"aud {aud!r}, expected one of {sorted(audiences)}")
    # 3. fresh, and short-lived enough for its jti to be remembered until it expires (point 4)
    t = now.timestamp()
    exp = _number(claims, "exp")
    if exp is None:
        raise ClientAuthFailed("client_assertion needs exp")
    if exp + LEEWAY.total_seconds() <= t:
        raise ClientAuthFailed("client_assertion expired")
    if exp - t > (max_lifetime + LEEWAY).total_seconds():
        raise ClientAuthFailed(f"client_assertion lives too long: exp at most {int(max_lifetime.total_seconds())} s "
                               "ahead")
    for name in ("nbf", "iat"):
        value = _number(claims, name)
        if value is not None and value > t + LEEWAY.total_seconds():
            raise ClientAuthFailed(f"client_assertion {name} is in the future")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 1 <= len(jti) <= 256:
        raise ClientAuthFailed("client_assertion needs a jti (a string of at most 256 characters)")
    return datetime.fromtimestamp(exp, tz=now.tzinfo)


async def verify_client_assertion(
    form: Mapping[str, str], *, audiences: Collection[str], keys_of: Callable[[str], Sequence[PublicKey]],
    claim_jti: Callable[[str, str, datetime], Awaitable[bool]], max_lifetime: timedelta, now: datetime,
    single_audience: bool = False,
) -> tuple[str, PublicKey]:
    """The client id and the key that signed the form's ``client_assertion``; raise `ClientAuthFailed`."""
    # 1. private_key_jwt, and only it (RFC 6749 §2.3: one method per request; the caller refuses an
    #    Authorization header beside it)
    if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
        raise ClientAuthFailed("private_key_jwt client authentication is required (client_assertion_type "
                               f"{ASSERTION_TYPE})")
    assertion = form["client_assertion"]
    try:
        header, claims = jose.peek(assertion)
    except jose.JoseError as exc:
        raise ClientAuthFailed("client_assertion is not a JWT", str(exc)) from None
    if claims is None:
        raise ClientAuthFailed("client_assertion must be a signed JWT, not an encrypted one")
    # 2. which client: the assertion's iss, which a client_id parameter, when sent, must repeat (RFC 7521 §4.2)
    client_id = claims.get("iss")
    if not isinstance(client_id, str) or not client_id:
        raise ClientAuthFailed("client_assertion needs iss")
    if form.get("client_id") not in (None, client_id):
        raise ClientAuthFailed("client_id differs from the client_assertion's iss")
    # 3. its type and algorithm, from our lists, before any key is touched
    if not _typ_ok(header.get("typ")):
        raise ClientAuthFailed(f"client_assertion typ must be absent, JWT or {TYP}", f"typ {header.get('typ')!r}")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise ClientAuthFailed(f"client_assertion alg must be one of {', '.join(ALGORITHMS)}", f"alg {alg!r}")
    # 4. the client's keys that may have signed it: live, of that algorithm, the one named by kid if any
    kid = header.get("kid")
    candidates = [k for k in keys_of(client_id)
                  if k.is_valid_at(now) and alg in jose.algorithms_for(k) and (kid is None or k.kid == kid)]
    if not candidates:
        raise ClientAuthFailed(_FAILED, f"client {client_id!r} has no live {alg} key" +
                               (f" with kid {kid!r}" if kid is not None else ""))
    # 5. the signature, by one of them
    key, verified = None, None
    for candidate in candidates[:MAX_KEYS_TRIED]:
        try:
            _, verified = jose.verify(assertion, candidate, algorithms={alg})
        except jose.JoseError:
            continue
        key = candidate
        break
    if key is None or verified is None:
        raise ClientAuthFailed(_FAILED, f"signature does not verify with {len(candidates)} key(s) of {client_id}")
    # 6. the claims
    exp = verify_assertion_claims(verified, client_id=client_id, audiences=audiences, max_lifetime=max_lifetime,
                                  now=now, single_audience=single_audience)
    # 7. never seen before with this key (RFC 7523 §3 point 7), remembered until it could no longer be accepted
    if not await claim_jti(key.kid, "jti:" + verified["jti"], exp + LEEWAY):
        raise ClientAuthFailed(_FAILED, f"jti replayed by {client_id}")
    return client_id, key
