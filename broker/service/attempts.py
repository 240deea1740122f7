"""Unauthenticated attempts: refusals before a request's signature verified, kept apart from the access log.

Invariants:

- nothing a caller sends before proving who they are becomes a permanent row. The access log (and so the
  transparency log) records requests whose signature verified; a refusal before that point (unsigned, malformed,
  unknown key, bad signature, replayed nonce, oversized, wrong media type, header too large) is counted in
  `/metrics`, written to the server log, and kept in `unauthenticated_attempts`, a ring of at most `capacity` rows
  that overwrites its oldest (migration 0008);
- the store costs the request nothing: attempts wait in a buffer of at most `buffer` entries, flushed by one
  INSERT every `interval` seconds; what does not fit is counted as dropped, and a database that is down delays
  or drops attempts, never an answer;
- a source over its budget (`SourceBudget`) is answered at once; its further refusals are folded into one row per
  flush (`repeated`), so a flood from one address costs one row a second, not one per request.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import structlog
from aiohttp import web

from broker.errors import TooManyAttempts
from broker.observability.metrics import Metrics
from broker.service.problems import detail_for, problem_for, problem_response, retry_after
from broker.signing import structured_fields as sf
from broker.signing.messages import SignatureRejected
from broker.storage import db

log = structlog.get_logger(__name__)

_MAX_PATH = 200
_MAX_KID = 128


@dataclass(frozen=True, slots=True)
class Attempt:
    request_id: str
    source: str
    method: str
    path: str
    reason: str
    """A stable code: a `SignatureRejected` reason, `body-too-large`, `unsupported-media-type`, `header-too-large`,
    `bad-request`, `database-unavailable`, or `source-over-budget` for a folded row."""
    problem_type: str
    http_status: int
    kid: str | None = None
    """The keyid the request claimed, unverified: which key an attacker tries is worth knowing."""
    repeated: int = 1
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def args(self) -> tuple[object, ...]:
        return (self.at, self.request_id, self.source, self.method, self.path[:_MAX_PATH], self.reason,
                self.problem_type, self.http_status, None if self.kid is None else self.kid[:_MAX_KID],
                self.repeated)


def source_of(request: web.BaseRequest) -> str:
    """The peer address (behind a reverse proxy, the proxy's: see the README's security model)."""
    return request.remote or "-"


def claimed_keyid(headers: Mapping[str, str]) -> str | None:
    """The keyid a refused request's Signature-Input names, if it can be read: unverified, for the record only."""
    raw = headers.get("Signature-Input")
    if not raw or len(raw) > 4096:
        return None
    try:
        members = sf.parse_dictionary(raw)
    except sf.StructuredFieldError:
        return None
    for member in members.values():
        keyid = member.params.get("keyid")
        if isinstance(keyid, str):
            return keyid
    return None


class SourceBudget:
    """How many unauthenticated refusals each source address may cause per fixed window, in this process.

    A source that used its budget is refused at once until the window ends (`retry_after`), before its request
    costs a signature check or a database write. Counted per process (`serve --workers N` lets one address
    cause up to N times `limit` refusals per window): the budget protects the broker's resources, and a
    process's resources are its own. Memory: one entry per source seen in the current window.
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._epoch = -1
        self._counts: dict[str, int] = {}
        self._over: dict[str, int] = {}

    def _roll(self, now: float) -> int:
        epoch = int(now // self.window)
        if epoch != self._epoch:
            self._epoch, self._counts = epoch, {}
        return epoch

    def retry_after(self, source: str, now: float) -> float | None:
        """None when `source` may be served; else seconds until its budget renews (the refusal is counted)."""
        if self.limit == 0:
            return None
        epoch = self._roll(now)
        if self._counts.get(source, 0) < self.limit:
            return None
        self._over[source] = self._over.get(source, 0) + 1
        return (epoch + 1) * self.window - now

    def refused(self, source: str, now: float) -> None:
        """Count an unauthenticated refusal of `source`."""
        if self.limit:
            self._roll(now)
            self._counts[source] = self._counts.get(source, 0) + 1

    def drain_over_budget(self) -> dict[str, int]:
        """Refusals of over-budget sources since the last call, by source."""
        over, self._over = self._over, {}
        return over


class AttemptStore:
    """The buffer in front of `unauthenticated_attempts`, the task that flushes it, and the sources' budget."""

    def __init__(self, pool: asyncpg.Pool, metrics: Metrics, *, capacity: int, buffer: int = 10_000,
                 interval: float = 1.0, budget: SourceBudget | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.metrics = metrics
        self.capacity = capacity
        # one INSERT must not write a slot twice (ON CONFLICT DO UPDATE refuses it), so a batch fits the ring
        self.buffer = min(buffer, capacity)
        self.interval = interval
        self.budget = budget
        self._clock = clock
        self._pending: list[Attempt] = []

    def verify_source(self, source: str) -> None:
        """None, or `TooManyAttempts` when `source` used its budget of refusals (counted, folded into one row)."""
        if self.budget is None:
            return
        wait = self.budget.retry_after(source, self._clock())
        if wait is not None:
            self.metrics.unauthenticated.labels("source-over-budget").inc()
            raise TooManyAttempts(f"too many refused requests from this address; retry in {math.ceil(wait)} s",
                                  retry_after=wait)

    def record(self, attempt: Attempt) -> None:
        """Count, log and queue one refusal, and charge it to its source (never blocks, never raises)."""
        self.metrics.unauthenticated.labels(attempt.reason).inc()
        log.warning("unauthenticated request refused", reason=attempt.reason, source=attempt.source,
                    status=attempt.http_status, kid=attempt.kid)
        if self.budget is not None:
            self.budget.refused(attempt.source, self._clock())
        self._queue(attempt)

    def _queue(self, attempt: Attempt) -> None:
        if len(self._pending) >= self.buffer:
            self.metrics.unauthenticated_dropped.inc(attempt.repeated)
            return
        self._pending.append(attempt)

    def refuse(self, request: web.Request, exc: BaseException, *, request_id: str) -> web.Response:
        """The answer to a request refused before any signature verified: a problem, counted and stored here,
        never in the access log. The caller learns the problem type only, as for any signature refusal."""
        problem = problem_for(exc)
        headers = retry_after(exc) or None
        if not isinstance(exc, TooManyAttempts):
            reason = exc.reason if isinstance(exc, SignatureRejected) else problem.slug
            self.record(Attempt(request_id=request_id, source=source_of(request), method=request.method,
                                path=request.raw_path, reason=reason, problem_type=problem.uri,
                                http_status=problem.status, kid=claimed_keyid(request.headers)))
        return problem_response(problem, detail=detail_for(exc), request_id=request_id, headers=headers)

    def fold_over_budget(self) -> None:
        """One row for each source's refusals while over its budget (counted in metrics as they happened)."""
        if self.budget is None:
            return
        for source, count in self.budget.drain_over_budget().items():
            log.warning("source over its unauthenticated budget", source=source, refused=count)
            problem = problem_for(TooManyAttempts("over budget", retry_after=0))
            self._queue(Attempt(request_id=str(uuid.uuid4()), source=source, method="-", path="-",
                                         reason="source-over-budget", problem_type=problem.uri,
                                         http_status=problem.status, repeated=count))

    async def flush(self) -> int:
        """Write what is buffered; return the number of rows written (0 when the database refused them)."""
        self.fold_over_budget()
        batch, self._pending = self._pending, []
        if not batch:
            return 0
        columns = [list(c) for c in zip(*(a.args() for a in batch), strict=True)]
        try:
            await db.fetchval(self.pool, db.queries()["attempts_insert"], self.capacity, *columns)
        except db.DB_ERRORS as exc:
            log.warning("unauthenticated attempts not stored", count=len(batch), error=type(exc).__name__)
            self.metrics.unauthenticated_dropped.inc(sum(a.repeated for a in batch))
            return 0
        return len(batch)

    async def run(self) -> None:
        """Flush every `interval` seconds until cancelled (then call `flush` once more, from the cleanup)."""
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()
