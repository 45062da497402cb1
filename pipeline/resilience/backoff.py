"""Exponential backoff with jitter (DOMAIN.md §4): base * 2^attempt, capped, ±jitter,
and a provider's Retry-After overriding the computed delay."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_s: float = 1.0
    cap_s: float = 60.0
    jitter: float = 0.25

    def delay(self, attempt: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        if retry_after_s is not None and retry_after_s >= 0:
            return min(retry_after_s, self.cap_s)
        raw = min(self.base_s * (2 ** attempt), self.cap_s)
        return max(0.0, raw * (1 + rng.uniform(-self.jitter, self.jitter)))
