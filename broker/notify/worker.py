"""The e-mail queue: from the notification outbox to the citizens' mailboxes, with retries and no loss.

Each pass:

1. fan out: notification-outbox rows (one per released entry, written in the transaction of its access-log row)
   not yet fanned out are marked, and an access mail is queued for each confirmed subscriber who chose each access,
   in one statement, so a row is fanned out exactly once even with several broker processes;
2. digests: weekly subscribers whose week is over get a digest queued, and their next week starts;
3. delivery: due mails are leased (their next attempt pushed past the time a batch can take, as the webhook's
   outbox does), composed, sent through the relay in one connection, then marked sent, or retried with exponential
   back-off (the DLNUF_OUTBOX_* policy), or given up after the last attempt or a permanent refusal.

A relay that is down only delays mails: each stays queued in PostgreSQL and goes on the next attempt after it comes
back, also after a broker restart. A worker that dies between sending and marking resends that mail once
(at least once, as the webhook). A mail whose reason is gone (an unsubscribed citizen, an address already confirmed,
a digest of an empty week, an entry pruned) is not sent.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import asyncpg
import structlog

from broker.config import Config, MailConfig
from broker.notify import links, mails, subscriptions
from broker.notify.smtp import Outcome, Relay
from broker.observability.metrics import Metrics
from broker.registry import Registry
from broker.storage import db
from broker.tlog.accesslog import CITIZEN_RECIPIENT, PREVIEW_PURPOSE
from broker.tlog.outbox import retry_delay
from consent.sealing import Sealer
from schemas import labels

log = structlog.get_logger(__name__)

KEEP_SENT = timedelta(days=30)
"""Sent and abandoned mails are forgotten after this: the queue is not an archive."""
_HOUSEKEEPING_EVERY = 60.0


def _q() -> dict[str, str]:
    return db.queries("broker.notify", "notify.sql")


class Mailer:
    def __init__(self, pool: asyncpg.Pool, config: MailConfig, *, sealer: Sealer, link_key: bytes,
                 registry: Callable[[], Registry], max_attempts: int, backoff: float, max_backoff: float,
                 metrics: Metrics | None = None, batch: int = 20, relay: Relay | None = None) -> None:
        self.pool = pool
        self.config = config
        self.sealer = sealer
        self.link_key = link_key
        self.registry = registry
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.metrics = metrics
        self.batch = batch
        self.relay = relay or Relay(config)
        # Longer than a batch can take (each mail may wait a whole timeout), so a live worker's lease holds.
        self.lease = config.timeout * (batch + 2) + 5
        self._housekept = 0.0

    # -- 1. and 2.: what is due ----------------------------------------------------------------------------------

    async def fan_out(self) -> int:
        """Queue access mails for the released entries not yet fanned out; returns how many rows were taken."""
        row = await self.pool.fetchrow(_q()["mail_fan_out"], 500, PREVIEW_PURPOSE, CITIZEN_RECIPIENT)
        return int(row["fanned_out"]) if row else 0

    async def schedule_digests(self, now: datetime) -> int:
        return len(await self.pool.fetch(_q()["mail_schedule_digests"], now, 500))

    # -- 3.: delivery ------------------------------------------------------------------------------------------------

    def _links(self, subscription_id: uuid.UUID | None) -> mails.Links:
        base = self.config.public_url
        if subscription_id is None:
            return mails.Links(base)
        token = links.sign(self.link_key, links.UNSUBSCRIBE, subscription_id)
        return mails.Links(base, base + links.UNSUBSCRIBE_PATH + token)

    def _access(self, row: asyncpg.Record, registry: Registry) -> mails.Access:
        org = registry.organisation(str(row["consumer"] or ""))
        return mails.Access(
            logged_at=row["logged_at"], consumer_name=org.name if org else "Une administration",
            dataset_title=labels.dataset_title(row["dataset"], row["dataset_version"]) or "vos données")

    async def _compose(self, claim: asyncpg.Record, registry: Registry,
                       entries: dict[tuple[uuid.UUID, datetime], asyncpg.Record], now: datetime) -> EmailMessage | None:
        """The mail a claimed row stands for, or None when there is nothing (any more) to send."""
        sub = await subscriptions.get(self.pool, self.sealer, claim["subscription_id"])
        if sub is None:
            return None
        kind, sender = claim["kind"], self.config.sender
        if kind == "confirmation":
            if sub.confirmed or sub.confirm_before is None or sub.confirm_before <= now:
                return None
            token = links.sign(self.link_key, links.CONFIRM, sub.id)
            return mails.confirmation_mail(
                sender=sender, to=sub.address, before=sub.confirm_before, links=self._links(None), now=now,
                confirm_url=self.config.public_url + links.CONFIRM_PATH + token)
        if kind == "access":
            entry = entries.get((claim["entry_id"], claim["logged_at"]))
            if entry is None:
                return None
            return mails.access_mail(sender=sender, to=sub.address, access=self._access(entry, registry),
                                     links=self._links(sub.id), now=now)
        rows = await self.pool.fetch(_q()["mail_digest_entries"], sub.subject_key, claim["period_start"],
                                     claim["period_end"], PREVIEW_PURPOSE, CITIZEN_RECIPIENT)
        if not rows:
            return None  # no access that week: no mail
        return mails.digest_mail(sender=sender, to=sub.address, accesses=[self._access(r, registry) for r in rows],
                                 start=claim["period_start"], end=claim["period_end"], links=self._links(sub.id),
                                 now=now)

    async def deliver_due(self, now: datetime | None = None) -> int:
        """One round of delivery; returns how many queued mails were attempted."""
        claimed = await self.pool.fetch(_q()["mail_claim"], self.batch, self.lease)
        if not claimed:
            return 0
        now = now or datetime.now(UTC)
        registry = self.registry()
        # by (id, logged_at): a row reusing the entry's id in another month must not lend the mail its day and data
        named = [(c["entry_id"], c["logged_at"]) for c in claimed if c["entry_id"] is not None]
        entries = {(r["id"], r["logged_at"]): r for r in await self.pool.fetch(
            _q()["mail_entries"], [i for i, _ in named], [t for _, t in named])} if named else {}
        composed: list[tuple[asyncpg.Record, EmailMessage]] = []
        for claim in claimed:
            message = await self._compose(claim, registry, entries, now)
            if message is None:
                await self.pool.execute(_q()["mail_delivered"], claim["id"])
                self._count(claim["kind"], "skipped")
            else:
                composed.append((claim, message))
        outcomes = await self.relay.send([m for _, m in composed])
        for (claim, _), outcome in zip(composed, outcomes, strict=True):
            await self._record(claim, outcome)
        return len(claimed)

    async def _record(self, claim: asyncpg.Record, outcome: Outcome) -> None:
        if outcome.error is None:
            await self.pool.execute(_q()["mail_delivered"], claim["id"])
            self._count(claim["kind"], "sent")
            return
        gave_up = outcome.permanent or claim["attempts"] >= self.max_attempts
        delay = retry_delay(claim["attempts"], self.backoff, self.max_backoff)
        await self.pool.execute(_q()["mail_failed"], claim["id"], delay, outcome.error[:500], gave_up)
        self._count(claim["kind"], "gave_up" if gave_up else "failed")
        # the mail's id and kind only: the address is personal data, and the error may quote it
        log.warning("notification mail not sent", mail_id=claim["id"], kind=claim["kind"],
                    attempts=claim["attempts"], gave_up=gave_up, error=outcome.error.split(":", 1)[0])

    def _count(self, kind: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.mails.labels(kind, result).inc()

    async def housekeeping(self, now: datetime) -> None:
        await self.pool.execute(_q()["subscriptions_purge_unconfirmed"], now)
        await self.pool.execute(_q()["mail_purge_delivered"], now - KEEP_SENT)

    async def run_once(self, now: datetime | None = None) -> int:
        now = now or datetime.now(UTC)
        await self.fan_out()
        await self.schedule_digests(now)
        loop_now = asyncio.get_running_loop().time()
        if loop_now - self._housekept >= _HOUSEKEEPING_EVERY:
            self._housekept = loop_now
            await self.housekeeping(now)
        return await self.deliver_due(now)

    async def run(self, poll: float = 1.0) -> None:
        while True:
            try:
                attempted = await self.run_once()
            except asyncio.CancelledError:
                raise
            except db.DB_ERRORS as exc:
                log.warning("mail pass interrupted", error=f"{type(exc).__name__}: {exc}")
                attempted = 0
            if attempted < self.batch:
                await asyncio.sleep(min(poll, self.backoff))


def from_config(config: Config, pool: asyncpg.Pool, *, sealer: Sealer, subject_secret: bytes,
                registry: Callable[[], Registry], metrics: Metrics | None) -> Mailer | None:
    """The mailer of the configured relay; None without one (the portal then offers no notification)."""
    if config.mail is None:
        return None
    return Mailer(pool, config.mail, sealer=sealer, link_key=links.link_key(subject_secret), registry=registry,
                  max_attempts=config.outbox_max_attempts, backoff=config.outbox_backoff,
                  max_backoff=config.outbox_max_backoff, metrics=metrics)
