"""A request whose priority has no window (``max_wait_ms: 0``) skips the batcher: intake
publishes it as a Batch of one straight to llm.batches, one Kafka hop fewer (~10–14 ms on
the embedded broker, docs/BENCHMARKS.md). The record is keyed by the deployment like its
RoutedRequest would have been, and llm.routed and llm.batches share the `deployment`
partition group, so it lands on the very partition the batcher would have used: dispatch
of a deployment keeps its one owner, and its limits stay exact. Re-routes after a failover
still go through llm.routed and the batcher, which flushes a zero window on arrival.

A priority with ``skip_when_quiet`` has a window, but a request that finds its deployment
quiet skips it the same way: intake keeps the moving average of the gaps between the
deployment's arrivals that the batcher's ``close_when_quiet`` keeps (window.py), and when
fewer than two more requests are expected within ``max_wait_ms`` — the window would close
on arrival anyway — or when it is the first this worker has seen, the request travels as a
Batch of one (fill reason ``quiet``), two Kafka hops fewer. Dense traffic still fills
windows. Intake sees the arrivals of its own tenant partitions only, so with several
workers each judges from its share of the traffic: more requests travel alone, batches are
smaller, nothing else changes."""

from __future__ import annotations

import uuid

from pipeline.batching.window import FILL_AGE, gap_average
from pipeline.events.models import Batch, RoutedRequest


def batch_of_one(routed: RoutedRequest, priority: str, now_ms: int,
                 fill_reason: str = FILL_AGE) -> Batch:
    """What the batcher would publish for a zero window: the request alone, closed on
    arrival (fill reason ``age``, or ``quiet`` for a skipped window; opened = flushed)."""
    return Batch(batch_id=str(uuid.uuid4()), deployment=routed.route.deployment,
                 opened_at_ms=now_ms, flushed_at_ms=now_ms, items=[routed], priority=priority,
                 fill_reason=fill_reason)


class QuietDeployments:
    """Per (deployment, priority): the last arrival and the moving average of the gaps."""

    def __init__(self) -> None:
        self._arrivals: dict[tuple[str, str], tuple[int, float | None]] = {}

    def alone(self, deployment: str, priority: str, now_ms: int, max_wait_ms: int) -> bool:
        """Count this arrival; True if its window would not fill (see the module doc)."""
        key = (deployment, priority)
        last = self._arrivals.get(key)
        if last is None:
            self._arrivals[key] = (now_ms, None)
            return True
        # a gap longer than the window says no more than "quiet"; uncapped, one idle minute
        # would make the next burst's first ~16 requests travel alone, not ~3
        avg = gap_average(last[1], min(max(0, now_ms - last[0]), max_wait_ms))
        self._arrivals[key] = (now_ms, avg)
        return 2 * avg >= max_wait_ms
