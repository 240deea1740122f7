"""A Python consumer's exchange call on third-party code only: pyauth's http-message-signatures signs the request
(RFC 9421, with its own RFC 9530 Content-Digest), requests sends it, pyauth verifies the broker's answer against
the broker's JWKS, keys parsed by PyJWT. Synchronous, as such a consumer writes it: run it in a thread."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import jwt
import requests
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, MappingKeyResolver
from http_message_signatures.algorithms import ECDSA_P256_SHA256, ED25519

ALGORITHMS = {"Ed25519": ED25519, "P-256": ECDSA_P256_SHA256}


def signed_exchange(url: str, body: bytes, *, jwk: Mapping[str, Any], broker_jwks: Mapping[str, Any],
                    access_token: str | None = None, verify: str | bool = True,
                    tamper: bool = False) -> tuple[requests.Response, list[Any]]:
    """POST `body` to `url` signed with the private `jwk` (and its Bearer `access_token`, covered too); the
    response and pyauth's verification results (it raises `InvalidSignature` when the answer does not verify).
    `tamper` changes a byte of the body after signing."""
    private = jwt.PyJWK(dict(jwk)).key
    signer = HTTPMessageSigner(signature_algorithm=ALGORITHMS[jwk["crv"]],
                               key_resolver=MappingKeyResolver(public_keys={}, private_keys={jwk["kid"]: private}))
    headers = {"Content-Type": "application/json"}
    covered: tuple[str, ...] = ("@method", "@target-uri", "content-digest")
    if access_token is not None:
        headers["Authorization"] = f"Bearer {access_token}"
        covered += ("authorization",)
    prepared = requests.Request("POST", url, data=body, headers=headers).prepare()
    signer.sign(prepared, key_id=jwk["kid"], label="sig1", nonce=secrets.token_urlsafe(16), body=body,
                covered_component_ids=covered)
    if tamper:
        prepared.body = body[:-2] + (b"X" if body[-2:-1] != b"X" else b"Y") + body[-1:]
    with requests.Session() as http:
        http.verify = verify
        response = http.send(prepared, timeout=30)
    broker_keys = {k["kid"]: jwt.PyJWK(k).key for k in broker_jwks["keys"]}
    verifier = HTTPMessageVerifier(signature_algorithm=ED25519,
                                   key_resolver=MappingKeyResolver(public_keys=broker_keys, private_keys={}))
    results = verifier.verify(response, require_components=("@status", "content-digest"), body=response.content)
    return response, results
