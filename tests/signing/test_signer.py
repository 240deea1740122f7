"""Every broker signature goes through `Signer.sign` (broker/signing/signer.py), so a key that never leaves an HSM
can sign: here a signer whose private half is out of reach (no `private_bytes`, not a `cryptography` key object)
signs RFC 9421 answers, JWTs (verified by PyJWT, which no one here wrote) and log checkpoints and notes, each
verified with the public key alone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.config import Config
from broker.signing import jose, messages
from broker.signing.keys import ECDSA_P256_SHA256, ED25519, InvalidKey, PrivateKey, sign_message
from broker.signing.plugin import PluggedKeys
from broker.signing.signer import Signer
from broker.tlog import checkpoint
from broker.tlog.checkpoint import NoteVerifier
from broker.tlog.log import NoteSigner
from tests.broker_harness import broker_config, start_broker
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml


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


# DLNUF_SIGNER_PLUGIN: the signers a plug-in hands the broker, one pair per state directory (one "HSM" per test)
_HSM: dict[str, tuple[FarAwaySigner, FarAwaySigner]] = {}


def plugged_keys(config: Config) -> PluggedKeys:
    response, log = _HSM.setdefault(str(config.state_dir), (FarAwaySigner(ECDSA_P256_SHA256), FarAwaySigner(ED25519)))
    return PluggedKeys(response=PrivateKey(kid="hsm-response", alg=ECDSA_P256_SHA256,
                                           private_key=response),  # type: ignore[arg-type]
                       log=log)


async def test_a_broker_signs_with_the_keys_of_its_signer_plugin(
    database_url: str, aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    paris = consumer()
    text = registry_toml([paris], provider_url=str(provider.make_url("")).rstrip("/"))
    config = broker_config(tmp_path, database_url, text, log_interval=0.05,
                           signer_plugin="tests.signing.test_signer:plugged_keys")
    h = await start_broker(aiohttp_client, config, paris)
    response, log = _HSM[str(config.state_dir)]
    answer = await h.exchange()
    assert answer.status == 200, answer.body
    await h.verify(answer)  # with the JWKS the broker serves: the plug-in's public key
    assert list(h.broker_keys) == ["hsm-response"]
    served = h.broker_keys["hsm-response"].key
    assert isinstance(served, ec.EllipticCurvePublicKey)
    assert served.public_numbers() == response.public_key().public_numbers()  # type: ignore[union-attr]
    assert response.calls  # the answer was signed through the plug-in's signer

    verifier = NoteVerifier.from_key(config.log_origin, log.public_key())  # type: ignore[arg-type]
    for _ in range(100):
        async with h.client.get("/v1/log/checkpoint") as resp:
            signed = await resp.text()
        if resp.status == 200 and checkpoint.verify_checkpoint(signed, [verifier]).size >= 1:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("no checkpoint of the entry signed by the plug-in's log key")
    assert log.calls
