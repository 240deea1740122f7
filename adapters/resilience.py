"""How an adapter treats a failing provider: a retry budget and a circuit breaker, both on an injectable clock.

`ProviderAdapter.fetch()` (adapters/base.py) composes them; this module knows nothing of HTTP or of adapter errors,
only of attempts that succeeded, failed, or said nothing about the provider's health.

Invariants:

* retries never exceed ``retry_ratio`` of the calls of the last ``window`` seconds, plus ``retry_floor``, so a
  dying provider sees at most ``1 + retry_ratio`` times its normal load, not ``1 + retries`` times;
* an open breaker lets nothing through until its probe delay has passed, then exactly one probe at a time (a real
  call); only the probe's outcome closes it, or opens it again for twice the delay: the first delay is
  ``probe_delay``, the longest ``breaker_cooldown``. A provider that comes back is thus called again within
  ``breaker_cooldown`` (2 s by default) of its return, as soon as a call arrives, while a provider that stays down
  sees one call per ``breaker_cooldown`` at most.
"""

from __future__ import annotations

import enum
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


class BreakerState(enum.IntEnum):
    """Values are what `/metrics` exports: 0 closed, 1 half-open, 2 open."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    # The attempt says nothing of the provider's health (refused before calling it, cancelled by our caller).
    NEUTRAL = "neutral"


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """Per-adapter resilience settings. The registry sets `retries`, `breaker_failures` and `breaker_cooldown`;
    the others are the broker's defaults, fields here so tests can shrink them."""

    # Repeats of one call after a transport failure or a 5xx; 0 for adapters whose calls are not idempotent.
    retries: int = 0
    # Retries may add at most this fraction of the calls seen in `window`, plus `retry_floor` (so a cold or
    # quiet adapter can still retry a few times).
    retry_ratio: float = 0.2
    retry_floor: int = 10
    # First pause before a retry; doubles each time, with full jitter so callers do not retry in lockstep.
    backoff: float = 0.05
    # Consecutive failures that open the breaker...
    breaker_failures: int = 5
    # ...or this failure ratio over at least `breaker_min_calls` attempts in `window` (a provider failing one
    # call in two never reaches five in a row, yet is sick).
    breaker_ratio: float = 0.5
    breaker_min_calls: int = 20
    # Seconds an open breaker waits before it lets the first probe through; each failed probe doubles the wait...
    probe_delay: float = 0.25
    # ...up to this longest wait between two probes.
    breaker_cooldown: float = 2.0
    window: float = 30.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.retry_floor < 0 or self.breaker_failures < 1 or self.breaker_min_calls < 1:
            raise ValueError("retries and retry_floor must be >= 0, breaker_failures and breaker_min_calls >= 1")
        if not (self.retry_ratio >= 0 and 0 < self.breaker_ratio <= 1):
            raise ValueError("retry_ratio must be >= 0 and breaker_ratio in ]0, 1]")
        if self.backoff < 0 or self.breaker_cooldown <= 0 or self.probe_delay <= 0 or self.window <= 0:
            raise ValueError("backoff must be >= 0, breaker_cooldown, probe_delay and window > 0")

    def backoff_delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Pause before retry number `retry` (0-based): uniform in [0, backoff * 2**retry]."""
        return rng() * self.backoff * float(2 ** retry)


class RollingCount:
    """Events in the last `window` seconds, in one-tenth-of-a-window buckets: memory does not grow with load."""

    def __init__(self, window: float, clock: Clock) -> None:
        self._width = window / 10
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [bucket index, count], oldest first

    def _prune(self) -> int:
        now = int(self._clock() // self._width)
        while self._buckets and self._buckets[0][0] <= now - 10:
            self._buckets.popleft()
        return now

    def add(self, n: int = 1) -> None:
        now = self._prune()
        if self._buckets and self._buckets[-1][0] == now:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([now, n])

    def total(self) -> int:
        self._prune()
        return sum(count for _, count in self._buckets)

    def clear(self) -> None:
        self._buckets.clear()


class RetryBudget:
    def __init__(self, policy: CallPolicy, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._calls = RollingCount(policy.window, clock)
        self._retries = RollingCount(policy.window, clock)

    def record_call(self) -> None:
        self._calls.add()

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when the budget is spent (the caller gives up instead)."""
        allowed = self.policy.retry_floor + self.policy.retry_ratio * self._calls.total()
        if self._retries.total() + 1 > allowed:
            return False
        self._retries.add()
        return True


class CircuitBreaker:
    """Closed -> open after repeated failures -> half-open after the probe delay -> closed on a successful probe,
    or open again for twice the delay (at most `breaker_cooldown`) on a failed one."""

    def __init__(self, policy: CallPolicy, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._attempts = RollingCount(policy.window, clock)
        self._failures = RollingCount(policy.window, clock)
        self._opened_at = 0.0
        self._delay = self._first_delay()
        self._probing = False

    def _first_delay(self) -> float:
        return min(self.policy.probe_delay, self.policy.breaker_cooldown)

    @property
    def delay(self) -> float:
        """Seconds between the breaker's last opening and its next probe."""
        return self._delay

    @property
    def state(self) -> BreakerState:
        """As a caller would find it now: an open breaker whose cool-down is over is half-open."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._delay:
            return BreakerState.HALF_OPEN
        return self._state

    def reopens_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it is not open)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._delay - self._clock())

    def admit(self) -> bool | None:
        """None: refuse the call. False: a normal call. True: this call is the half-open probe; report its
        outcome with `probe=True`."""
        state = self.state
        if state is BreakerState.CLOSED:
            return False
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._state, self._probing = BreakerState.HALF_OPEN, True
            return True
        return None

    def record(self, outcome: Outcome, *, probe: bool = False) -> None:
        if probe:
            self._probing = False
            if outcome is Outcome.SUCCESS:
                self._close()
            elif outcome is Outcome.FAILURE:
                self._open(self._delay * 2)
            # NEUTRAL: the probe told us nothing; the next call probes again.
            return
        if outcome is Outcome.NEUTRAL:
            return
        self._attempts.add()
        if outcome is Outcome.SUCCESS:
            self._consecutive = 0
            return
        self._failures.add()
        self._consecutive += 1
        # Late answers of calls admitted before the breaker opened do not move it: only the probe does.
        if self._state is not BreakerState.CLOSED:
            return
        attempts = self._attempts.total()
        if self._consecutive >= self.policy.breaker_failures or (
                attempts >= self.policy.breaker_min_calls
                and self._failures.total() >= self.policy.breaker_ratio * attempts):
            self._open(self._first_delay())

    def _open(self, delay: float) -> None:
        self._state, self._opened_at = BreakerState.OPEN, self._clock()
        self._delay = min(delay, self.policy.breaker_cooldown)

    def _close(self) -> None:
        self._state, self._consecutive = BreakerState.CLOSED, 0
        # A fresh start: the failures that opened the breaker must not reopen it on the next single failure.
        self._attempts.clear()
        self._failures.clear()
