"""Quotas: at most `limit` exchanges per `window` seconds for a consumer, and for each of its habilitations.

Invariants:

- one count for every broker process and node: the counters are rows of PostgreSQL, incremented by the statement
  that claims the request's nonce (`nonce_claim_counted`; under load, the claims of concurrent exchanges go in one
  statement, `nonce_claim_batch`, with the same answers: broker/service/claims.py), so a quota adds no round trip;
- exact: one row per scope, so every claim sees every claim before it; fixed windows on the database's clock (a
  window of w seconds starts at a multiple of w since the epoch), so at most `limit` exchanges are counted in any
  one window whatever the number of processes, and a client bursting astride a boundary gets at most 2 x `limit`
  within w seconds;
- the claim commits without waiting for the WAL flush (the claims pool runs with `synchronous_commit = off`): the
  counter's row lock, held until commit, would otherwise make one consumer's concurrent exchanges queue behind
  each other's fsync (measured in benchmarks/quota_cost.py). This is safe because no exchange answers before a
  synchronous commit (its access-log entry, step 8, released or refused), and a synchronous commit flushes the
  WAL up to its own record, the earlier claim's included. A crash can only lose the claims of exchanges that had
  not answered: replaying one of those is the consumer's own retry, and its count is lost with it;
- every request whose signature verified counts, refused ones included, so probing is not free; a replayed nonce
  counts nothing (it is refused before, as an unauthenticated attempt);
- a consumer's quota is the registry's, else the broker's default (`DLNUF_QUOTA_DEFAULT`); a habilitation's
  quota, when the registry gives one, applies on top of it.

The answers carry the IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers-09): `RateLimit-Policy`
(`"consumer";q=<limit>;w=<window>`) and `RateLimit` (`"consumer";r=<remaining>;t=<seconds to reset>`), and a
429 carries `Retry-After`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from broker.errors import QuotaExceeded
from broker.registry import Registry
from broker.registry.quota import Quota
from broker.service.claims import Claim, ClaimBatcher
from broker.signing import structured_fields as sf
from broker.signing.keys import PublicKey

PolicyName = Literal["consumer", "habilitation"]


@dataclass(frozen=True, slots=True)
class Scope:
    policy: PolicyName
    """The RateLimit policy name the consumer sees."""
    key: str
    """The counter's row: `c:<siret>:<window>` or `h:<habilitation id>:<window>`."""
    quota: Quota


@dataclass(frozen=True, slots=True)
class Count:
    scope: Scope
    used: int
    """Exchanges counted in the current window, this one included."""
    reset: float
    """Seconds until the window ends."""

    @property
    def exceeded(self) -> bool:
        return self.used > self.scope.quota.limit

    @property
    def remaining(self) -> int:
        return max(0, self.scope.quota.limit - self.used)


@dataclass(frozen=True, slots=True)
class Usage:
    """What one request's claim counted; empty when the request counted nothing (no quota applies)."""

    counts: tuple[Count, ...] = ()

    def verify_within(self) -> None:
        """None, or `QuotaExceeded` naming the exhausted policies and the wait."""
        exceeded = [c for c in self.counts if c.exceeded]
        if not exceeded:
            return
        wait = max(c.reset for c in exceeded)
        what = " and ".join(f"the {c.scope.policy} quota ({c.scope.quota})" for c in exceeded)
        raise QuotaExceeded(f"{what} is used up for this window; retry in {math.ceil(wait)} s", retry_after=wait)

    def exceeded_policies(self) -> list[PolicyName]:
        return [c.scope.policy for c in self.counts if c.exceeded]

    def headers(self) -> dict[str, str]:
        """The RateLimit fields (and Retry-After when a quota is exceeded), for every answer to this request."""
        if not self.counts:
            return {}
        policy = [sf.Item(c.scope.policy, {"q": c.scope.quota.limit, "w": c.scope.quota.window})
                  for c in self.counts]
        current = [sf.Item(c.scope.policy, {"r": c.remaining, "t": math.ceil(c.reset)}) for c in self.counts]
        headers = {"RateLimit-Policy": sf.serialize_list(list(policy)), "RateLimit": sf.serialize_list(list(current))}
        exceeded = [c.reset for c in self.counts if c.exceeded]
        if exceeded:
            headers["Retry-After"] = str(math.ceil(max(exceeded)))
        return headers


def scopes(registry: Registry, consumer: str, dataset: str | None, default: Quota | None) -> list[Scope]:
    """The quotas one exchange of `consumer` for `dataset` counts against."""
    out = []
    org = registry.organisation(consumer)
    quota = org.quota if org is not None and org.quota is not None else default
    if quota is not None:
        out.append(Scope("consumer", f"c:{consumer}:{quota.window}", quota))
    hab = registry.habilitation(consumer, dataset) if dataset is not None else None
    if hab is not None and hab.quota is not None:
        out.append(Scope("habilitation", f"h:{hab.id}:{hab.quota.window}", hab.quota))
    return out


class QuotaMeter:
    """The nonce claim of one exchange (`verify_request`'s `claim_nonce`), counting its quotas in the same
    statement; `usage` holds what was counted once the claim ran.

    `dataset` comes from the request body before the signature is checked, but the claim runs only after the
    signature and the body's digest verified, so by then it is the dataset the consumer signed for.
    """

    def __init__(self, claims: ClaimBatcher, *, registry: Callable[[], Registry],
                 lookup_key: Callable[[str], PublicKey | None], default: Quota | None, dataset: str | None) -> None:
        self._claims = claims
        self._registry = registry
        self._lookup_key = lookup_key
        self._default = default
        self._dataset = dataset
        self.usage = Usage()
        self.waited: float | None = None
        """Seconds the claim's statement took, from this exchange's view (queued behind the previous batch, then
        its own); None until the claim ran."""

    async def claim(self, kid: str, nonce: str, expires_at: datetime) -> bool:
        key = self._lookup_key(kid)
        counted = [] if key is None else scopes(self._registry(), key.owner, self._dataset, self._default)
        # batched with the claims of concurrent exchanges: one statement for all (broker/service/claims.py)
        started = time.perf_counter()
        try:
            result = await self._claims.claim(Claim(kid, nonce, expires_at, tuple((s.key, s.quota.window)
                                                                                  for s in counted)))
        finally:
            self.waited = time.perf_counter() - started
        by_key = {s.key: s for s in counted}
        self.usage = Usage(tuple(Count(by_key[c.scope], c.used, c.reset) for c in result.counts))
        return result.claimed
