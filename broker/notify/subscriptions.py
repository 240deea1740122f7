"""A citizen's choice of e-mail notifications: each access, a weekly digest, or nothing (no row at all).

Where the address comes from: the citizen chooses it in the portal. The address FranceConnect gave at login (the
`email` claim, which the identity provider behind FranceConnect has verified) is offered first and is used at once;
any other address is used only once its owner followed the link of a confirmation mail, within
`CONFIRM_WITHIN`. So a mistyped or malicious address never receives access notifications, and nobody can subscribe
someone else's mailbox without that mailbox saying yes.

Invariants: at most one subscription per citizen (subject key); the address is sealed at rest (AES-256-GCM with the
identity key, bound to the row's id), opened only to send a mail; unsubscribing deletes the row, its address and any
mail still queued for it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from broker.storage import db
from consent.sealing import Sealer

MODES = ("each", "weekly")
CONFIRM_WITHIN = timedelta(hours=24)
_SEAL = "dlnuf/mail-address/v1:"
_MAX_ADDRESS = 254  # RFC 5321's limit on a path


class InvalidAddress(ValueError):
    """Not an address a mail can be sent to. The message is for the citizen, in French."""


def _q() -> dict[str, str]:
    return db.queries("broker.notify", "notify.sql")


@dataclass(frozen=True, slots=True)
class Subscription:
    id: uuid.UUID
    subject_key: str
    address: str = field(repr=False)
    mode: str
    created_at: datetime
    confirmed_at: datetime | None
    confirm_before: datetime | None
    digest_from: datetime

    @property
    def confirmed(self) -> bool:
        return self.confirmed_at is not None


def normalise_address(raw: str) -> str:
    """The address as typed, trimmed; refused unless it is one plain `local@domain` address."""
    address = raw.strip()
    local, at, domain = address.rpartition("@")
    if (not at or not local or "." not in domain or domain.startswith(".") or domain.endswith(".")
            or len(address) > _MAX_ADDRESS or any(c.isspace() or c in "<>,;:\"()[]\\" for c in address)
            or not address.isprintable()):
        raise InvalidAddress("Indiquez une adresse électronique de la forme nom@domaine.fr.")
    return address


def _open(row: asyncpg.Record, sealer: Sealer) -> Subscription:
    address = sealer.open(bytes(row["address_sealed"]), _SEAL + str(row["id"])).decode()
    return Subscription(id=row["id"], subject_key=row["subject_key"], address=address, mode=row["mode"],
                        created_at=row["created_at"], confirmed_at=row["confirmed_at"],
                        confirm_before=row["confirm_before"], digest_from=row["digest_from"])


async def of_subject(pool: asyncpg.Pool, sealer: Sealer, subject_key: str) -> Subscription | None:
    row = await pool.fetchrow(_q()["subscription_of_subject"], subject_key)
    return _open(row, sealer) if row else None


async def get(pool: asyncpg.Pool | asyncpg.Connection, sealer: Sealer,
              subscription_id: uuid.UUID) -> Subscription | None:
    row = await pool.fetchrow(_q()["subscription_get"], subscription_id)
    return _open(row, sealer) if row else None


async def choose(pool: asyncpg.Pool, sealer: Sealer, *, subject_key: str, mode: str, address: str | None,
                 verified_address: str | None, now: datetime) -> Subscription | None:
    """Record the citizen's choice: `mode` "none" unsubscribes; the same address with another mode only changes the
    rhythm; a new address replaces the subscription (new id: the old links die with it) and, unless it is the
    `verified_address` the identity provider gave, waits for its confirmation mail, queued here."""
    if mode == "none":
        await unsubscribe_subject(pool, subject_key)
        return None
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    if address is None:
        raise InvalidAddress("Indiquez l'adresse électronique où vous prévenir.")
    address = normalise_address(address)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_q()["subscription_lock_subject"], subject_key)
        row = await conn.fetchrow(_q()["subscription_of_subject"], subject_key)
        current = _open(row, sealer) if row else None
        if current is not None and current.address.casefold() == address.casefold():
            await conn.execute(_q()["subscription_mode"], current.id, mode, now)
            return await get(conn, sealer, current.id)
        if current is not None:
            await conn.execute(_q()["subscription_delete"], current.id)
        subscription_id = uuid.uuid4()
        verified = verified_address is not None and verified_address.casefold() == address.casefold()
        row = await conn.fetchrow(
            _q()["subscription_insert"], subscription_id, subject_key,
            sealer.seal(address.encode(), _SEAL + str(subscription_id)), mode, now, now if verified else None,
            None if verified else now + CONFIRM_WITHIN)
        if not verified:
            await conn.execute(_q()["mail_enqueue_confirmation"], subscription_id)
        return _open(row, sealer)


async def confirm(pool: asyncpg.Pool, sealer: Sealer, subscription_id: uuid.UUID,
                  now: datetime) -> Subscription | None:
    """Confirm an address (its owner followed the link in time); None when there is nothing (any more) to confirm."""
    row = await pool.fetchrow(_q()["subscription_confirm"], subscription_id, now)
    return _open(row, sealer) if row else None


async def unsubscribe(pool: asyncpg.Pool, subscription_id: uuid.UUID) -> bool:
    """Delete the subscription, its address and its queued mails; False when it was already gone."""
    return await pool.fetchval(_q()["subscription_delete"], subscription_id) is not None


async def unsubscribe_subject(pool: asyncpg.Pool, subject_key: str) -> None:
    await pool.execute(_q()["subscription_delete_of_subject"], subject_key)
