"""A quota as the registry states it: at most `limit` exchanges per `window` seconds.

In the registry file, on an organisation (the consumer's quota, for all its habilitations together) or on a
habilitation (on top of its consumer's): `quota = { limit = 1200, window = 60 }`. The broker's default for
consumers the registry says nothing about is `DLNUF_QUOTA_DEFAULT` (broker/config.py), written `1200/60`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_LIMIT = 10_000_000
MAX_WINDOW = 86_400


class QuotaError(ValueError):
    """A quota that is not `limit` (1 to 10,000,000) per `window` (1 to 86,400 seconds)."""


@dataclass(frozen=True, slots=True)
class Quota:
    limit: int
    window: int
    """Seconds; windows are fixed, aligned on multiples of `window` since the epoch."""

    def __post_init__(self) -> None:
        for name, value, high in (("limit", self.limit, MAX_LIMIT), ("window", self.window, MAX_WINDOW)):
            if type(value) is not int or not 1 <= value <= high:
                raise QuotaError(f"quota {name} must be an integer from 1 to {high:,}, got {value!r}")

    def to_json(self) -> dict[str, int]:
        return {"limit": self.limit, "window": self.window}

    @classmethod
    def from_json(cls, raw: Any) -> Quota:
        if not isinstance(raw, Mapping) or set(raw) != {"limit", "window"}:
            raise QuotaError("quota must be a table { limit = <exchanges>, window = <seconds> }")
        return cls(raw["limit"], raw["window"])

    def __str__(self) -> str:
        return f"{self.limit}/{self.window}s"

