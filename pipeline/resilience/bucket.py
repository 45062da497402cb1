"""Rate limits per deployment (DOMAIN.md §4): token buckets for requests and tokens per
minute plus a concurrency cap, combined so a call is admitted only when every limit allows
it, and its token estimate is settled against the usage the provider reports."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from pipeline.clock import Clock, MonotonicClock

# Float refill arithmetic can land a hair short of a whole token after waiting exactly
# ``wait_time``; this tolerance keeps "wait, then take" reliable.
_EPS = 1e-9


class TokenBucket:
    """Holds up to ``burst`` tokens, refilled continuously at ``rate_per_s``; starts full.

    The level may go negative through :meth:`charge` (debt), which later refill pays off
    before anything else can be taken."""

    def __init__(self, rate_per_s: float, burst: float, clock: Clock | None = None):
        if rate_per_s < 0:
            raise ValueError(f"rate_per_s must be >= 0, got {rate_per_s}")
        if burst <= 0:
            raise ValueError(f"burst must be > 0, got {burst}")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self._clock = clock or MonotonicClock()
        self._level = self.burst
        self._at = self._clock.now()

    @property
    def available(self) -> float:
        self._refill()
        return self._level

    def can_take(self, n: float = 1) -> bool:
        _check_amount(n)
        return self.available + _EPS >= n

    def try_take(self, n: float = 1) -> bool:
        if not self.can_take(n):
            return False
        self._level -= n
        return True

    def wait_time(self, n: float = 1) -> float:
        """Seconds until ``n`` tokens are available; ``inf`` if that can never happen."""
        _check_amount(n)
        if n > self.burst:
            return math.inf
        missing = n - self.available
        if missing <= _EPS:
            return 0.0
        if self.rate_per_s == 0:
            return math.inf
        return missing / self.rate_per_s

    def refund(self, n: float) -> None:
        """Give back tokens that were taken but not used; the level never exceeds ``burst``."""
        _check_amount(n)
        self._refill()
        self._level = min(self.burst, self._level + n)

    def charge(self, n: float) -> None:
        """Take ``n`` tokens unconditionally, going into debt if need be."""
        _check_amount(n)
        self._refill()
        self._level -= n

    def restore(self, level: float, elapsed_s: float) -> None:
        """Take over a level another process exported ``elapsed_s`` ago (refilled since)."""
        self._level = min(self.burst, level + max(0.0, elapsed_s) * self.rate_per_s)
        self._at = self._clock.now()

    def _refill(self) -> None:
        now = self._clock.now()
        if now > self._at:
            self._level = min(self.burst, self._level + (now - self._at) * self.rate_per_s)
        self._at = max(self._at, now)


def _check_amount(n: float) -> None:
    if n < 0:
        raise ValueError(f"amount must be >= 0, got {n}")


class _SlidingWindowCount:
    """At most ``limit`` events in any window ``(t - window_s, t]``."""

    def __init__(self, limit: int, window_s: float, clock: Clock):
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()

    def _expire(self) -> float:
        now = self._clock.now()
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        return now

    def has_room(self) -> bool:
        return self.count() < self.limit

    def count(self) -> int:
        self._expire()
        return len(self._times)

    def add(self) -> None:
        self._times.append(self._expire())

    def ages(self) -> list[list[int]]:
        """The events in the window as ``[whole seconds ago, count]``: ages round down, so
        an event restored from them stays in the window at least as long as it would have."""
        now, by_age = self._expire(), {}
        for t in self._times:
            age = int(now - t)
            by_age[age] = by_age.get(age, 0) + 1
        return [[age, n] for age, n in sorted(by_age.items(), reverse=True)]

    def restore(self, ages: list[list[int]], elapsed_s: float) -> None:
        now = self._clock.now()
        self._times = deque(now - age - max(0.0, elapsed_s)
                            for age, n in sorted(ages, reverse=True) for _ in range(n))
        self._expire()

    def wait_time(self) -> float:
        now = self._expire()
        if len(self._times) < self.limit:
            return 0.0
        # room appears when the entry that would make the count reach the limit leaves
        oldest_blocking = self._times[len(self._times) - self.limit]
        return max(0.0, oldest_blocking + self.window_s - now)


@dataclass(eq=False)
class Admission:
    """A granted call: holds a concurrency slot and a token estimate until released."""

    limiter: DeploymentLimiter
    estimated_tokens: int
    released: bool = field(default=False)

    def release(self, actual_tokens: int | None = None) -> None:
        """Settle the estimate against the tokens actually used and free the slot.

        ``None`` (usage unknown, e.g. the call failed before a response) keeps the
        estimate as charged. Releasing twice is a bug and raises ``RuntimeError``."""
        if self.released:
            raise RuntimeError("admission already released")
        self.released = True
        self.limiter._settle(self.estimated_tokens, actual_tokens)


class DeploymentLimiter:
    """Requests per minute, tokens per minute and concurrent calls for one deployment.

    Requests: a bucket refilled at ``rpm / 60`` per second with burst ``request_burst``
    (default ``ceil(rpm / 6)``, ten seconds' worth) smooths the flow, and a sliding 60 s
    count guarantees no 60 s window ever holds more than ``rpm`` grants, which the bucket
    alone could not (its burst plus a minute of refill exceeds ``rpm``).

    Tokens: a bucket refilled at ``tpm / 60`` per second with burst ``token_burst``
    (default ``tpm``, so any single request up to a minute's allowance can be admitted).
    Estimates are taken up front and settled on release; usage above the estimate becomes
    debt that delays later grants."""

    WINDOW_S = 60.0

    def __init__(self, rpm: int, tpm: int, max_concurrency: int, clock: Clock | None = None, *,
                 request_burst: int | None = None, token_burst: int | None = None):
        if rpm < 1:
            raise ValueError(f"rpm must be >= 1, got {rpm}")
        if tpm < 1:
            raise ValueError(f"tpm must be >= 1, got {tpm}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        clock = clock or MonotonicClock()
        request_burst = request_burst if request_burst is not None else max(1, math.ceil(rpm / 6))
        token_burst = token_burst if token_burst is not None else tpm
        if not 1 <= request_burst <= rpm:
            raise ValueError(f"request_burst must be in 1..rpm ({rpm}), got {request_burst}")
        self.rpm = rpm
        self.tpm = tpm
        self.max_concurrency = max_concurrency
        self.requests = TokenBucket(rpm / self.WINDOW_S, request_burst, clock)
        self.tokens = TokenBucket(tpm / self.WINDOW_S, token_burst, clock)
        self._minute = _SlidingWindowCount(rpm, self.WINDOW_S, clock)
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def requests_last_minute(self) -> int:
        return self._minute.count()

    def try_acquire(self, tokens: int) -> Admission | None:
        """Admit a call estimated at ``tokens`` if every limit allows it, else ``None``
        (and nothing is taken)."""
        if (self._in_flight >= self.max_concurrency
                or not self._minute.has_room()
                or not self.requests.can_take(1)
                or not self.tokens.can_take(tokens)):
            return None
        self.requests.try_take(1)
        self.tokens.try_take(tokens)
        self._minute.add()
        self._in_flight += 1
        return Admission(self, tokens)

    def wait_time(self, tokens: int) -> float:
        """Seconds until :meth:`try_acquire` could succeed if nothing else changes.

        ``inf`` when the estimate exceeds the token burst, or when every concurrency slot is
        taken (only a release frees one; no amount of waiting does)."""
        if self._in_flight >= self.max_concurrency:
            return math.inf
        return max(self._minute.wait_time(), self.requests.wait_time(1),
                   self.tokens.wait_time(tokens))

    def export(self) -> dict:
        """The levels another worker takes over with :meth:`restore` (JSON-ready)."""
        return {"requests": self.requests.available, "tokens": self.tokens.available,
                "minute": self._minute.ages()}

    def restore(self, state: dict, elapsed_s: float) -> None:
        """Continue from levels exported ``elapsed_s`` seconds ago. Calls in flight stay
        with the process that made them (this one starts with none)."""
        self.requests.restore(float(state["requests"]), elapsed_s)
        self.tokens.restore(float(state["tokens"]), elapsed_s)
        self._minute.restore(state["minute"], elapsed_s)

    def _settle(self, estimated: int, actual: int | None) -> None:
        self._in_flight -= 1
        if actual is None:
            return
        if actual < estimated:
            self.tokens.refund(estimated - actual)
        elif actual > estimated:
            self.tokens.charge(actual - estimated)
