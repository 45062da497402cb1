"""Which hops dispatch has already finished, so a Batch re-read after a crash or a rebalance
(or its requests re-batched) does not call the provider again for them.

A hop is one RoutedRequest at one deployment: tenant and request id, deployment, how many deployments
it had tried, route rule and priority. A failover to the next deployment, a Batch API item
sent back to the live path (rule ``batch_retry``) or a re-route back to an earlier
deployment are new hops and are never mistaken for a finished one.

The record lives in a Faust table on the llm.batches partitions (the deployment's
partition, so the worker that dispatches a deployment holds its record), written only
after the hop's outputs are on the broker: a crash before that re-does the hop (billed
once, as before), never loses it. Each write and delete is logged to the deployment's
partition through ``pins`` (the table is a PinnedTable), also when intake dispatched the
hop while processing a llm.requests record (pipeline/agents/inline.py). Rows carry their
partition so a sweep deletes only rows of the partition it was asked for."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from pipeline.aging import Aging
from pipeline.events.ids import request_key
from pipeline.events.models import RoutedRequest


def hop_key(routed: RoutedRequest) -> str:
    """Scoped by tenant, as every request key (pipeline/events/ids.py): another tenant's
    request with the same id is another hop."""
    r = routed.request
    return "|".join((request_key(r.tenant, r.request_id), routed.route.deployment,
                     str(len(routed.tried)), routed.route.rule, r.hints.priority or ""))


class FinishedHops:
    """``table`` maps hop key -> {"p": partition, "at": epoch ms}; a dict in unit tests.
    ``pins``: the table's key -> changelog partition map, set around each write."""

    def __init__(self, table: MutableMapping[str, Any], window_ms: int,
                 sweep_every_ms: int = 60_000, pins: dict[str, int] | None = None):
        self.table, self.window_ms, self.sweep_every_ms = table, window_ms, sweep_every_ms
        self.pins = pins if pins is not None else {}
        self._last_sweep: dict[int, int] = {}
        self._aging = Aging()                   # hops by partition, oldest first

    def forget_partitions(self) -> None:
        """After a rebalance: partitions are indexed afresh from the table."""
        self._aging.forget()

    def finished(self, routed: RoutedRequest) -> bool:
        return hop_key(routed) in self.table

    def record(self, items: list[RoutedRequest], partition: int, now_ms: int) -> None:
        for routed in items:
            key = hop_key(routed)
            self.pins[key] = partition
            self.table[key] = {"p": partition, "at": now_ms}
            del self.pins[key]
            self._aging.add(partition, now_ms, key)
        self.sweep(partition, now_ms)

    def sweep(self, partition: int, now_ms: int) -> int:
        """Forget ``partition``'s hops older than the window (at most once a minute)."""
        if now_ms - self._last_sweep.get(partition, 0) < self.sweep_every_ms:
            return 0
        self._last_sweep[partition] = now_ms
        if not self._aging.indexed(partition):   # once per assignment: read its rows
            self._aging.known(partition, [(row.get("at", 0), key) for key, row
                                          in list(self.table.items()) if row.get("p") == partition])
        old = []
        for _, key in self._aging.due(partition, now_ms - self.window_ms):
            row = self.table.get(key)
            if row is not None and row.get("p") == partition and now_ms - row.get("at", 0) > self.window_ms:
                old.append(key)
        for key in old:
            self.pins[key] = partition
            del self.table[key]
            del self.pins[key]
        return len(old)
