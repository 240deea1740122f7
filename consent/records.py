"""Consent records, after ISO/IEC TS 27560: who (controller) may have what (data categories = fields) from which
provider, for which purpose, on which basis, in which state, since when and until when, collected how, used how many
times. States: active, refused, revoked, expired, used_up (a one-time consent after its exchange).

Invariant: a consent is used through `use()` only, an atomic UPDATE that checks state, expiry and remaining uses in
the same statement, so a revoked, expired or used-up consent can never serve an exchange, on any broker process.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from broker.storage import db
from consent.basis import BasisRefused


class ConsentUnusable(BasisRefused):
    """The consent exists but cannot serve this exchange. `reason` is one of: unknown, not-yours, revoked,
    refused, expired, used_up, field-refused, other-dataset, other-purpose, other-recipient."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"consent unusable: {reason}")
        self.reason = reason


def _q() -> dict[str, str]:
    return db.queries("consent", "consents.sql")


@dataclass(frozen=True, slots=True)
class Consent:
    id: uuid.UUID
    subject_key: str
    identity_ciphertext: bytes
    controller: str
    controller_name: str
    recipient: str
    habilitation_id: str
    dataset: str
    dataset_version: int
    provider: str
    purpose: str
    fields: tuple[str, ...]
    fields_refused: tuple[str, ...]
    legal_basis_title: str
    legal_basis_url: str
    state: str
    method: str
    frequency: str
    max_uses: int | None
    uses: int
    created_at: datetime
    decided_at: datetime | None
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Consent:
        values = dict(row)
        values["fields"] = tuple(values["fields"])
        values["fields_refused"] = tuple(values["fields_refused"])
        values["identity_ciphertext"] = bytes(values["identity_ciphertext"])
        return cls(**values)

    def state_at(self, now: datetime) -> str:
        """The state as the citizen should see it: an active consent past its expiry is expired even before the
        sweep marks it."""
        if self.state == "active" and self.expires_at <= now:
            return "expired"
        return self.state

    def covers(self, field: str) -> bool:
        return any(field == f or field.startswith(f + ".") for f in self.fields)

    def public_json(self, now: datetime) -> dict[str, Any]:
        """What the citizen API shows: never the sealed identity."""
        return {
            "id": str(self.id), "state": self.state_at(now), "controller": self.controller,
            "controller_name": self.controller_name, "recipient": self.recipient, "dataset": self.dataset,
            "dataset_version": self.dataset_version, "provider": self.provider, "purpose": self.purpose,
            "fields": list(self.fields), "fields_refused": list(self.fields_refused),
            "legal_basis": {"type": "consent", "title": self.legal_basis_title, "url": self.legal_basis_url},
            "frequency": self.frequency, "max_uses": self.max_uses, "uses": self.uses, "method": self.method,
            "created_at": self.created_at.isoformat(), "expires_at": self.expires_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
        }


async def create(conn: asyncpg.Connection | asyncpg.Pool, *, subject_key: str, identity_ciphertext: bytes,
                 controller: str, controller_name: str, recipient: str, habilitation_id: str, dataset: str,
                 dataset_version: int, provider: str, purpose: str, fields: Iterable[str],
                 fields_refused: Iterable[str], legal_basis_title: str, legal_basis_url: str, accepted: bool,
                 frequency: str, now: datetime, expires_at: datetime) -> Consent:
    """Record the citizen's decision, accept or refuse: both are kept."""
    row = await conn.fetchrow(
        _q()["consent_insert"], uuid.uuid4(), subject_key, identity_ciphertext, controller, controller_name,
        recipient, habilitation_id, dataset, dataset_version, provider, purpose, list(fields),
        list(fields_refused), legal_basis_title, legal_basis_url, "active" if accepted else "refused", frequency,
        1 if frequency == "one_time" else None, now, expires_at,
    )
    consent = Consent.from_row(row)
    await conn.execute(_q()["consent_event"], consent.id, "given" if accepted else "refused", now,
                       {"fields": list(consent.fields), "fields_refused": list(consent.fields_refused)})
    return consent


async def get(pool: asyncpg.Pool | asyncpg.Connection, consent_id: uuid.UUID) -> Consent | None:
    row = await pool.fetchrow(_q()["consent_get"], consent_id)
    return Consent.from_row(row) if row else None


async def of_subject(pool: asyncpg.Pool, subject_key: str) -> list[Consent]:
    return [Consent.from_row(r) for r in await pool.fetch(_q()["consents_of_subject"], subject_key)]


async def events(pool: asyncpg.Pool, consent_id: uuid.UUID) -> list[dict[str, Any]]:
    return [{"event": r["event"], "at": r["at"].isoformat(), "detail": r["detail"]}
            for r in await pool.fetch(_q()["consent_events_of"], consent_id)]


async def revoke(pool: asyncpg.Pool, consent_id: uuid.UUID, subject_key: str, now: datetime) -> Consent | None:
    """Revoke the citizen's own active consent; None when it is not theirs or not active."""
    row = await pool.fetchrow(_q()["consent_revoke"], consent_id, subject_key, now)
    return Consent.from_row(row) if row else None


def verify_request_fits(consent: Consent, *, controller: str, dataset: str, purpose: str, recipient: str,
                        fields: Iterable[str]) -> None:
    """The exchange asks for no more than the citizen agreed to, for whom they agreed to."""
    if consent.controller != controller:
        raise ConsentUnusable("not-yours")
    if consent.dataset != dataset:
        raise ConsentUnusable("other-dataset")
    if consent.purpose != purpose:
        raise ConsentUnusable("other-purpose")
    if consent.recipient != recipient:
        raise ConsentUnusable("other-recipient")
    if not all(consent.covers(f) for f in fields):
        raise ConsentUnusable("field-refused")


async def use(pool: asyncpg.Pool, consent: Consent, now: datetime) -> Consent:
    """Count one use, atomically; raise `ConsentUnusable` saying why when the consent cannot serve."""
    row = await db.fetchrow(pool, _q()["consent_use"], consent.id, now)
    if row is not None:
        return Consent.from_row(row)
    current = await get(pool, consent.id)
    if current is None:
        raise ConsentUnusable("unknown")
    state = current.state_at(now)
    raise ConsentUnusable(state if state != "active" else "used_up")


async def expire_due(pool: asyncpg.Pool, now: datetime) -> None:
    await pool.execute(_q()["consent_expire_due"], now)
