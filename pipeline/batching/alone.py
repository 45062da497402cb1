"""A request whose priority has no window (``max_wait_ms: 0``) skips the batcher: intake
publishes it as a Batch of one straight to llm.batches, one Kafka hop fewer (~10–14 ms on
the embedded broker, docs/BENCHMARKS.md). The record is keyed by the deployment like its
RoutedRequest would have been, and llm.routed and llm.batches share the `deployment`
partition group, so it lands on the very partition the batcher would have used: dispatch
of a deployment keeps its one owner, and its limits stay exact. Re-routes after a failover
still go through llm.routed and the batcher, which flushes a zero window on arrival."""

from __future__ import annotations

import uuid

from pipeline.batching.config import BatchingConfig
from pipeline.batching.window import FILL_AGE
from pipeline.events.models import Batch, RoutedRequest


def windowless(config: BatchingConfig, routed: RoutedRequest) -> str | None:
    """The priority ``routed`` travels at if that priority has no window, else None."""
    priority = config.priority_of(routed.request.hints.priority)
    return priority if config.limits(priority).max_wait_ms == 0 else None


def batch_of_one(routed: RoutedRequest, priority: str, now_ms: int) -> Batch:
    """What the batcher would publish for a zero window: the request alone, closed on
    arrival (fill reason ``age``, opened = flushed)."""
    return Batch(batch_id=str(uuid.uuid4()), deployment=routed.route.deployment,
                 opened_at_ms=now_ms, flushed_at_ms=now_ms, items=[routed], priority=priority,
                 fill_reason=FILL_AGE)
