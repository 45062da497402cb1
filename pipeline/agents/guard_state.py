"""Guard state that survives a rebalance: each deployment's breaker and limiter levels
(pipeline/resilience/guard.py) in a Faust table on the deployment's llm.batches partition,
so the worker a rebalance hands the partition to continues where the last one stopped
instead of starting with full buckets — a burst past the deployment's RPM/TPM limit after
every rebalance.

When it is written: by a timer every ``tick_s`` for each guard that admitted or ended a
call since its last write, and once more when partitions are revoked or the worker stops —
after Faust has waited for the events in flight, so the last owner's calls are in it —
followed by a producer flush, so the record is on the broker before the group re-forms and
the next owner recovers the table. A crash (no revoke) loses at most ``tick_s`` of admissions: the
next owner's limits are that much too generous once. What is not carried: the health
window (a fresh one needs ``min_samples`` again before it demotes) and calls in flight."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from typing import Any

import faust

from pipeline.clock import now_ms
from pipeline.dispatch import Dispatcher

log = logging.getLogger("llmpipe.dispatch")


class PinnedTable(faust.Table):
    """A table whose key is logged to the changelog partition ``pins[key]`` wherever it is
    written from (a timer, a rebalance callback), not the partition of the event being
    processed; Faust's own rule needs an event in progress."""

    pins: Mapping[Any, int] = {}

    def partition_for_key(self, key: Any) -> int:
        return self.pins[key]


def register_guard_state(app: faust.App, dispatcher: Dispatcher, partition_of: dict[str, int],
                         partitions: int, tick_s: float) -> faust.Table:
    """``partition_of``: deployment id -> the llm.batches partition its Batches arrive on
    (kept by the dispatch agent); only those deployments' guards are written and restored —
    a guard made here for a hedge to another worker's deployment is not this worker's."""
    table = app.tables.add(PinnedTable(
        app, name="guards", partitions=partitions, beacon=app.tables.beacon,
        help="breaker and limiter state per deployment",
        schema=faust.Schema(key_serializer="json", value_serializer="json")))
    table.pins = partition_of
    written: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # guard -> changes written
    handing_over = False

    def save() -> int:
        saved = 0
        for dep, guard in dispatcher.guards.items():
            if dep in partition_of and written.get(guard) != guard.changes:
                table[dep] = guard.export(now_ms())
                written[guard] = guard.changes
                saved += 1
        return saved

    def carried(dep: str) -> dict[str, Any] | None:
        state = table.get(dep) if dep in partition_of else None
        if state is not None:
            log.info("guard_restored deployment=%s age_ms=%d breaker=%s request_tokens=%.2f "
                     "minute_calls=%d", dep, now_ms() - int(state["at_ms"]),
                     state["breaker"]["state"], state["limits"]["requests"],
                     sum(n for _, n in state["limits"]["minute"]))
        return state
    dispatcher.guards.carried = carried

    @app.timer(interval=tick_s)
    async def save_guards() -> None:
        if not handing_over:
            save()

    @app.on_partitions_revoked.connect
    async def save_before_handover(sender, revoked, **kwargs) -> None:
        nonlocal handing_over
        handing_over = True
        saved = save()
        await app.producer.flush()
        log.info("guards_saved_for_rebalance deployments=%d", saved)

    @app.on_before_shutdown.connect
    async def save_before_leaving(sender, **kwargs) -> None:
        # after Faust's wait for the events in flight; it flushes the producer next
        log.info("guards_saved_for_shutdown deployments=%d", save())

    @app.on_partitions_assigned.connect
    async def resume_saving(sender, assigned, **kwargs) -> None:
        nonlocal handing_over
        handing_over = False

    return table
