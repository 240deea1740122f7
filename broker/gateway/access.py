"""Who may call the gateway: the form service, and nobody else.

Whoever reaches the gateway signs with the organisation's key, so admission is the whole of the gateway's access
control. The listening address decides the rule (`GatewayConfig` refuses any other combination at start):

- a Unix socket (mode 0660) or a loopback address: the machine's own processes; a client secret, when configured,
  is required too;
- any other address: TLS, and a client certificate from the configured CA (mutual TLS), or the client secret.

The secret travels in `DLNUF-Gateway-Secret` (not `Authorization`, which carries the consent flow's access token to
the broker) and is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from broker.gateway.config import GatewayConfig
from broker.gateway.errors import CallerRejected
from broker.storage.secretfile import create_once

SECRET_HEADER = "DLNUF-Gateway-Secret"  # noqa: S105 - the name of a header, not a secret
CALLER = web.RequestKey("gateway_caller", str)


def load_or_create_client_secret(path: Path) -> str:
    """The client secret the form service must send, created (random, mode 0600) on first start."""
    secret = create_once(path, lambda: secrets.token_urlsafe(32).encode()).decode("utf-8").strip()
    if len(secret) < 16:
        raise ValueError(f"{path} must hold a secret of at least 16 characters")
    return secret


def _peer_subject(request: web.Request) -> str | None:
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    names = dict(item[0] for item in cert.get("subject", ()))
    return str(names.get("commonName") or names.get("organizationName") or "?")


def _is_loopback_peer(request: web.Request) -> bool:
    remote = request.remote
    if not remote:  # a Unix socket has no address
        return True
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class CallerPolicy:
    secret_digest: bytes | None
    mutual_tls: bool
    unix: bool

    @classmethod
    def of(cls, config: GatewayConfig, secret: str | None) -> CallerPolicy:
        digest = hashlib.sha256(secret.encode()).digest() if secret is not None else None
        return cls(digest, config.mutual_tls, config.unix_socket is not None)

    def admit(self, request: web.Request) -> str:
        """How the caller was admitted (for the record), or `CallerRejected`."""
        how = "unix" if self.unix else "loopback"
        if self.mutual_tls:
            # the TLS handshake already refused any certificate the CA did not issue
            subject = _peer_subject(request)
            if subject is None:
                raise CallerRejected("no client certificate")
            how = f"mtls:{subject}"
        elif self.secret_digest is None and not _is_loopback_peer(request):
            # belt and braces: without a secret the configuration only allows local listening
            raise CallerRejected(f"peer {request.remote} is not local")
        if self.secret_digest is not None:
            given = hashlib.sha256(request.headers.get(SECRET_HEADER, "").encode()).digest()
            if not hmac.compare_digest(given, self.secret_digest):
                raise CallerRejected("missing or wrong client secret")
            if not self.mutual_tls:
                how = "secret"
        return how
