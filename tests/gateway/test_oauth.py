"""The gateway's client authentication, against the standards rather than one broker's habits: RFC 8414 discovery,
the issuer as the assertion's single audience (draft-ietf-oauth-rfc7523bis), the algorithm the server lists.

The assertions are checked by hand (base64url, JSON, Ed25519 and ECDSA verification from `cryptography`), not by
the JWT library that made them."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from broker.gateway.errors import AnswerUnverified, NotOffered
from broker.gateway.oauth import ServerMetadata, _parse_metadata, _without_metadata, client_assertion, metadata_url
from broker.signing.keys import PrivateKey, generate_private_key

ISSUER = "https://dlnuf.example.gouv.fr"
METADATA = {"issuer": ISSUER, "token_endpoint": ISSUER + "/oauth/token",
            "pushed_authorization_request_endpoint": ISSUER + "/oauth/par",
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA", "Ed25519"]}


def test_the_metadata_address_follows_rfc_8414() -> None:
    # RFC 8414 §3.1's own example, and an issuer without a path
    assert metadata_url("https://example.com/issuer1") == \
        "https://example.com/.well-known/oauth-authorization-server/issuer1"
    assert metadata_url(ISSUER) == ISSUER + "/.well-known/oauth-authorization-server"


@pytest.mark.parametrize(("change", "message"), [
    ({"issuer": ISSUER + "/"}, "names issuer"),
    ({"issuer": "https://attacker.example"}, "names issuer"),
    ({"token_endpoint": None}, "no token_endpoint"),
    ({"token_endpoint_auth_methods_supported": ["client_secret_basic"]}, "private_key_jwt"),
], ids=["trailing-slash", "other-issuer", "no-token-endpoint", "no-private-key-jwt"])
def test_metadata_that_cannot_be_used(change: dict[str, Any], message: str) -> None:
    with pytest.raises(AnswerUnverified, match=message):
        _parse_metadata(ISSUER, {k: v for k, v in {**METADATA, **change}.items() if v is not None})


@pytest.mark.parametrize(("algs", "alg", "expected"), [
    (["ES256", "EdDSA", "Ed25519"], "ed25519", "Ed25519"),
    (["EdDSA"], "ed25519", "EdDSA"),
    (None, "ed25519", "EdDSA"),
    (["ES256", "EdDSA"], "ecdsa-p256-sha256", "ES256"),
])
def test_the_algorithm_is_one_the_server_lists(algs: list[str] | None, alg: str, expected: str) -> None:
    metadata = _parse_metadata(ISSUER, {**METADATA, "token_endpoint_auth_signing_alg_values_supported": algs})
    key = generate_private_key(alg, kid="k")  # type: ignore[arg-type]
    assert metadata.algorithm(key) == expected


def test_no_common_algorithm_is_said() -> None:
    metadata = _parse_metadata(ISSUER, {**METADATA, "token_endpoint_auth_signing_alg_values_supported": ["RS256"]})
    with pytest.raises(AnswerUnverified, match="accepts none of Ed25519, EdDSA"):
        metadata.algorithm(generate_private_key("ed25519", kid="k"))


def test_pushed_authorization_requests_only_when_offered() -> None:
    assert _parse_metadata(ISSUER, METADATA).endpoint("par") == ISSUER + "/oauth/par"
    without = {k: v for k, v in METADATA.items() if k != "pushed_authorization_request_endpoint"}
    with pytest.raises(NotOffered):
        _parse_metadata(ISSUER, without).endpoint("par")
    with pytest.raises(NotOffered):
        _without_metadata(ISSUER).endpoint("par")


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _open(token: str, key: PrivateKey) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, once its signature verified with the key's public half."""
    header64, claims64, signature64 = token.split(".")
    signing_input, signature = f"{header64}.{claims64}".encode(), _b64(signature64)
    public = key.private_key.public_key()
    if isinstance(public, Ed25519PublicKey):
        public.verify(signature, signing_input)
    else:
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    return json.loads(_b64(header64)), json.loads(_b64(claims64))


@pytest.mark.parametrize("alg", ["ed25519", "ecdsa-p256-sha256"])
def test_the_assertion_names_the_issuer_alone(alg: str) -> None:
    key = generate_private_key(alg, kid="lyon-2026")  # type: ignore[arg-type]
    metadata = _parse_metadata(ISSUER, METADATA)
    token, jti = client_assertion(key, client_id="21690123100011", metadata=metadata, now=1_800_000_000)
    header, claims = _open(token, key)
    assert header == {"alg": "Ed25519" if alg == "ed25519" else "ES256", "kid": "lyon-2026", "typ": "JWT"}
    assert claims == {"iss": "21690123100011", "sub": "21690123100011", "aud": ISSUER, "iat": 1_800_000_000,
                      "exp": 1_800_000_060, "jti": jti}
    assert client_assertion(key, client_id="21690123100011", metadata=metadata)[1] != jti  # fresh each time


def test_without_metadata_the_token_endpoint_is_the_audience() -> None:
    key = generate_private_key("ed25519", kid="k")
    metadata: ServerMetadata = _without_metadata(ISSUER)
    header, claims = _open(client_assertion(key, client_id="21690123100011", metadata=metadata)[0], key)
    assert header["alg"] == "EdDSA" and claims["aud"] == ISSUER + "/oauth/token"
    assert not metadata.discovered
