"""Ed25519 through libsodium (PyNaCl): the exchange path verifies one signature and makes two (the answer, the
log's inclusion promise), and libsodium does each about twice (verify) and 1.5 times (sign) as fast as OpenSSL
through `cryptography` on this machine (benchmarks/exchange.py's commit says how much).

Keys stay `cryptography` objects everywhere else (parsing, JWK, thumbprints); only the arithmetic moves. Ed25519 is
deterministic (RFC 8032), so a signature made here is byte for byte the one OpenSSL makes (tests/signing prove it
on the RFC 8032 vectors and on random keys and messages); libsodium's verification is, if anything, stricter
(it also refuses small-order keys and non-canonical points). Failures raise `cryptography`'s `InvalidSignature`,
as before, so callers do not change.
"""

from __future__ import annotations

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_SIZE = 64


# libsodium's form of the keys this process signs with (the broker's answer key, the log's note key, a consumer's
# key in the SDK): reading them out of OpenSSL costs about a fifth of a signature. Keyed by the key object itself
# (hashed by identity); bounded, for processes that sign with many keys (tests).
_SECRETS: dict[Ed25519PrivateKey, bytes] = {}
_MAX_SECRETS = 64


def sign(private_key: Ed25519PrivateKey, message: bytes) -> bytes:
    """The RFC 8032 signature of `message`."""
    secret = _SECRETS.get(private_key)
    if secret is None:
        if len(_SECRETS) >= _MAX_SECRETS:
            _SECRETS.clear()
        # libsodium's secret key is the 32-byte seed followed by the public key
        secret = _SECRETS[private_key] = private_key.private_bytes_raw() + private_key.public_key().public_bytes_raw()
    signed: bytes = nacl.bindings.crypto_sign(message, secret)
    return signed[:SIGNATURE_SIZE]


def verify(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    """Return None if `signature` is the key's signature of `message`, else raise `InvalidSignature`."""
    if len(signature) != SIGNATURE_SIZE:
        raise InvalidSignature("an Ed25519 signature is 64 bytes")
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key.public_bytes_raw())
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise InvalidSignature("the Ed25519 signature does not verify") from None
