"""Sealing personal data at rest: AES-256-GCM under a key the broker keeps beside its other secrets.

What is sealed is what the broker must be able to use again later on the citizen's behalf (the pivot identity
behind a periodic consent or a citizen session) but that must not sit readable in the database or its backups.
The associated data names what a ciphertext is for, so one sealed value cannot be replayed as another kind.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from adapters.identity import PivotIdentity
from adapters.subjects import FranceConnectSubject
from broker.storage.secretfile import create_once

CONSENT_SEAL = "dlnuf/consent-identity/v1"
SESSION_SEAL = "dlnuf/session-identity/v1"
_NONCE = 12
_VERSION = b"\x01"


class SealError(ValueError):
    """A sealed value does not open with this key and purpose."""


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the sealing key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> Sealer:
        """Load the key, creating it (mode 0600) on first use; every broker process shares the same file."""
        return cls(create_once(path, lambda: secrets.token_bytes(32)))

    def seal(self, plaintext: bytes, purpose: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, purpose.encode())

    def open(self, sealed: bytes, purpose: str) -> bytes:
        if len(sealed) < 1 + _NONCE + 16 or sealed[:1] != _VERSION:
            raise SealError("not a sealed value")
        try:
            return self._aead.decrypt(sealed[1:1 + _NONCE], sealed[1 + _NONCE:], purpose.encode())
        except InvalidTag:
            raise SealError("sealed value does not open with this key and purpose") from None

    def seal_identity(self, identity: PivotIdentity, purpose: str, *, france_connect_token: str | None = None,
                      ) -> bytes:
        """The identity alone (the first format, still read), or with the citizen's FranceConnect access token
        for providers' FranceConnect-mode endpoints."""
        if france_connect_token is None:
            return self.seal(orjson.dumps(identity.to_json()), purpose)
        return self.seal(orjson.dumps({"identity": identity.to_json(), "france_connect_token": france_connect_token}),
                         purpose)

    def _open_json(self, sealed: bytes, purpose: str) -> dict[str, Any]:
        opened = orjson.loads(self.open(sealed, purpose))
        if not isinstance(opened, dict):
            raise SealError("not a sealed identity")
        return opened if "identity" in opened else {"identity": opened}

    def open_identity(self, sealed: bytes, purpose: str) -> PivotIdentity:
        return PivotIdentity.from_json(self._open_json(sealed, purpose)["identity"])

    def open_france_connect(self, sealed: bytes, purpose: str) -> FranceConnectSubject | None:
        """The citizen as a FranceConnect subject; None when no FranceConnect access token was sealed with them
        (a login through another identity provider, or a value sealed before tokens were kept)."""
        opened = self._open_json(sealed, purpose)
        token = opened.get("france_connect_token")
        if not isinstance(token, str):
            return None
        return FranceConnectSubject(PivotIdentity.from_json(opened["identity"]), token)
