"""Nonce claims of concurrent exchanges, batched: one statement (`nonce_claim_batch`) claims them all and counts
their quotas.

Invariants (on top of `broker.service.quotas`, whose guarantees are unchanged):
- a claim's result is exactly what `nonce_claim_counted` would have answered for it alone: claimed or not, and for
  each quota scope the count with this exchange included. The claims of one batch are counted in their queue order,
  consecutively: the counter's row lock is held until the statement commits;
- a nonce is claimed once: the unique key of `seen_nonces` decides between processes, and within a batch the second
  submission of a (kid, nonce) is answered "not claimed" without reaching the database, as it would lose to the
  first there. So a replayed nonce never reaches a provider, whichever batch or process it lands in;
- the caller waits for its own batch's commit (without the WAL flush, as every claim: quotas.py says why), so no
  exchange calls its provider before its nonce is claimed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

import asyncpg

from broker.observability import tracing
from broker.storage import db
from broker.storage.batch import Batcher, Spans
from broker.storage.db import DatabaseUnavailable


@dataclass(frozen=True, slots=True)
class Claim:
    kid: str
    nonce: str
    expires_at: datetime
    scopes: tuple[tuple[str, int], ...]
    """The quota counters (scope key, window seconds) the exchange counts against if its nonce is new."""


@dataclass(frozen=True, slots=True)
class ScopeCount:
    scope: str
    used: int
    """Exchanges counted in the current window, this one included."""
    reset: float
    """Seconds until the window ends."""


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claimed: bool
    counts: tuple[ScopeCount, ...] = ()


class ClaimBatcher(Batcher[Claim, ClaimResult]):
    name = "nonce claims"
    spans: ClassVar[Spans] = tracing

    async def claim(self, claim: Claim) -> ClaimResult:
        """The claim's result once its batch committed; else `DatabaseUnavailable`."""
        return await self.submit(claim)

    async def _write(self, conn: asyncpg.Connection, items: Sequence[Claim]) -> list[ClaimResult]:
        first: dict[tuple[str, str], int] = {}
        sent: list[int] = []  # 1-based positions in the statement -> index in `items`
        for i, c in enumerate(items):
            if first.setdefault((c.kid, c.nonce), i) == i:
                sent.append(i)
        scope_rows = [(n, scope, window) for n, i in enumerate(sent, 1) for scope, window in items[i].scopes]
        rows = await conn.fetch(
            db.queries()["nonce_claim_batch"], [items[i].kid for i in sent], [items[i].nonce for i in sent],
            [items[i].expires_at for i in sent], [r[0] for r in scope_rows], [r[1] for r in scope_rows],
            [r[2] for r in scope_rows])
        claimed = {sent[r["ord"] - 1] for r in rows if r["kind"] == "claimed"}
        totals = {r["scope"]: (r["used"], r["reset"]) for r in rows if r["kind"] == "counted"}
        # each scope's claims, in queue order, share its total: the last one sees it, the others what came before
        later: dict[str, int] = {}
        for i in claimed:
            for scope, _ in items[i].scopes:
                later[scope] = later.get(scope, 0) + 1
        results: list[ClaimResult] = []
        for i, c in enumerate(items):
            if i not in claimed:
                results.append(ClaimResult(False))
                continue
            counts = []
            for scope, _ in c.scopes:
                later[scope] -= 1
                used, reset = totals[scope]
                counts.append(ScopeCount(scope, used - later[scope], reset))
            results.append(ClaimResult(True, tuple(counts)))
        return results

    def _failed(self, item: Claim, exc: BaseException | None) -> Exception:
        if exc is None:
            return DatabaseUnavailable("nonce claims stopped")
        return DatabaseUnavailable(f"nonce claim failed: {type(exc).__name__}")
