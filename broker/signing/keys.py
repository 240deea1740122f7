"""Signing keys: JWK (RFC 7517, 7518, 8037) <-> key objects, for the two algorithms the broker accepts.

Invariant: a `PublicKey` or `PrivateKey` holds an already parsed key whose type matches its `alg` (Ed25519 for
`ed25519`, P-256 for `ecdsa-p256-sha256`). A key's algorithm comes from its JWK (`kty`/`crv`), never from a message,
so a signer cannot choose how the broker checks its signature. Keys are parsed once, when loaded, never per request.

Key lifetime: a public JWK may carry `nbf` and `exp` (seconds since the epoch, the members OpenID Federation uses
for historical keys); they become `not_before` / `not_after`, and the key is valid for `not_before <= t < not_after`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from broker.signing import ed25519
from broker.signing.signer import Signer
from broker.storage.secretfile import create_once

Algorithm: TypeAlias = Literal["ed25519", "ecdsa-p256-sha256"]
ED25519: Final = "ed25519"
ECDSA_P256_SHA256: Final = "ecdsa-p256-sha256"
ALGORITHMS: Final[frozenset[str]] = frozenset({ED25519, ECDSA_P256_SHA256})

PublicKeyObject: TypeAlias = Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKeyObject: TypeAlias = Ed25519PrivateKey | ec.EllipticCurvePrivateKey

# JOSE names (RFC 7518, RFC 8037, RFC 9864) a JWK may give in its optional "alg" member.
_JOSE_ALGS: Final[dict[str, frozenset[str]]] = {
    ED25519: frozenset({"EdDSA", "Ed25519"}),
    ECDSA_P256_SHA256: frozenset({"ES256"}),
}
_P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")


class InvalidKey(ValueError):
    """A JWK or key object the broker cannot use. The message says why, for the operator."""


def _check_key_object(key: object, alg: str, *, private: bool) -> None:
    if private and not isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        # a key that stays elsewhere (an HSM's): its public half says what it is
        if not isinstance(key, Signer):
            raise InvalidKey(f"not a private key or a Signer: {type(key).__name__}")
        _check_key_object(key.public_key(), alg, private=False)
        return
    if alg == ED25519:
        expected: type = Ed25519PrivateKey if private else Ed25519PublicKey
        if not isinstance(key, expected):
            raise InvalidKey(f"alg {alg} needs an Ed25519 key, got {type(key).__name__}")
    elif alg == ECDSA_P256_SHA256:
        expected = ec.EllipticCurvePrivateKey if private else ec.EllipticCurvePublicKey
        if not isinstance(key, expected) or not isinstance(key.curve, ec.SECP256R1):
            raise InvalidKey(f"alg {alg} needs a P-256 key, got {type(key).__name__}")
    else:
        raise InvalidKey(f"unsupported algorithm {alg!r}")


def _check_aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise InvalidKey(f"{name} must be timezone-aware")


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A consumer's (or the broker's) verification key, as the key registry hands it to `verify_request`."""

    kid: str
    alg: Algorithm
    owner: str  # organisation the key speaks for (SIRET for administrations)
    key: PublicKeyObject = field(repr=False, hash=False)  # compared by value, but key objects are unhashable
    not_before: datetime | None = None
    not_after: datetime | None = None

    def __post_init__(self) -> None:
        if not self.kid:
            raise InvalidKey("kid is empty")
        _check_key_object(self.key, self.alg, private=False)
        _check_aware("not_before", self.not_before)
        _check_aware("not_after", self.not_after)
        if self.not_before is not None and self.not_after is not None and self.not_before >= self.not_after:
            raise InvalidKey("not_before must be earlier than not_after")

    def is_valid_at(self, when: datetime) -> bool:
        if self.not_before is not None and when < self.not_before:
            return False
        return self.not_after is None or when < self.not_after

    def verify(self, signature: bytes, message: bytes) -> None:
        """Return None if `signature` is this key's signature of `message`, else raise `InvalidSignature`.

        ECDSA signatures are the raw 64-byte r||s of RFC 9421 §3.3.4, not DER.
        """
        key = self.key
        if isinstance(key, Ed25519PublicKey):
            ed25519.verify(key, signature, message)
            return
        if len(signature) != 64:
            raise InvalidSignature("ecdsa-p256-sha256 signatures are 64 bytes")
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        key.verify(der, message, _ECDSA_SHA256)

    def to_jwk(self) -> dict[str, Any]:
        jwk = _public_members(self.key)
        jwk["kid"] = self.kid
        jwk["use"] = "sig"
        if self.not_before is not None:
            jwk["nbf"] = int(self.not_before.timestamp())
        if self.not_after is not None:
            jwk["exp"] = int(self.not_after.timestamp())
        return jwk


@dataclass(frozen=True, slots=True, eq=False)  # private key objects compare by identity, so do these
class PrivateKey:
    """A signing key with its key id: the broker's response key, or a consumer's key in the SDK."""

    kid: str
    alg: Algorithm
    private_key: PrivateKeyObject | Signer = field(repr=False)
    """A key object read from a file, or a `Signer` whose key stays where it is (an HSM): every signature goes
    through `sign_message`."""

    def __post_init__(self) -> None:
        if not self.kid:
            raise InvalidKey("kid is empty")
        _check_key_object(self.private_key, self.alg, private=True)

    def sign(self, message: bytes) -> bytes:
        return sign_message(self.private_key, message)

    def public_key(
        self, *, owner: str, not_before: datetime | None = None, not_after: datetime | None = None
    ) -> PublicKey:
        return PublicKey(
            kid=self.kid, alg=self.alg, owner=owner, key=self.private_key.public_key(),
            not_before=not_before, not_after=not_after,
        )

    def public_jwk(self) -> dict[str, Any]:
        jwk = _public_members(self.private_key.public_key())
        jwk["kid"] = self.kid
        jwk["use"] = "sig"
        return jwk

    def to_jwk(self) -> dict[str, Any]:
        """The private JWK (with "d"). Handle it as a secret."""
        jwk = self.public_jwk()
        key = self.private_key
        if not isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise InvalidKey(f"key {self.kid!r} is held by a Signer and cannot be exported")
        if isinstance(key, Ed25519PrivateKey):
            jwk["d"] = _b64url(key.private_bytes_raw())
        else:
            jwk["d"] = _b64url(key.private_numbers().private_value.to_bytes(32, "big"))
        return jwk


# The broker's own response-signing key is an ordinary private key with its kid.
BrokerKey: TypeAlias = PrivateKey


def sign_message(private_key: PrivateKeyObject | Signer, message: bytes) -> bytes:
    """Sign per RFC 9421 §3.3 (and JOSE, RFC 7518 §3.4, RFC 8037): Ed25519 as is, ECDSA P-256 with SHA-256 as raw
    64-byte r||s (not DER). The one place a broker key signs (broker/signing/signer.py)."""
    if isinstance(private_key, Ed25519PrivateKey):
        return ed25519.sign(private_key, message)  # a key file's key: through libsodium (ed25519.py says why)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private_key.sign(message, _ECDSA_SHA256))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return private_key.sign(message)  # a Signer's (already in this form)


def algorithm_of(key: PublicKeyObject | PrivateKeyObject) -> Algorithm:
    """The RFC 9421 algorithm a key object implies, or `InvalidKey` for a key the broker does not accept."""
    if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        return ED25519
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and \
            isinstance(key.curve, ec.SECP256R1):
        return ECDSA_P256_SHA256
    raise InvalidKey(f"unsupported key {type(key).__name__}: need Ed25519 or P-256")


def generate_private_key(alg: str = ED25519, *, kid: str | None = None) -> PrivateKey:
    """A fresh key; `kid` defaults to the RFC 7638 thumbprint of the public JWK."""
    key: PrivateKeyObject
    if alg == ED25519:
        key = Ed25519PrivateKey.generate()
    elif alg == ECDSA_P256_SHA256:
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise InvalidKey(f"unsupported algorithm {alg!r}")
    if kid is None:
        kid = jwk_thumbprint(_public_members(key.public_key()))
    return PrivateKey(kid=kid, alg=algorithm_of(key), private_key=key)


def generate_private_jwk(alg: str = ED25519, kid: str | None = None) -> dict[str, Any]:
    """`keys generate`: a fresh private JWK (with "kid" and "d"). Handle it as a secret."""
    return generate_private_key(alg, kid=kid).to_jwk()


def public_jwk_of(private_jwk: Mapping[str, object]) -> dict[str, Any]:
    """The public JWK (kty, crv, x[, y], kid, use) of a private JWK, which is checked first."""
    return private_key_from_jwk(private_jwk).public_jwk()


def jwk_algorithm(jwk: Mapping[str, object]) -> Algorithm:
    """The RFC 9421 algorithm a JWK's kty/crv imply, after checking the public members; raises `InvalidKey`.

    A private member "d" is not looked at: callers that must refuse private keys check for it themselves.
    """
    return _parse_public(jwk)[0]


def public_key_from_jwk(
    jwk: Mapping[str, object], *, owner: str, kid: str | None = None,
    not_before: datetime | None = None, not_after: datetime | None = None,
) -> PublicKey:
    """Parse a public JWK (private members are refused: a key registry must never hold them).

    `kid`, `not_before` and `not_after` come from the arguments when given (the registry keeps them beside the
    JWK), else from the JWK's "kid", "nbf" and "exp". A "kid" in the JWK must agree with the `kid` argument.
    """
    if "d" in jwk:
        raise InvalidKey("a public JWK must not contain the private member 'd'")
    alg, key = _parse_public(jwk)
    _check_usage(jwk, "verify")
    if kid is None:
        kid = _kid(jwk)
    elif "kid" in jwk and jwk["kid"] != kid:
        raise InvalidKey(f"JWK kid {jwk['kid']!r} contradicts kid {kid!r}")
    return PublicKey(
        kid=kid, alg=alg, owner=owner, key=key,
        not_before=not_before if not_before is not None else _numeric_date(jwk, "nbf"),
        not_after=not_after if not_after is not None else _numeric_date(jwk, "exp"),
    )


def public_keys_from_jwks(jwks: Mapping[str, object], *, owner: str) -> list[PublicKey]:
    """Parse a JWK Set ({"keys": [...]}); every key must be usable, carry a kid, and key ids be unique."""
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise InvalidKey("a JWK Set has a 'keys' array")
    out: list[PublicKey] = []
    seen: set[str] = set()
    for jwk in keys:
        if not isinstance(jwk, Mapping):
            raise InvalidKey("each member of 'keys' is a JSON object")
        key = public_key_from_jwk(jwk, owner=owner)
        if key.kid in seen:
            raise InvalidKey(f"duplicate kid {key.kid!r}")
        seen.add(key.kid)
        out.append(key)
    return out


def private_key_from_jwk(jwk: Mapping[str, object]) -> PrivateKey:
    """Parse a private JWK (with "kid"); the public members must match the private scalar."""
    alg, public = _parse_public(jwk)
    _check_usage(jwk, "sign")
    key: PrivateKeyObject
    if alg == ED25519:
        key = Ed25519PrivateKey.from_private_bytes(_b64url_member(jwk, "d", 32))
        derived = key.public_key().public_bytes_raw()
        if not isinstance(public, Ed25519PublicKey) or derived != public.public_bytes_raw():
            raise InvalidKey("'x' does not match 'd'")
    else:
        d = int.from_bytes(_b64url_member(jwk, "d", 32), "big")
        if not 0 < d < _P256_ORDER:
            raise InvalidKey("'d' is out of range for P-256")
        key = ec.derive_private_key(d, ec.SECP256R1())
        if not isinstance(public, ec.EllipticCurvePublicKey) or \
                key.public_key().public_numbers() != public.public_numbers():
            raise InvalidKey("'x'/'y' do not match 'd'")
    return PrivateKey(kid=_kid(jwk), alg=alg, private_key=key)


def load_or_create_broker_key(path: Path) -> BrokerKey:
    """The broker's response-signing key from its private JWK file, generated (Ed25519, mode 0600) if absent.

    Several broker processes may start at once: `broker.secretfile.create_once` makes one of them win whole.
    """
    try:
        raw = create_once(path, lambda: json.dumps(generate_private_jwk(ED25519), indent=2).encode())
    except OSError as exc:
        raise InvalidKey(f"{path}: cannot create or read the broker key: {exc}") from None
    try:
        jwk = json.loads(raw)
    except ValueError as exc:
        raise InvalidKey(f"{path}: cannot read the broker key: {exc}") from None
    if not isinstance(jwk, dict):
        raise InvalidKey(f"{path}: the broker key must be a JWK object")
    return private_key_from_jwk(jwk)


def jwk_thumbprint(jwk: Mapping[str, object]) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url: the required members only, sorted, without whitespace."""
    kty = jwk.get("kty")
    if kty == "OKP":
        names: tuple[str, ...] = ("crv", "kty", "x")
    elif kty == "EC":
        names = ("crv", "kty", "x", "y")
    else:
        raise InvalidKey(f"unsupported kty {kty!r}")
    members = {n: jwk.get(n) for n in names}
    if not all(isinstance(v, str) for v in members.values()):
        raise InvalidKey("thumbprint members must be strings")
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _parse_public(jwk: Mapping[str, object]) -> tuple[Algorithm, PublicKeyObject]:
    kty, crv = jwk.get("kty"), jwk.get("crv")
    alg: Algorithm
    key: PublicKeyObject
    if kty == "OKP" and crv == "Ed25519":
        alg = ED25519
        raw = _b64url_member(jwk, "x", 32)
        try:
            key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise InvalidKey("'x' is not an Ed25519 public key") from None
    elif kty == "EC" and crv == "P-256":
        alg = ECDSA_P256_SHA256
        x = int.from_bytes(_b64url_member(jwk, "x", 32), "big")
        y = int.from_bytes(_b64url_member(jwk, "y", 32), "big")
        try:
            key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        except ValueError:
            raise InvalidKey("the point (x, y) is not on P-256") from None
    else:
        raise InvalidKey(f"unsupported key type kty={kty!r} crv={crv!r} (need OKP/Ed25519 or EC/P-256)")
    jose_alg = jwk.get("alg")
    if jose_alg is not None and jose_alg not in _JOSE_ALGS[alg]:
        raise InvalidKey(f"JWK alg {jose_alg!r} contradicts kty={kty} crv={crv}")
    return alg, key


def _check_usage(jwk: Mapping[str, object], operation: str) -> None:
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise InvalidKey(f"JWK use {use!r} is not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or operation not in ops):
        raise InvalidKey(f"JWK key_ops does not allow {operation!r}")


def _kid(jwk: Mapping[str, object]) -> str:
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidKey("JWK needs a non-empty string 'kid'")
    return kid


def _numeric_date(jwk: Mapping[str, object], member: str) -> datetime | None:
    value = jwk.get(member)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 253_402_300_799:
        raise InvalidKey(f"JWK {member!r} must be seconds since the epoch")
    return datetime.fromtimestamp(value, UTC)


def _b64url_member(jwk: Mapping[str, object], member: str, length: int) -> bytes:
    value = jwk.get(member)
    if not isinstance(value, str) or _B64URL_RE.fullmatch(value) is None or len(value) % 4 == 1:
        raise InvalidKey(f"JWK {member!r} must be unpadded base64url")
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    # Re-encoding catches non-zero trailing bits, so one key has exactly one JWK spelling (and one thumbprint).
    if len(raw) != length or _b64url(raw) != value:
        raise InvalidKey(f"JWK {member!r} must encode exactly {length} bytes")
    return raw


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _public_members(key: PublicKeyObject) -> dict[str, Any]:
    if isinstance(key, Ed25519PublicKey):
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(key.public_bytes_raw())}
    numbers = key.public_numbers()
    return {
        "kty": "EC", "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")), "y": _b64url(numbers.y.to_bytes(32, "big")),
    }
