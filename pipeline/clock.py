"""Time, in one place: wall time in epoch milliseconds for events (``now_ms``), and an
injected monotonic clock for breakers, buckets, health windows and backoff, so tests move
a manual clock instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


def now_ms() -> int:
    """Wall time, epoch milliseconds (event timestamps, deadlines, billing)."""
    return int(time.time() * 1000)


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale; only differences are meaningful."""
        ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 0.0):
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        self._now += seconds
        return self._now
