"""The notification outbox: each released exchange, delivered to a webhook so the citizen can be told of it.

Invariants:
- an outbox row exists exactly when its released access-log entry committed: `accesslog.commit` writes both in one
  transaction;
- delivery is at least once: a notification is leased (its next attempt pushed past the request timeout) before
  the POST and marked delivered after a 2xx, so a worker that dies mid-delivery only delays it. Receivers drop
  duplicates by `notification_id`, also sent as the `Idempotency-Key` header;
- nothing here is on the exchange path: a failing webhook delays notifications, never an exchange;
- each POST is signed with the broker's response key (RFC 9421, keys at /.well-known/jwks.json), so the receiver
  knows the notification comes from the broker.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg
import orjson
import structlog
from multidict import CIMultiDict

from broker.config import Config
from broker.observability.metrics import Metrics
from broker.signing import messages
from broker.signing.keys import PrivateKey
from broker.storage import db
from broker.tlog.log import timestamp

log = structlog.get_logger(__name__)


def _q() -> dict[str, str]:
    return db.queries("broker.tlog", "tlog.sql")


def retry_delay(attempts: int, backoff: float, max_backoff: float) -> float:
    """Seconds before retrying after the `attempts`-th failure: exponential, capped. Also the e-mail queue's policy
    (`broker.notify.worker`)."""
    return float(min(max_backoff, backoff * 2 ** min(attempts - 1, 60)))


def notification(outbox_id: int, row: asyncpg.Record) -> dict[str, Any]:
    """Who accessed what about whom, when, and on which legal basis (the subject by its key only)."""
    return {
        "notification_id": str(outbox_id),
        "entry_id": str(row["id"]),
        "logged_at": timestamp(row["logged_at"]),
        "subject_key": row["subject_key"],
        "consumer": row["consumer"],
        "recipient": row["recipient"],
        "dataset": row["dataset"],
        "dataset_version": row["dataset_version"],
        "fields_released": list(row["fields_released"]),
        "purpose": row["purpose"],
        "habilitation_id": row["habilitation_id"],
        "legal_basis": {"type": row["legal_basis_type"], "title": row["legal_basis_title"],
                        "url": row["legal_basis_url"]},
    }


class Outbox:
    def __init__(self, pool: asyncpg.Pool, url: str, *, signing_key: PrivateKey, max_attempts: int, backoff: float,
                 max_backoff: float, timeout: float, metrics: Metrics | None = None, batch: int = 50) -> None:
        self.pool = pool
        self.url = url
        self.signing_key = signing_key
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.metrics = metrics
        self.batch = batch
        # Longer than a request can take, so a live worker's lease never expires under it.
        self.lease = 2 * timeout + 5
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def close(self) -> None:
        await self._session.close()

    def delay(self, attempts: int) -> float:
        """Seconds before retrying after the `attempts`-th failure: exponential, capped."""
        return retry_delay(attempts, self.backoff, self.max_backoff)

    async def deliver_due(self) -> int:
        """One pass: lease due notifications, POST each; returns how many were attempted."""
        claimed = await self.pool.fetch(_q()["outbox_claim"], self.batch, self.lease)
        if not claimed:
            return 0
        # An entry is (id, logged_at): a row of another month with the same id is another entry (migration 0032).
        rows = {(r["id"], r["logged_at"]): r for r in await self.pool.fetch(
            _q()["outbox_payload"], [c["entry_id"] for c in claimed], [c["logged_at"] for c in claimed])}
        await asyncio.gather(*(self._deliver(c["id"], c["attempts"], rows.get((c["entry_id"], c["logged_at"])))
                               for c in claimed))
        return len(claimed)

    async def _deliver(self, outbox_id: int, attempts: int, row: asyncpg.Record | None) -> None:
        error = await self._post(outbox_id, row) if row is not None else "the access-log entry is gone"
        if error is None:
            await self.pool.execute(_q()["outbox_delivered"], outbox_id)
            self._count("delivered")
            return
        gave_up = attempts >= self.max_attempts or row is None
        await self.pool.execute(_q()["outbox_failed"], outbox_id, self.delay(attempts), error[:500], gave_up)
        self._count("gave_up" if gave_up else "failed")
        log.warning("notification not delivered", notification_id=outbox_id, attempts=attempts, error=error,
                    gave_up=gave_up)

    async def _post(self, outbox_id: int, row: asyncpg.Record) -> str | None:
        """None once the webhook took it (2xx), else why not."""
        body = orjson.dumps(notification(outbox_id, row))
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json",
                                                 "Idempotency-Key": str(outbox_id)})
        headers.update(messages.sign_request(method="POST", url=self.url, headers=headers, body=body,
                                            private_key=self.signing_key))
        try:
            async with self._session.post(self.url, data=body, headers=headers) as resp:
                if 200 <= resp.status < 300:
                    return None
                return f"webhook answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.outbox.labels(result).inc()

    async def run(self) -> None:
        poll = min(1.0, self.backoff)
        while True:
            try:
                attempted = await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except db.DB_ERRORS as exc:
                log.warning("outbox pass interrupted", error=f"{type(exc).__name__}: {exc}")
                attempted = 0
            if attempted < self.batch:
                await asyncio.sleep(poll)


def from_config(config: Config, pool: asyncpg.Pool, signing_key: PrivateKey, metrics: Metrics | None) -> Outbox | None:
    """The worker for the configured webhook; None without one (rows then wait in the outbox)."""
    if config.notify_webhook is None:
        return None
    return Outbox(pool, config.notify_webhook, signing_key=signing_key, max_attempts=config.outbox_max_attempts,
                  backoff=config.outbox_backoff, max_backoff=config.outbox_max_backoff,
                  timeout=config.outbox_timeout, metrics=metrics)
