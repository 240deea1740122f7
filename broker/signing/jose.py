"""JOSE for the broker: compact JWS and JWT (RFC 7515, 7519) and JWE decryption (RFC 7516), on joserfc.

Who uses it: the broker signs its access tokens (RFC 9068) and consent receipts with its key; it verifies the
consumers' client assertions (RFC 7523) with their registry keys, and the citizen login verifies (and, for
FranceConnect+, first decrypts) the OpenID Provider's id_token and userinfo with the OP's published keys.

Invariants:

- The algorithm always comes from an allow-list the caller gives, checked before any key is used: ``none`` and the
  HMAC algorithms are in no list of the broker, so a token cannot choose how it is checked. For the broker's and the
  consumers' keys the list comes from the key itself (`algorithms_for`): an Ed25519 key verifies ``Ed25519``
  (RFC 9864) or ``EdDSA`` (RFC 8037), a P-256 key ``ES256``.
- Only `JoseError` escapes a function that reads untrusted input; its message is for the server log.
- Claims are not judged here: callers check ``iss``, ``aud``, times and the rest on their own injectable clock.
"""

from __future__ import annotations

import base64
import binascii
import warnings
from collections.abc import Collection, Mapping
from typing import Any, Final

import orjson
from joserfc import errors as jose_errors
from joserfc import jwe, jws
from joserfc.jwk import ECKey, JWKRegistry, Key, KeySet, OKPKey
from joserfc.jws import JWSRegistry

from broker.signing.keys import ED25519, PrivateKey, PublicKey, sign_message

__all__ = ["JoseError", "algorithms_for", "decrypt", "import_jwk", "peek", "sign_jwt", "signing_alg", "verify"]

# What each of the broker's key algorithms may sign with, by JOSE name.
_BY_KEY: Final[Mapping[str, frozenset[str]]] = {ED25519: frozenset({"EdDSA", "Ed25519"}),
                                                 "ecdsa-p256-sha256": frozenset({"ES256"})}
_NEVER: Final = frozenset({"none", "HS256", "HS384", "HS512"})


class JoseError(ValueError):
    """A token that is malformed, signed or encrypted with something not allowed, or that does not verify."""


def algorithms_for(key: PublicKey | PrivateKey) -> frozenset[str]:
    return _BY_KEY[key.alg]


def signing_alg(key: PrivateKey | PublicKey) -> str:
    """The ``alg`` the broker writes with `key` (and expects on what it wrote itself). For Ed25519 it is still
    ``EdDSA``: RFC 9864 deprecates the name, but common verifiers (PyJWT among them) do not know ``Ed25519`` yet,
    and a receipt must verify anywhere."""
    return "EdDSA" if key.alg == ED25519 else "ES256"


def _jose_key(key: PublicKey | PrivateKey) -> Key:
    if isinstance(key, PrivateKey):
        raw: Any = key.private_key
    else:
        raw = key.key
    return OKPKey.import_key(raw) if key.alg == ED25519 else ECKey.import_key(raw)


class _Registry(JWSRegistry):
    """joserfc's registry, quiet about RFC 9864's deprecation of ``EdDSA``: consumers' libraries still send it, and
    a warning per token would flood the log (and fail the tests, which turn warnings into errors)."""

    def get_alg(self, name: str) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=jose_errors.SecurityWarning)
            return super().get_alg(name)


def _registry(algorithms: Collection[str]) -> _Registry:
    allowed = frozenset(algorithms)
    if not allowed or allowed & _NEVER:
        raise ValueError(f"not an allow-list the broker may use: {sorted(allowed)}")
    # unknown header members are harmless unless marked critical, which joserfc still checks
    return _Registry(algorithms=sorted(allowed), strict_check_header=False)


def sign_jwt(claims: Mapping[str, Any], key: PrivateKey, *, typ: str | None,
             header: Mapping[str, Any] | None = None) -> str:
    """A compact JWS of `claims` (a JWT) by `key`, with its ``kid``, and ``typ`` when given."""
    protected: dict[str, Any] = {"alg": signing_alg(key), "kid": key.kid, **(header or {})}
    if typ is not None:
        protected["typ"] = typ
    # RFC 9864: "Ed25519" names the same signature as the deprecated "EdDSA" (clients choose it from metadata)
    if protected["alg"] not in ((signing_alg(key), "Ed25519") if key.alg == ED25519 else (signing_alg(key),)):
        raise ValueError(f"alg {protected['alg']!r} is not what key {key.kid!r} signs")
    # Serialised here rather than by joserfc, so that the signature is the key's `Signer`'s (broker/signing/
    # signer.py: an HSM's key has no private half to hand to joserfc). RFC 7515 §7.1: the signing input is
    # BASE64URL(header) "." BASE64URL(payload); EdDSA signs it as is, ES256's signature is r||s (RFC 7518 §3.4),
    # which is what sign_message returns. joserfc (and PyJWT, in the tests) verify what this writes.
    signing_input = _b64url(orjson.dumps(protected)) + b"." + _b64url(orjson.dumps(dict(claims)))
    return (signing_input + b"." + _b64url(sign_message(key.private_key, signing_input))).decode("ascii")


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64(part: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise JoseError(f"{what} is not base64url") from None


def _object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise JoseError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise JoseError(f"{what} is not a JSON object")
    return value


def peek(token: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The protected header of a compact JWS or JWE, and a JWS's payload as a JSON object (None for a JWE), with
    nothing verified: for choosing a key or a client, never for trusting."""
    parts = token.split(".")
    if len(parts) not in (3, 5):
        raise JoseError("not a compact JWS nor JWE")
    header = _object(_b64(parts[0], "header"), "header")
    if len(parts) == 5:
        return header, None
    return header, _object(_b64(parts[1], "payload"), "payload")


def verify(token: str, key: PublicKey | Key | KeySet, *, algorithms: Collection[str]) -> tuple[dict[str, Any],
                                                                                              dict[str, Any]]:
    """The header and the claims of a compact JWS whose signature verifies with `key` under an algorithm of
    `algorithms`; raise `JoseError` otherwise. A `KeySet` is searched by ``kid``."""
    jose_key = _jose_key(key) if isinstance(key, PublicKey) else key
    try:
        obj = jws.deserialize_compact(token, jose_key, registry=_registry(algorithms))
    except jose_errors.JoseError as exc:
        raise JoseError(f"{type(exc).__name__}: {exc}") from None
    except (ValueError, TypeError) as exc:  # a malformed part joserfc did not anticipate
        raise JoseError(f"malformed JWS: {type(exc).__name__}") from None
    return dict(obj.headers()), _object(obj.payload or b"", "payload")


def decrypt(token: str, keys: Key | KeySet, *, algorithms: Collection[str],
            encryptions: Collection[str]) -> tuple[dict[str, Any], bytes]:
    """The header and the plaintext of a compact JWE for one of `keys`, whose ``alg`` is in `algorithms` and
    ``enc`` in `encryptions`; raise `JoseError` otherwise (not a JWE, another algorithm, a key that does not open
    it, a tampered ciphertext)."""
    header, _ = peek(token)
    if header.get("alg") not in set(algorithms) or header.get("enc") not in set(encryptions):
        raise JoseError(f"JWE alg {header.get('alg')!r} / enc {header.get('enc')!r} is not allowed")
    if "zip" in header:  # a compressed plaintext is a decompression bomb in waiting, and nobody needs it here
        raise JoseError("compressed JWE refused")
    # an OP may replicate claims in the header (RFC 7519 §5.3: oidc-provider puts iss and aud there), harmless
    # unless marked critical, which joserfc still checks
    registry = jwe.JWERegistry(algorithms=[*algorithms, *encryptions], strict_check_header=False)
    try:
        obj = jwe.decrypt_compact(token, keys, registry=registry)
    except jose_errors.JoseError as exc:
        raise JoseError(f"{type(exc).__name__}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise JoseError(f"malformed JWE: {type(exc).__name__}") from None
    return dict(obj.headers()), obj.plaintext or b""


def import_jwk(jwk: Mapping[str, Any]) -> Key:
    """A foreign public (or our own private) asymmetric JWK as a joserfc key; an ``oct`` key is refused, so a
    symmetric secret can never stand where a public key is expected."""
    if jwk.get("kty") not in ("RSA", "EC", "OKP"):
        raise JoseError(f"unsupported JWK kty {jwk.get('kty')!r}")
    try:
        return JWKRegistry.import_key(dict(jwk))
    except (jose_errors.JoseError, ValueError, TypeError) as exc:
        raise JoseError(f"unusable JWK: {type(exc).__name__}: {exc}") from None
