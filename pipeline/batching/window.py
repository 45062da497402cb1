"""Micro-batch windows: one open window per (partition, deployment, priority), closed by
whichever limit comes first — ``max_batch_size`` requests, ``max_batch_tokens`` tokens,
``max_wait_ms`` of age, or the bytes a Batch record may hold — or by a shutdown/rebalance,
so no request waits forever and no Batch is too large for the broker.

With ``close_when_quiet`` a window also closes as soon as waiting cannot fill it (the spirit
of Kafka's ``linger.ms`` with a batch size): each key keeps a moving average of the gap
between its arrivals; a window closes at once when fewer than two more requests are
expected before its deadline (waiting up to ``max_wait_ms`` for one more, or a coin flip on
one, costs every request in it more than it saves), and half-way to the deadline when a
gap has run past the average (the time already waited predicts as much again). A lone
request then waits ~0 ms instead of ``max_wait_ms``, while dense traffic still fills
windows by size or age.

Plain Python with an injected clock (epoch ms): the batcher agent feeds it, asks for aged
windows on a timer and publishes what it returns. Items are opaque to the window."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")

FILL_SIZE, FILL_TOKENS, FILL_AGE, FILL_SHUTDOWN = "size", "tokens", "age", "shutdown"
FILL_BYTES, FILL_QUIET = "bytes", "quiet"
FILL_REASONS = (FILL_SIZE, FILL_TOKENS, FILL_AGE, FILL_SHUTDOWN, FILL_BYTES, FILL_QUIET)
GAP_WEIGHT = 0.25          # weight of the newest inter-arrival gap in a key's moving average


def gap_average(average: float | None, gap: int) -> float:
    """A key's moving average of the gaps between its arrivals, with one more gap."""
    return gap if average is None else (1 - GAP_WEIGHT) * average + GAP_WEIGHT * gap


@dataclass(frozen=True)
class WindowLimits:
    max_batch_size: int        # requests
    max_batch_tokens: int      # estimated prompt tokens
    max_wait_ms: int           # age of the window's first request; 0 = flush on arrival
    close_when_quiet: bool = False   # close early when too few requests are expected in time


@dataclass(frozen=True)
class WindowKey:
    partition: int             # the llm.routed partition the requests came from
    deployment: str
    priority: str


@dataclass
class Flush(Generic[T]):
    """A closed window: the batch to publish."""
    key: WindowKey
    items: list[T]
    arrivals_ms: list[int]     # when each item entered the window (same order as items)
    tokens: int
    opened_at_ms: int
    flushed_at_ms: int
    fill_reason: str

    def waits_ms(self) -> list[int]:
        """What the window added to each item's latency."""
        return [self.flushed_at_ms - a for a in self.arrivals_ms]


@dataclass
class _Open(Generic[T]):
    limits: WindowLimits
    opened_at_ms: int
    items: list[T] = field(default_factory=list)
    arrivals_ms: list[int] = field(default_factory=list)
    tokens: int = 0
    size_bytes: int = 0

    @property
    def due_at_ms(self) -> int:
        return self.opened_at_ms + self.limits.max_wait_ms


class Windows(Generic[T]):
    """All open windows of one worker. ``limits`` maps a priority to its limits."""

    def __init__(self, limits: Callable[[str], WindowLimits], clock: Callable[[], int],
                 max_bytes: int | None = None):
        """``max_bytes``: most bytes of items one window may hold (what fits in a Batch
        record; None: no limit)."""
        self.limits, self.clock, self.max_bytes = limits, clock, max_bytes
        self._open: dict[WindowKey, _Open[T]] = {}
        # per key: (last arrival ms, moving average of the gap between arrivals in ms)
        self._arrivals: dict[WindowKey, tuple[int, float | None]] = {}

    def add(self, key: WindowKey, item: T, tokens: int, size_bytes: int = 0) -> list[Flush[T]]:
        """Put ``item`` in its window; returns the windows this closed (none, the item's own
        window, and/or the window before it if the item would have overflowed its tokens
        or bytes)."""
        now = self.clock()
        self._arrived(key, now)
        tokens = max(0, tokens)
        closed: list[Flush[T]] = []
        window = self._open.get(key)
        if window is not None and window.tokens + tokens > window.limits.max_batch_tokens:
            closed.append(self._close(key, FILL_TOKENS, now))
            window = None
        if window is not None and self.max_bytes is not None and \
                window.size_bytes + size_bytes > self.max_bytes:
            closed.append(self._close(key, FILL_BYTES, now))
            window = None
        if window is None:
            window = self._open[key] = _Open(self.limits(key.priority), now)
        window.items.append(item)
        window.arrivals_ms.append(now)
        window.tokens += tokens
        window.size_bytes += size_bytes
        if len(window.items) >= window.limits.max_batch_size:
            closed.append(self._close(key, FILL_SIZE, now))
        elif window.tokens >= window.limits.max_batch_tokens:
            closed.append(self._close(key, FILL_TOKENS, now))
        elif now >= window.due_at_ms:
            closed.append(self._close(key, FILL_AGE, now))
        elif now >= self._closes_at_ms(key, window):
            closed.append(self._close(key, FILL_QUIET, now))
        return closed

    def due(self) -> list[Flush[T]]:
        """Close every window whose age reached its ``max_wait_ms``, or that waiting can no
        longer fill (``close_when_quiet``)."""
        now = self.clock()
        return [self._close(key, FILL_AGE if now >= w.due_at_ms else FILL_QUIET, now)
                for key, w in list(self._open.items()) if now >= self._closes_at_ms(key, w)]

    def flush_all(self, partitions: Iterable[int] | None = None) -> list[Flush[T]]:
        """Close every window (of ``partitions`` only, if given): shutdown or rebalance."""
        now = self.clock()
        wanted = None if partitions is None else set(partitions)
        return [self._close(key, FILL_SHUTDOWN, now) for key in list(self._open)
                if wanted is None or key.partition in wanted]

    def next_due_ms(self) -> int | None:
        """When the next window closes by age or quiet (epoch ms), or None if none is open."""
        return min((self._closes_at_ms(k, w) for k, w in self._open.items()), default=None)

    def pending(self) -> int:
        """Requests waiting in open windows."""
        return sum(len(w.items) for w in self._open.values())

    def open_windows(self) -> int:
        return len(self._open)

    def snapshot(self) -> list[tuple[WindowKey, int, int]]:
        """(key, requests, opened_at_ms) of every open window."""
        return [(key, len(w.items), w.opened_at_ms) for key, w in self._open.items()]

    def _arrived(self, key: WindowKey, now: int) -> None:
        last = self._arrivals.get(key)
        if last is None:
            self._arrivals[key] = (now, None)
            return
        self._arrivals[key] = (now, gap_average(last[1], max(0, now - last[0])))

    def _closes_at_ms(self, key: WindowKey, w: _Open[T]) -> int:
        """When the window closes unless a request fills it first. Without an arrival
        history (a key's first request) it waits its full ``max_wait_ms``."""
        if not w.limits.close_when_quiet:
            return w.due_at_ms
        last, gap = self._arrivals.get(key, (w.opened_at_ms, None))
        if gap is None:
            return w.due_at_ms
        if 2 * gap >= w.due_at_ms - last:  # fewer than two more expected in time: not worth it
            return last
        return min(w.due_at_ms, (last + w.due_at_ms) // 2)

    def _close(self, key: WindowKey, reason: str, now: int) -> Flush[T]:
        w = self._open.pop(key)
        return Flush(key, w.items, w.arrivals_ms, w.tokens, w.opened_at_ms, now, reason)
