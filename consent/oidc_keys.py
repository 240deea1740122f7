"""The citizen login's own keys, as a relying party: the key signing its ``private_key_jwt`` assertions at the OP's
token endpoint, and the keys the OP encrypts id_tokens and userinfo to (FranceConnect+). Both are created once in
the state directory when the configuration needs them (or read from where the operator put them), and their public
halves are published at ``/citizen/jwks.json``, the ``jwks_uri`` to register at the OP.

Invariants: a file is created whole or not at all, mode 0600 (`broker.storage.secretfile.create_once`); a
decryption key set holds private asymmetric keys for encryption only (``use`` ``enc``), each with a ``kid``; what is
published never holds a private member.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey

from broker.signing.keys import ECDSA_P256_SHA256, PrivateKey, generate_private_jwk, private_key_from_jwk
from broker.storage.secretfile import create_once


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names it and says why, for the operator."""


def load_or_create_client_key(path: Path) -> PrivateKey:
    """The private_key_jwt signing key (a P-256 private JWK, ES256), generated if the file is absent."""
    raw = create_once(path, lambda: json.dumps(generate_private_jwk(ECDSA_P256_SHA256), indent=2).encode())
    try:
        return private_key_from_jwk(json.loads(raw))
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a usable private JWK: {exc}") from None


def _new_decryption_keys() -> bytes:
    # one of each family, so the operator registers whichever the OP encrypts with (RSA-OAEP-256, ECDH-ES)
    rsa = RSAKey.generate_key(2048, {"use": "enc", "alg": "RSA-OAEP-256"}, private=True, auto_kid=True)
    ec = ECKey.generate_key("P-256", {"use": "enc", "alg": "ECDH-ES"}, private=True, auto_kid=True)
    return json.dumps({"keys": [rsa.as_dict(private=True), ec.as_dict(private=True)]}, indent=2).encode()


def load_or_create_decryption_keys(path: Path) -> KeySet:
    """The JWE decryption keys (a private JWK Set), generated if the file is absent."""
    raw = create_once(path, _new_decryption_keys)
    try:
        data = json.loads(raw)
        keys = data["keys"]
        if not isinstance(keys, list) or not keys:
            raise ValueError("no keys")
        for jwk in keys:
            if jwk.get("kty") not in ("RSA", "EC") or "d" not in jwk or not jwk.get("kid"):
                raise ValueError("each key must be a private RSA or EC JWK with a kid")
            if jwk.get("use", "enc") != "enc":
                raise ValueError(f"key {jwk['kid']} is not for encryption")
        return KeySet.import_key_set({"keys": [{**jwk, "use": "enc"} for jwk in keys]})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyFileError(f"{path}: not a usable private JWK Set for decryption: {exc}") from None


def public_jwks(client_key: PrivateKey | None, decryption_keys: KeySet | None) -> dict[str, Any]:
    """What the OP needs of us: the signing key's public half (ES256), the encryption keys' public halves."""
    keys: list[dict[str, Any]] = []
    if client_key is not None:
        keys.append({**client_key.public_jwk(), "alg": "ES256" if client_key.alg == ECDSA_P256_SHA256 else "EdDSA"})
    if decryption_keys is not None:
        keys.extend(dict(k.as_dict(private=False)) for k in decryption_keys)
    return {"keys": keys}
