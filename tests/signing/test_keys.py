"""JWK <-> key objects: RFC 8037 and RFC 9421 Appendix B.1 vectors, round trips, and every refusal."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.signing import keys
from broker.signing.keys import InvalidKey, PrivateKey, PublicKey

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "rfc9421"

# RFC 8037 Appendix A.1 / A.3 / A.4
RFC8037_JWK = {
    "kty": "OKP", "crv": "Ed25519",
    "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
}
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC8037_PAYLOAD = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
RFC8037_SIGNATURE = "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"

# RFC 9421 Appendix B.1.3 and B.1.4: the same keys as the PEM files of the vector set
RFC9421_P256_JWK = {
    "kty": "EC", "crv": "P-256", "kid": "test-key-ecc-p256",
    "x": "qIVYZVLCrPZHGHjP17CTW0_-D9Lfw0EkjqF7xB4FivA", "y": "Mc4nN9LTDOBhfoUeg8Ye9WedFRhnZXZJA12Qp0zZ6F0",
    "d": "UpuF81l-kOxbjf7T4mNSv0r5tN67Gim7rnf6EFpcYDs",
}
RFC9421_ED25519_JWK = {
    "kty": "OKP", "crv": "Ed25519", "kid": "test-key-ed25519",
    "x": "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs", "d": "n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU",
}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def public_part(jwk: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in jwk.items() if k != "d"}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# ---------------------------------------------------------------------------------------------------------------
# Published vectors
# ---------------------------------------------------------------------------------------------------------------


def test_rfc8037_thumbprint() -> None:
    assert keys.jwk_thumbprint(RFC8037_JWK) == RFC8037_THUMBPRINT


def test_rfc8037_signature_is_byte_identical() -> None:
    key = keys.private_key_from_jwk({**RFC8037_JWK, "kid": "a"})
    assert b64url(key.sign(RFC8037_PAYLOAD)) == RFC8037_SIGNATURE


def test_rfc9421_ed25519_jwk_is_the_pem_key() -> None:
    pem = serialization.load_pem_private_key((VECTORS / "test-key-ed25519.key").read_bytes(), password=None)
    assert isinstance(pem, Ed25519PrivateKey)
    key = keys.private_key_from_jwk(RFC9421_ED25519_JWK)
    assert isinstance(key.private_key, Ed25519PrivateKey)
    assert key.private_key.private_bytes_raw() == pem.private_bytes_raw()
    assert PrivateKey(kid="test-key-ed25519", alg="ed25519", private_key=pem).to_jwk() == \
        {**RFC9421_ED25519_JWK, "use": "sig"}


def test_rfc9421_p256_jwk_is_the_pem_key() -> None:
    pem = serialization.load_pem_public_key((VECTORS / "test-key-ecc-p256.pub").read_bytes())
    assert isinstance(pem, ec.EllipticCurvePublicKey)
    public = keys.public_key_from_jwk(public_part(RFC9421_P256_JWK), owner="o")
    assert isinstance(public.key, ec.EllipticCurvePublicKey)
    assert public.key.public_numbers() == pem.public_numbers()
    private = keys.private_key_from_jwk(RFC9421_P256_JWK)
    assert private.to_jwk() == {**RFC9421_P256_JWK, "use": "sig"}


# ---------------------------------------------------------------------------------------------------------------
# Generation and round trips
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ed25519", "ecdsa-p256-sha256"])
def test_generate_round_trip_sign_verify(alg: str) -> None:
    private = keys.generate_private_key(alg)
    assert private.alg == alg
    assert private.kid == keys.jwk_thumbprint(private.public_jwk())
    again = keys.private_key_from_jwk(private.to_jwk())
    public = keys.public_key_from_jwk(private.public_jwk(), owner="13002526500013")
    assert (public.kid, public.alg, public.owner) == (private.kid, alg, "13002526500013")
    public.verify(again.sign(b"message"), b"message")
    with pytest.raises(InvalidSignature):
        public.verify(again.sign(b"message"), b"messagE")


def test_ecdsa_signature_is_raw_r_s() -> None:
    private = keys.generate_private_key("ecdsa-p256-sha256", kid="k")
    signature = private.sign(b"m")
    assert len(signature) == 64
    public = private.public_key(owner="o")
    public.verify(signature, b"m")
    assert isinstance(private.private_key, ec.EllipticCurvePrivateKey)
    der = private.private_key.sign(b"m", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public.verify(der, b"m")  # DER is not the RFC 9421 encoding
    with pytest.raises(InvalidSignature):
        public.verify(signature[:63], b"m")


def test_generate_private_jwk_and_public_jwk_of() -> None:
    private = keys.generate_private_jwk("ecdsa-p256-sha256", "commune-paris-2026-01")
    assert private["kid"] == "commune-paris-2026-01" and "d" in private
    public = keys.public_jwk_of(private)
    assert public == {k: v for k, v in private.items() if k != "d"}
    assert keys.jwk_algorithm(public) == "ecdsa-p256-sha256"
    assert keys.jwk_algorithm(private) == "ecdsa-p256-sha256"


def test_generate_refuses_unknown_algorithm() -> None:
    with pytest.raises(InvalidKey):
        keys.generate_private_key("rsa-pss-sha512")


def test_algorithm_of() -> None:
    assert keys.algorithm_of(Ed25519PrivateKey.generate()) == "ed25519"
    assert keys.algorithm_of(ec.generate_private_key(ec.SECP256R1()).public_key()) == "ecdsa-p256-sha256"
    with pytest.raises(InvalidKey):
        keys.algorithm_of(ec.generate_private_key(ec.SECP384R1()))


def test_private_key_repr_hides_the_key() -> None:
    private = keys.generate_private_key()
    assert private.to_jwk()["d"] not in repr(private)


# ---------------------------------------------------------------------------------------------------------------
# Key lifetime
# ---------------------------------------------------------------------------------------------------------------


def test_nbf_exp_become_validity_window() -> None:
    jwk = {**public_part(RFC9421_ED25519_JWK), "nbf": int(T0.timestamp()), "exp": int(T0.timestamp()) + 3600}
    key = keys.public_key_from_jwk(jwk, owner="o")
    assert (key.not_before, key.not_after) == (T0, T0 + timedelta(hours=1))
    assert not key.is_valid_at(T0 - timedelta(seconds=1))
    assert key.is_valid_at(T0)
    assert key.is_valid_at(T0 + timedelta(seconds=3599))
    assert not key.is_valid_at(T0 + timedelta(hours=1))
    assert key.to_jwk() == {**jwk, "use": "sig"}


def test_arguments_take_precedence_over_jwk_members() -> None:
    jwk = {k: v for k, v in public_part(RFC9421_ED25519_JWK).items() if k != "kid"}
    key = keys.public_key_from_jwk({**jwk, "nbf": 0}, owner="o", kid="from-registry", not_before=T0,
                                   not_after=T0 + timedelta(days=1))
    assert (key.kid, key.not_before, key.not_after) == ("from-registry", T0, T0 + timedelta(days=1))


def test_kid_argument_must_agree_with_jwk_kid() -> None:
    with pytest.raises(InvalidKey, match="contradicts"):
        keys.public_key_from_jwk(public_part(RFC9421_ED25519_JWK), owner="o", kid="other")


def test_kid_required_somewhere() -> None:
    jwk = {k: v for k, v in public_part(RFC9421_ED25519_JWK).items() if k != "kid"}
    with pytest.raises(InvalidKey, match="kid"):
        keys.public_key_from_jwk(jwk, owner="o")


def test_public_key_checks_its_fields() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(InvalidKey):
        PublicKey(kid="k", alg="ed25519", owner="o", key=key, not_before=datetime(2026, 1, 1))
    with pytest.raises(InvalidKey):
        PublicKey(kid="k", alg="ed25519", owner="o", key=key, not_before=T0, not_after=T0)
    with pytest.raises(InvalidKey):
        PublicKey(kid="", alg="ed25519", owner="o", key=key)
    with pytest.raises(InvalidKey):
        PublicKey(kid="k", alg="ecdsa-p256-sha256", owner="o", key=key)
    with pytest.raises(InvalidKey):
        PublicKey(kid="k", alg="rsa-pss-sha512", owner="o", key=key)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        PrivateKey(kid="k", alg="ed25519", private_key=key)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# JWK refusals
# ---------------------------------------------------------------------------------------------------------------

ED = public_part(RFC9421_ED25519_JWK)
EC = public_part(RFC9421_P256_JWK)


@pytest.mark.parametrize(("jwk", "why"), [
    ({"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "k"}, "unsupported key type"),
    ({**EC, "crv": "P-384"}, "unsupported key type"),
    ({**ED, "crv": "X25519"}, "unsupported key type"),
    ({**ED, "kty": "EC"}, "unsupported key type"),
    ({k: v for k, v in ED.items() if k != "x"}, "'x'"),
    ({k: v for k, v in EC.items() if k != "y"}, "'y'"),
    ({**ED, "x": ED["x"] + "="}, "unpadded base64url"),
    ({**ED, "x": base64.b64encode(base64.urlsafe_b64decode(ED["x"] + "=")).decode()}, "base64url"),
    ({**ED, "x": ED["x"][:-4]}, "exactly 32 bytes"),
    ({**ED, "x": ED["x"][:-1] + "t"}, "exactly 32 bytes"),  # non-zero trailing bits: a second spelling
    ({**ED, "x": 42}, "base64url"),
    ({**EC, "y": b64url((int.from_bytes(base64.urlsafe_b64decode(EC["y"] + "="), "big") ^ 1).to_bytes(32, "big"))},
     "not on P-256"),
    ({**ED, "alg": "ES256"}, "contradicts"),
    ({**EC, "alg": "EdDSA"}, "contradicts"),
    ({**ED, "use": "enc"}, "use"),
    ({**ED, "key_ops": ["sign"]}, "key_ops"),
    ({**ED, "d": RFC9421_ED25519_JWK["d"]}, "private member"),
    ({**ED, "nbf": "2026-01-01"}, "seconds since the epoch"),
    ({**ED, "exp": True}, "seconds since the epoch"),
    ({**ED, "nbf": 2000, "exp": 1000}, "not_before must be earlier"),
    ({**ED, "kid": ""}, "kid"),
])
def test_public_jwk_refused(jwk: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidKey, match=why):
        keys.public_key_from_jwk(jwk, owner="o")


def test_jose_alg_names_accepted() -> None:
    keys.public_key_from_jwk({**ED, "alg": "EdDSA"}, owner="o")
    keys.public_key_from_jwk({**ED, "alg": "Ed25519"}, owner="o")
    keys.public_key_from_jwk({**EC, "alg": "ES256", "key_ops": ["verify"]}, owner="o")


def test_private_jwk_refusals() -> None:
    with pytest.raises(InvalidKey, match="does not match"):
        keys.private_key_from_jwk({**RFC9421_ED25519_JWK, "x": RFC8037_JWK["x"]})
    other = keys.generate_private_key("ecdsa-p256-sha256").to_jwk()
    with pytest.raises(InvalidKey, match="do not match"):
        keys.private_key_from_jwk({**RFC9421_P256_JWK, "d": other["d"]})
    with pytest.raises(InvalidKey, match="out of range"):
        keys.private_key_from_jwk({**RFC9421_P256_JWK, "d": b64url(bytes(32))})
    with pytest.raises(InvalidKey, match="out of range"):
        keys.private_key_from_jwk({**RFC9421_P256_JWK, "d": b64url(b"\xff" * 32)})
    with pytest.raises(InvalidKey, match="'d'"):
        keys.private_key_from_jwk(public_part(RFC9421_P256_JWK))
    with pytest.raises(InvalidKey, match="key_ops"):
        keys.private_key_from_jwk({**RFC9421_P256_JWK, "key_ops": ["verify"]})


def test_jwks() -> None:
    a, b = keys.generate_private_key(), keys.generate_private_key("ecdsa-p256-sha256")
    found = keys.public_keys_from_jwks({"keys": [a.public_jwk(), b.public_jwk()]}, owner="o")
    assert [k.kid for k in found] == [a.kid, b.kid]
    with pytest.raises(InvalidKey, match="duplicate"):
        keys.public_keys_from_jwks({"keys": [a.public_jwk(), a.public_jwk()]}, owner="o")
    with pytest.raises(InvalidKey):
        keys.public_keys_from_jwks({"keys": {}}, owner="o")
    with pytest.raises(InvalidKey):
        keys.public_keys_from_jwks({"keys": ["x"]}, owner="o")


def test_thumbprint_refuses_unknown_kty() -> None:
    with pytest.raises(InvalidKey):
        keys.jwk_thumbprint({"kty": "oct", "k": "AA"})
    with pytest.raises(InvalidKey):
        keys.jwk_thumbprint({"kty": "OKP", "crv": "Ed25519"})


# ---------------------------------------------------------------------------------------------------------------
# The broker's own key file
# ---------------------------------------------------------------------------------------------------------------


def test_broker_key_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "broker-signing-key.jwk"
    first = keys.load_or_create_broker_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.alg == "ed25519"
    second = keys.load_or_create_broker_key(path)
    assert second.to_jwk() == first.to_jwk()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_broker_key_file_must_be_a_private_jwk(tmp_path: Path) -> None:
    path = tmp_path / "key.jwk"
    path.write_text("not json")
    with pytest.raises(InvalidKey):
        keys.load_or_create_broker_key(path)
    path.write_text(json.dumps([1]))
    with pytest.raises(InvalidKey):
        keys.load_or_create_broker_key(path)
    path.write_text(json.dumps(ED))
    with pytest.raises(InvalidKey):
        keys.load_or_create_broker_key(path)


def test_equality_semantics() -> None:
    private = keys.generate_private_key()
    assert private.public_key(owner="o") == private.public_key(owner="o")
    assert hash(private.public_key(owner="o")) == hash(private.public_key(owner="o"))
    impostor = keys.generate_private_key(kid=private.kid)
    assert private.public_key(owner="o") != impostor.public_key(owner="o")  # same kid, other key material
    assert private != keys.private_key_from_jwk(private.to_jwk())  # private keys: identity only
