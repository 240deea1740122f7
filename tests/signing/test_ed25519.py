"""Ed25519 through libsodium (`broker.signing.ed25519`) against RFC 8032's own vector and against OpenSSL (through
`cryptography`), code we did not write: the same signatures byte for byte, the same verdicts."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.signing import ed25519

# RFC 8032 section 7.1, TEST 1 (the empty message)
SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
SIGNATURE = bytes.fromhex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9"
                          "b46bd25bf5f0595bbe24655141438e7a100b")


def test_rfc8032_test_1() -> None:
    private = Ed25519PrivateKey.from_private_bytes(SECRET)
    assert private.public_key().public_bytes_raw() == PUBLIC
    assert ed25519.sign(private, b"") == SIGNATURE
    ed25519.verify(Ed25519PublicKey.from_public_bytes(PUBLIC), SIGNATURE, b"")


@settings(max_examples=200, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=2048), flip=st.integers(0, 511))
def test_same_signature_and_verdicts_as_openssl(seed: bytes, message: bytes, flip: int) -> None:
    private = Ed25519PrivateKey.from_private_bytes(seed)
    public = private.public_key()
    signature = ed25519.sign(private, message)
    assert signature == private.sign(message)  # deterministic: OpenSSL's very bytes
    ed25519.verify(public, signature, message)
    spoiled = bytearray(signature)
    spoiled[flip // 8] ^= 1 << (flip % 8)
    with pytest.raises(InvalidSignature):
        public.verify(bytes(spoiled), message)
    with pytest.raises(InvalidSignature):
        ed25519.verify(public, bytes(spoiled), message)
    with pytest.raises(InvalidSignature):
        ed25519.verify(public, signature, message + b"\x00")


@pytest.mark.parametrize("size", [0, 63, 65])
def test_a_signature_of_the_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(InvalidSignature):
        ed25519.verify(Ed25519PublicKey.from_public_bytes(PUBLIC), b"\x01" * size, b"")


def test_a_small_order_key_is_refused() -> None:
    # the identity point as a public key: every signature with R = identity and S = 0 "verifies" under a lax
    # check; libsodium refuses small-order keys, as the exchange path should
    identity = bytes([1]) + bytes(31)
    signature = identity + bytes(32)
    with pytest.raises(InvalidSignature):
        ed25519.verify(Ed25519PublicKey.from_public_bytes(identity), signature, b"anything")
