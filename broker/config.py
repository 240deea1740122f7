"""Broker configuration, read once from the environment into a frozen dataclass.

Invariant: a `Config` that exists is complete and consistent; anything wrong stops the broker at start with a
message naming the variable, never later in a request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Config:
    database_url: str | None
    """None: start the embedded PostgreSQL under `state_dir`."""
    state_dir: Path
    host: str
    port: int
    public_url: str | None
    """External base URL (scheme://host[:port]) used to rebuild @target-uri behind a proxy; None: from the request."""
    signing_key_file: Path
    subject_key_file: Path
    registry_file: Path | None
    """Applied at start when set (the demo uses it); production applies with `registry apply`."""
    max_skew: float
    max_body: int
    log_format: str
    pool_min: int
    pool_max: int
    registry_poll: float
    """Seconds between registry version checks, in case a NOTIFY was missed during a reconnect."""

    @property
    def embedded(self) -> bool:
        return self.database_url is None


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def load_config(env: Mapping[str, str] | None = None, **overrides: object) -> Config:
    """Read `DLNUF_*` and `DATABASE_URL`; keyword overrides (from the command line) win."""
    env = os.environ if env is None else env
    state_dir = Path(env.get("DLNUF_STATE_DIR") or platformdirs.user_state_dir("dlnuf"))
    database_url = env.get("DATABASE_URL") or None
    if database_url is not None and not database_url.startswith(("postgres://", "postgresql://")):
        raise ConfigError("DATABASE_URL must be a postgresql:// URL")
    public_url = (env.get("DLNUF_PUBLIC_URL") or "").rstrip("/") or None
    if public_url is not None and not public_url.startswith(("http://", "https://")):
        raise ConfigError("DLNUF_PUBLIC_URL must start with http:// or https://")
    log_format = env.get("DLNUF_LOG_FORMAT") or "console"
    if log_format not in ("console", "json"):
        raise ConfigError("DLNUF_LOG_FORMAT must be 'console' or 'json'")
    registry = env.get("DLNUF_REGISTRY_FILE")
    values: dict[str, object] = dict(
        database_url=database_url,
        state_dir=state_dir,
        host=env.get("DLNUF_HOST") or "127.0.0.1",
        port=_int(env, "DLNUF_PORT", 8080, 0, 65535),
        public_url=public_url,
        signing_key_file=Path(env.get("DLNUF_SIGNING_KEY") or state_dir / "broker-signing-key.jwk"),
        subject_key_file=Path(env.get("DLNUF_SUBJECT_KEY") or state_dir / "subject-key"),
        registry_file=Path(registry) if registry else None,
        max_skew=_float(env, "DLNUF_MAX_SKEW", 60.0, 1.0, 3600.0),
        max_body=_int(env, "DLNUF_MAX_BODY", 64 * 1024, 1024, 16 * 1024 * 1024),
        log_format=log_format,
        pool_min=_int(env, "DLNUF_POOL_MIN", 2, 1, 100),
        pool_max=_int(env, "DLNUF_POOL_MAX", 10, 1, 200),
        registry_poll=_float(env, "DLNUF_REGISTRY_POLL", 5.0, 0.1, 3600.0),
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - set(Config.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown configuration: {', '.join(sorted(unknown))}")
    config = Config(**values)  # type: ignore[arg-type]
    if config.pool_min > config.pool_max:
        raise ConfigError("DLNUF_POOL_MIN must not exceed DLNUF_POOL_MAX")
    return config
