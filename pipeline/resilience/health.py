"""Deployment health (DOMAIN.md §4): P95 latency and error rate over a sliding window; a
deployment over either threshold is demoted, and routing ranks healthy ones first."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from pipeline.clock import Clock, MonotonicClock

Id = TypeVar("Id", bound=Hashable)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of an ascending, non-empty sequence, interpolating linearly
    between the two closest ranks: position ``q * (n - 1)`` (numpy's default method)."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class HealthWindow:
    """Samples from the last ``window_s`` seconds (a sample recorded at ``t`` counts while
    ``now - t < window_s``), at most the latest ``max_samples`` of them so that a busy
    deployment's P95 stays cheap to compute. Latency percentiles include failed calls: a
    timeout is exactly the slowness routing must see."""

    def __init__(self, window_s: float = 60.0, max_p95_ms: float = 1000.0,
                 max_error_rate: float = 0.05, min_samples: int = 20,
                 clock: Clock | None = None, max_samples: int = 1000):
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if not 0 <= max_error_rate <= 1:
            raise ValueError(f"max_error_rate must be in 0..1, got {max_error_rate}")
        if min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}")
        if max_samples < min_samples:
            raise ValueError(f"max_samples must be >= min_samples ({min_samples}), got {max_samples}")
        self.window_s = window_s
        self.max_p95_ms = max_p95_ms
        self.max_error_rate = max_error_rate
        self.min_samples = min_samples
        self._clock = clock or MonotonicClock()
        self.max_samples = max_samples
        # (at, latency_ms, ok); the oldest fall off when the window holds max_samples
        self._samples: deque[tuple[float, float, bool]] = deque(maxlen=max_samples)

    def record(self, latency_ms: float, ok: bool) -> None:
        if latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {latency_ms}")
        self._samples.append((self._clock.now(), float(latency_ms), ok))
        self._expire()

    def __len__(self) -> int:
        self._expire()
        return len(self._samples)

    def p95(self) -> float | None:
        """P95 latency in ms over the window, ``None`` without samples."""
        self._expire()
        if not self._samples:
            return None
        return percentile(sorted(s[1] for s in self._samples), 0.95)

    def error_rate(self) -> float:
        """Failed share of the window's samples; 0.0 without samples."""
        self._expire()
        if not self._samples:
            return 0.0
        return sum(1 for s in self._samples if not s[2]) / len(self._samples)

    def demoted(self) -> bool:
        """True when P95 or error rate exceeds its threshold, judged only once the window
        holds at least ``min_samples`` (a handful of calls proves nothing)."""
        if len(self) < self.min_samples:
            return False
        p95 = self.p95()
        return (p95 is not None and p95 > self.max_p95_ms) or self.error_rate() > self.max_error_rate

    def _expire(self) -> None:
        cutoff = self._clock.now() - self.window_s
        while self._samples and self._samples[0][0] <= cutoff:
            self._samples.popleft()


def rank(candidates: Sequence[tuple[Id, float]], health: Mapping[Id, HealthWindow]) -> list[Id]:
    """Order deployment ids: healthy before demoted, then by region priority (lower first),
    keeping the given order among equals. An id without a window counts as healthy."""
    def key(item: tuple[Id, float]) -> tuple[bool, float]:
        window = health.get(item[0])
        return (window is not None and window.demoted(), item[1])
    return [dep for dep, _ in sorted(candidates, key=key)]
