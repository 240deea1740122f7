"""Every broker signature goes through `Signer.sign` (broker/signing/signer.py), so a key that never leaves an HSM
can sign: here a signer whose private half is out of reach (no `private_bytes`, not a `cryptography` key object)
signs RFC 9421 answers, JWTs (verified by PyJWT, which no one here wrote) and log checkpoints and notes, each
verified with the public key alone."""

from __future__ import annotations

from datetime import UTC, datetime

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.signing import jose, messages
from broker.signing.keys import ECDSA_P256_SHA256, ED25519, InvalidKey, PrivateKey, sign_message
from broker.signing.signer import Signer
from broker.tlog import checkpoint
from broker.tlog.log import NoteSigner


class FarAwaySigner:
    """Stands where an HSM session would: the private key is captured in a closure this class never exposes, and
    ECDSA comes back as r||s, as PKCS#11's CKM_ECDSA returns it."""

    def __init__(self, alg: str) -> None:
        if alg == ED25519:
            key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey = Ed25519PrivateKey.generate()
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        self._public = key.public_key()
        self._sign = lambda message: sign_message(key, message)
        self.calls: list[bytes] = []

    def public_key(self) -> Ed25519PublicKey | ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, message: bytes) -> bytes:
        self.calls.append(message)
        signature: bytes = self._sign(message)
        return signature


@pytest.mark.parametrize("alg", [ED25519, ECDSA_P256_SHA256])
def test_a_response_key_held_by_a_signer_signs_answers_and_tokens(alg: str) -> None:
    signer = FarAwaySigner(alg)
    assert isinstance(signer, Signer)
    key = PrivateKey(kid="hsm-1", alg=alg, private_key=signer)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey, match="cannot be exported"):
        key.to_jwk()

    now = datetime.now(UTC)
    headers = {"Content-Type": "application/json"}
    signed = messages.sign_response(status=200, headers=headers, body=b"{}", request=None, private_key=key, now=now)
    public = key.public_key(owner="broker")
    messages.verify_response(status=200, headers={**headers, **signed}, body=b"{}", request_headers={},
                             lookup_key={"hsm-1": public}.get, now=now, bound=False)
    assert len(signer.calls) == 1

    token = jose.sign_jwt({"sub": "x", "iat": int(now.timestamp())}, key, typ="at+jwt")
    assert len(signer.calls) == 2
    pem = signer.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = jwt.decode(token, pem, algorithms=["EdDSA" if alg == ED25519 else "ES256"])
    assert claims["sub"] == "x"
    assert jwt.get_unverified_header(token) == {"alg": jose.signing_alg(key), "kid": "hsm-1", "typ": "at+jwt"}
    # and joserfc, the broker's own verifier, agrees
    jose.verify(token, public, algorithms=jose.algorithms_for(public))


def test_a_signer_of_the_wrong_algorithm_is_refused() -> None:
    with pytest.raises(InvalidKey, match="P-256"):
        PrivateKey(kid="k", alg=ECDSA_P256_SHA256, private_key=FarAwaySigner(ED25519))  # type: ignore[arg-type]
    with pytest.raises(InvalidKey, match="not a private key or a Signer"):
        PrivateKey(kid="k", alg=ED25519, private_key=object())  # type: ignore[arg-type]


def test_the_log_key_held_by_a_signer_signs_checkpoints_and_notes() -> None:
    signer = FarAwaySigner(ED25519)
    note = NoteSigner("dlnuf.test/log", signer)
    signed = note.sign_checkpoint(3, bytes(32))
    found = checkpoint.verify_checkpoint(signed, [note.verifier], origin="dlnuf.test/log")
    assert found.size == 3
    promise = note.sign_note("dlnuf.org/inclusion-promise/v1\nentry\n")
    assert len(signer.calls) == 2
    text = checkpoint.open_note(promise, [note.verifier])
    assert text.startswith("dlnuf.org/inclusion-promise/v1\n")
    with pytest.raises(checkpoint.InvalidKeyError, match="Ed25519"):
        NoteSigner("dlnuf.test/log", FarAwaySigner(ECDSA_P256_SHA256)).sign_checkpoint(1, bytes(32))
