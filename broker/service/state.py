"""What a running broker holds: configuration, pool, the current registry and the adapters built from it.

The registry is cached in memory (every request needs it) and reloaded when another process applies a new one:
PostgreSQL NOTIFY on `dlnuf_registry` wakes every process at once, and a slow poll of the registry version
covers notifications lost while the listening connection was down.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from adapters import registry as adapter_registry
from adapters.base import Health, ProviderAdapter
from adapters.resilience import BreakerState
from broker.config import Config
from broker.observability.metrics import Metrics
from broker.registry import AdapterEntry, Registry, load
from broker.registry.quota import Quota
from broker.service.attempts import AttemptStore
from broker.service.claims import ClaimBatcher
from broker.service.quotas import QuotaMeter
from broker.signing.keys import PrivateKey, PublicKey, public_key_from_jwk
from broker.storage import db
from broker.storage.db import DatabaseUnavailable
from consent.sealing import Sealer
from schemas.validation import Validators

log = structlog.get_logger(__name__)

_DB_ERRORS = db.DB_ERRORS


class RegistryCache:
    def __init__(self, pool: asyncpg.Pool, *, poll: float) -> None:
        self.pool = pool
        self.poll = poll
        self.current = Registry()
        self.keys: dict[str, PublicKey] = {}
        self._listeners: list[Any] = []
        self._changed = asyncio.Event()
        self._loaded = False

    def _notified(self, *_: object) -> None:
        self._changed.set()

    def on_change(self, callback: Any) -> None:
        self._listeners.append(callback)

    async def refresh(self) -> None:
        if self._loaded and await self.pool.fetchval(db.queries()["registry_version"]) == self.current.version:
            return
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            fresh = await load(conn)  # one snapshot: never half of an apply
        # keys are parsed once here, not per request
        self.keys = {
            k.kid: public_key_from_jwk(k.jwk, owner=k.siret, kid=k.kid, not_before=k.not_before,
                                       not_after=k.not_after)
            for k in fresh.keys
        }
        self.current = fresh
        self._loaded = True
        for callback in self._listeners:
            callback(fresh)
        log.info("registry loaded", version=fresh.version, keys=len(fresh.keys),
                 habilitations=len(fresh.habilitations))

    async def watch(self) -> None:
        """Reload on NOTIFY, or every `poll` seconds; survive the database going away and coming back."""
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self.pool.acquire()
                await conn.add_listener("dlnuf_registry", self._notified)
                await self.refresh()
                while True:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.poll):
                            await self._changed.wait()
                    self._changed.clear()
                    await self.refresh()
            except asyncio.CancelledError:
                raise
            except _DB_ERRORS as exc:
                log.warning("registry watch interrupted", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(min(self.poll, 1.0))
            finally:
                if conn is not None:
                    with contextlib.suppress(*_DB_ERRORS):
                        await conn.remove_listener("dlnuf_registry", self._notified)
                    with contextlib.suppress(*_DB_ERRORS):
                        await self.pool.release(conn)


class AdapterSet:
    """Adapters built from the registry; an unchanged entry keeps its instance (and its breaker state)."""

    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self.session = session
        self.metrics = metrics
        self._by_id: dict[str, tuple[AdapterEntry, ProviderAdapter]] = {}
        self._by_dataset: dict[str, ProviderAdapter] = {}
        self.unbuilt: dict[str, str] = {}
        """Adapters of the registry that could not be built, by id, with the reason (for `/readyz`)."""
        metrics.watch_adapters(self.health)

    def update(self, registry: Registry) -> None:
        by_id: dict[str, tuple[AdapterEntry, ProviderAdapter]] = {}
        unbuilt: dict[str, str] = {}
        for entry in registry.adapters:
            old = self._by_id.get(entry.id)
            if old is not None and old[0] == entry:
                by_id[entry.id] = old
                continue
            try:
                adapter = adapter_registry.build_adapter(
                    entry.kind, entry.id, {**entry.options, "datasets": list(entry.datasets)}, self.session)
            except ValueError as exc:
                # `registry apply` checked the options; what can still fail is the environment (a missing token)
                log.error("adapter not built", adapter=entry.id, error=str(exc))
                unbuilt[entry.id] = str(exc)
                continue
            by_id[entry.id] = (entry, adapter)
        self._by_id, self.unbuilt = by_id, unbuilt
        self._by_dataset = {d: a for e, a in by_id.values() for d in e.datasets}

    def for_dataset(self, dataset: str) -> ProviderAdapter:
        adapter = self._by_dataset.get(dataset)
        if adapter is None:
            from adapters.base import ProviderUnavailable

            raise ProviderUnavailable(f"no adapter is configured for {dataset}")
        return adapter

    def all(self) -> list[ProviderAdapter]:
        return [a for _, a in self._by_id.values()]

    def health(self) -> dict[str, Health]:
        return {entry_id: adapter.health() for entry_id, (_, adapter) in self._by_id.items()}

    def readiness(self) -> tuple[str, dict[str, str]]:
        """A one-line summary and each adapter's state, for `/readyz`: its breaker's, or `not built: <why>`.

        Neither an open breaker nor an adapter that could not be built makes the broker unready: it still serves
        the other providers' datasets (and a registry change must not take every broker out of service at once);
        the summary names each adapter that cannot serve, and `/readyz` says `degraded`."""
        # an open breaker names the fault that keeps it open: its refusals all say provider-unavailable
        states = {name: h.breaker.label + (f" (last fault: {h.last_fault})"
                                           if h.breaker is not BreakerState.CLOSED and h.last_fault else "")
                  for name, h in self.health().items()}
        states.update({name: f"not built: {why}" for name, why in self.unbuilt.items()})
        states = dict(sorted(states.items()))
        problems = []
        unbuilt = [name for name in states if name in self.unbuilt]
        if unbuilt:
            problems.append("not built: " + ", ".join(unbuilt))
        tripped = [name for name, state in states.items() if name not in self.unbuilt and state != "closed"]
        if tripped:
            problems.append("breaker not closed: " + ", ".join(tripped))
        return ("; ".join(problems) or "ok"), states


@dataclass(slots=True)
class BrokerState:
    config: Config
    pool: asyncpg.Pool
    registry: RegistryCache
    adapters: AdapterSet
    signing_key: PrivateKey
    subject_secret: bytes
    metrics: Metrics
    sealer: Sealer
    attempts: AttemptStore
    claims_pool: asyncpg.Pool
    """For the exchanges' nonce claims only: commits that do not wait for the WAL flush (quotas.py says why)."""
    claims: ClaimBatcher
    """The nonce claims of this process's concurrent exchanges, one statement per batch, on `claims_pool`."""
    validators: Validators = field(default_factory=Validators)

    def lookup_key(self, kid: str) -> PublicKey | None:
        return self.registry.keys.get(kid)

    def keys_of(self, owner: str) -> list[PublicKey]:
        """Every key the registry holds for an organisation, live or not (callers check the validity)."""
        return [k for k in self.registry.keys.values() if k.owner == owner]

    def quota_meter(self, dataset: str | None) -> QuotaMeter:
        """A nonce claim that also counts the exchange against its consumer's and habilitation's quotas."""
        default = self.config.quota_default
        return QuotaMeter(self.claims, registry=lambda: self.registry.current, lookup_key=self.lookup_key,
                          default=None if default is None else Quota(*default), dataset=dataset)

    async def claim_nonce(self, kid: str, nonce: str, expires_at: datetime) -> bool:
        try:
            claimed = await db.fetchval(self.pool, db.queries()["nonce_claim"], kid, nonce, expires_at)
        except _DB_ERRORS as exc:
            raise DatabaseUnavailable(f"nonce claim failed: {type(exc).__name__}") from exc
        return claimed is not None

    async def has_objection(self, subject_key: str, consumer: str, dataset: str) -> bool:
        try:
            found: bool = await db.fetchval(self.pool, db.queries()["objection_exists"], subject_key, consumer, dataset)
        except _DB_ERRORS as exc:
            raise DatabaseUnavailable(f"objection lookup failed: {type(exc).__name__}") from exc
        return found


STATE = web.AppKey("state", BrokerState)
