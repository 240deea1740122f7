"""The one door every signature of the broker goes through: `Signer`.

The broker signs with two keys: the response key (RFC 9421 answers and every other response, access tokens,
consent receipts, webhook requests) and the log's note key (checkpoints, inclusion promises). Both are held as a
`Signer`, and every signing operation calls `Signer.sign` and nothing else: `keys.sign_message` (RFC 9421),
`jose.sign_jwt` (JWS), `tlog.checkpoint.sign_checkpoint` and `tlog.log.NoteSigner.sign_note` (signed notes). So a
key that never leaves a hardware security module plugs in by implementing these two methods, for example over
PKCS#11 (python-pkcs11: `CKM_EDDSA` for Ed25519, `CKM_ECDSA` over a SHA-256 digest for P-256, whose output is
already r||s), and passing it where a key file's key goes (`keys.PrivateKey(kid=..., alg=..., private_key=signer)`,
`tlog.log.NoteSigner(name, signer)`).

A key read from a file is a `cryptography` private key object: Ed25519's already is a `Signer` (its `sign` returns
the raw 64-byte signature both formats use); a P-256 key is adapted by `keys.sign_message`, which turns its DER
signature into r||s.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


@runtime_checkable
class Signer(Protocol):
    """A private key the broker signs with, wherever it lives."""

    def public_key(self) -> Ed25519PublicKey | ec.EllipticCurvePublicKey:
        """Its public key: Ed25519, or EC P-256."""
        ...

    def sign(self, message: bytes) -> bytes:
        """The signature of `message`: Ed25519's 64 bytes, or ECDSA P-256 with SHA-256 as 64 bytes r||s (the form
        RFC 9421 and JOSE both use)."""
        ...

