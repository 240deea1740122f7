"""The gateway's configuration, read once from `DLNUF_GATEWAY_*` into a frozen dataclass.

Invariant: a `GatewayConfig` that exists is complete and safe to serve; anything wrong, including a listening
address the form service alone could not be told apart on, stops the gateway at start with a message naming the
variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from broker.config import ConfigError

_SIRET = re.compile(r"^[0-9]{14}$")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    broker_url: str
    """The broker's base URL, as it signs and names itself (its DLNUF_PUBLIC_URL): also its OAuth issuer."""
    siret: str
    """The organisation whose key the gateway holds: the consumer the broker knows, and the OAuth client_id."""
    key_file: Path
    """The organisation's private JWK (mode 0600)."""
    state_dir: Path
    database_url: str | None
    """The record's database; None: an embedded PostgreSQL under `state_dir`."""
    host: str
    port: int
    unix_socket: Path | None
    """Listen on this Unix socket (mode 0660) instead of TCP."""
    client_secret_file: Path | None
    """A file holding the secret callers send in `DLNUF-Gateway-Secret`; created (random, 0600) if absent."""
    tls_cert: Path | None
    tls_key: Path | None
    tls_client_ca: Path | None
    """Mutual TLS: callers must present a certificate issued by this CA."""
    broker_jwks_file: Path | None
    """The broker's response keys, pinned (a JWKS file); None: fetched from the broker."""
    log_keys: tuple[str, ...]
    """The transparency log's verifier keys (C2SP note keys), pinned; empty: fetched from the broker's /v1/log."""
    broker_ca_file: Path | None
    """CA bundle for the broker's TLS certificate, when it is not in the system store."""
    timeout: float
    max_body: int
    max_skew: float
    """Seconds the broker's answer's `created` may differ from the gateway's clock."""
    log_format: str

    @property
    def local_only(self) -> bool:
        """Whether only processes of this machine can connect (a Unix socket, or a loopback address)."""
        return self.unix_socket is not None or is_loopback(self.host)

    @property
    def mutual_tls(self) -> bool:
        return self.tls_client_ca is not None

    def __post_init__(self) -> None:
        if not self.broker_url.startswith(("http://", "https://")) or self.broker_url.endswith("/"):
            raise ConfigError("DLNUF_GATEWAY_BROKER_URL must be an http(s) URL without a trailing slash")
        if not _SIRET.match(self.siret):
            raise ConfigError(f"DLNUF_GATEWAY_SIRET must be a SIRET (14 digits), got {self.siret!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("DLNUF_GATEWAY_TLS_CERT and DLNUF_GATEWAY_TLS_KEY go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("DLNUF_GATEWAY_TLS_CLIENT_CA needs DLNUF_GATEWAY_TLS_CERT and DLNUF_GATEWAY_TLS_KEY")
        if self.unix_socket is not None and self.tls_cert is not None:
            raise ConfigError("DLNUF_GATEWAY_UNIX_SOCKET is local: TLS is for a TCP address")
        if not self.local_only:
            # Off this machine, the form service must prove who it is, and a secret must not travel in clear.
            if self.tls_cert is None:
                raise ConfigError(f"DLNUF_GATEWAY_HOST {self.host!r} is not a loopback address: serve TLS "
                                  "(DLNUF_GATEWAY_TLS_CERT, DLNUF_GATEWAY_TLS_KEY) with DLNUF_GATEWAY_TLS_CLIENT_CA "
                                  "or DLNUF_GATEWAY_CLIENT_SECRET_FILE, or listen on loopback or a Unix socket")
            if not self.mutual_tls and self.client_secret_file is None:
                raise ConfigError(f"DLNUF_GATEWAY_HOST {self.host!r} is not a loopback address: callers must "
                                  "authenticate, set DLNUF_GATEWAY_TLS_CLIENT_CA or DLNUF_GATEWAY_CLIENT_SECRET_FILE")
        if not 0 < self.timeout <= 300:
            raise ConfigError("DLNUF_GATEWAY_TIMEOUT must be between 0 and 300 seconds")
        if self.log_format not in ("console", "json"):
            raise ConfigError("DLNUF_LOG_FORMAT must be 'console' or 'json'")


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {raw}")
    return value


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    return Path(raw) if raw else None


def load_gateway_config(env: Mapping[str, str] | None = None, **overrides: object) -> GatewayConfig:
    """Read `DLNUF_GATEWAY_*` (and `DLNUF_LOG_FORMAT`); keyword overrides (from the command line) win."""
    env = os.environ if env is None else env
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(GatewayConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown configuration: {', '.join(sorted(unknown))}")
    database_url = given.get("database_url", env.get("DLNUF_GATEWAY_DATABASE_URL") or None)
    if database_url is not None and not str(database_url).startswith(("postgres://", "postgresql://")):
        raise ConfigError("DLNUF_GATEWAY_DATABASE_URL must be a postgresql:// URL")
    values: dict[str, object] = dict(
        broker_url=(env.get("DLNUF_GATEWAY_BROKER_URL") or "").rstrip("/"),
        siret=env.get("DLNUF_GATEWAY_SIRET") or "",
        key_file=_path(env, "DLNUF_GATEWAY_KEY"),
        state_dir=Path(env.get("DLNUF_GATEWAY_STATE_DIR") or platformdirs.user_state_dir("dlnuf-gateway")),
        database_url=database_url,
        host=env.get("DLNUF_GATEWAY_HOST") or "127.0.0.1",
        port=int(_number(env, "DLNUF_GATEWAY_PORT", 8090, 0, 65535)),
        unix_socket=_path(env, "DLNUF_GATEWAY_UNIX_SOCKET"),
        client_secret_file=_path(env, "DLNUF_GATEWAY_CLIENT_SECRET_FILE"),
        tls_cert=_path(env, "DLNUF_GATEWAY_TLS_CERT"),
        tls_key=_path(env, "DLNUF_GATEWAY_TLS_KEY"),
        tls_client_ca=_path(env, "DLNUF_GATEWAY_TLS_CLIENT_CA"),
        broker_jwks_file=_path(env, "DLNUF_GATEWAY_BROKER_JWKS"),
        log_keys=tuple(k for k in re.split(r"[\s,]+", env.get("DLNUF_GATEWAY_LOG_KEY") or "") if k),
        broker_ca_file=_path(env, "DLNUF_GATEWAY_BROKER_CA"),
        timeout=_number(env, "DLNUF_GATEWAY_TIMEOUT", 30.0, 0.1, 300.0),
        max_body=int(_number(env, "DLNUF_GATEWAY_MAX_BODY", 65536, 1024, 16 * 1024 * 1024)),
        max_skew=_number(env, "DLNUF_GATEWAY_MAX_SKEW", 60.0, 1.0, 3600.0),
        log_format=env.get("DLNUF_LOG_FORMAT") or "console",
    )
    values.update(given)
    for name, variable in (("broker_url", "DLNUF_GATEWAY_BROKER_URL"), ("siret", "DLNUF_GATEWAY_SIRET"),
                           ("key_file", "DLNUF_GATEWAY_KEY")):
        if not values[name]:
            raise ConfigError(f"{variable} is missing")
    return GatewayConfig(**values)  # type: ignore[arg-type]
