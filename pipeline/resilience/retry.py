"""One retry policy for every loop that tries again — provider calls (dispatch), publishing
(the Emitter), ledger inserts and the alert webhook (DOMAIN.md §4): capped exponential
backoff with ±jitter, a server's Retry-After in place of the computed delay, an optional
bound on attempts, and a deadline the wait has to fit in."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# Why a loop stops trying.
PERMANENT = "permanent"     # the failure says trying again will not help
EXHAUSTED = "exhausted"     # max_attempts reached
DEADLINE = "deadline"       # the wait would not end before the deadline

_MAX_EXPONENT = 60          # 2**60 s is far past any cap; keeps the float finite


@dataclass(frozen=True)
class Next:
    """What to do after a failed attempt: wait ``delay_s`` and try again, or stop (``stop``
    names why; ``delay_s`` is the wait that was not taken, 0 when none was computed)."""
    delay_s: float
    stop: str = ""

    @property
    def retry(self) -> bool:
        return not self.stop


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 1.0
    cap_s: float = 60.0
    jitter: float = 0.25
    max_attempts: int | None = None     # None: the loop tries until something else stops it

    def delay(self, retry: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry):
        ``base_s * 2**retry`` capped at ``cap_s``, ±``jitter``; a server's Retry-After
        (capped too) replaces it."""
        if retry_after_s is not None and retry_after_s >= 0:
            return min(retry_after_s, self.cap_s)
        raw = min(self.base_s * (2 ** min(retry, _MAX_EXPONENT)), self.cap_s)
        return max(0.0, raw * (1 + rng.uniform(-self.jitter, self.jitter)))

    def after(self, attempts: int, rng: random.Random, *, retryable: bool = True,
              retry_after_s: float | None = None, remaining_s: float | None = None,
              max_attempts: int | None = None) -> Next:
        """After ``attempts`` failed attempts (1 after the first): retry, and when. Stops on
        a permanent failure, when ``max_attempts`` (this call's, else the policy's) are
        used, or when the wait would reach past ``remaining_s`` (the deadline)."""
        if not retryable:
            return Next(0.0, PERMANENT)
        bound = max_attempts if max_attempts is not None else self.max_attempts
        if bound is not None and attempts >= bound:
            return Next(0.0, EXHAUSTED)
        delay = self.delay(attempts - 1, rng, retry_after_s)
        if remaining_s is not None and delay >= remaining_s:
            return Next(delay, DEADLINE)
        return Next(delay)


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (the delta-seconds form; a date is ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None
