"""Which rows of a partition are old enough to sweep, without reading every row.

The tenancy table keeps every admission for the idempotency window (an hour) and dispatch
keeps every finished hop as long: at 230 requests a second that is ~830,000 rows. Scanning
them all to find the old ones took ~1.9 s of CPU per partition per sweep here — the event
loop blocked for as long, and a third of a core at a sweep every 30 s per partition. An
``Aging`` keeps, per partition, (time, key) in the order rows were added; a sweep looks at
the old end only. Rows read back from a changelog are indexed once, by the caller's full
scan after the partition is assigned (``known``); until then ``indexed`` is False, ``add``
ignores the partition and ``due`` finds nothing in it."""

from __future__ import annotations

from collections import deque
from typing import Hashable, Iterable


class Aging:
    def __init__(self) -> None:
        self._by_partition: dict[int, deque[tuple[int, Hashable]]] = {}

    def indexed(self, partition: int) -> bool:
        return partition in self._by_partition

    def known(self, partition: int, rows: Iterable[tuple[int, Hashable]]) -> None:
        """Index ``partition`` from a full scan: its (time, key) pairs, in any order."""
        self._by_partition[partition] = deque(sorted(rows, key=lambda row: row[0]))

    def add(self, partition: int, at_ms: int, key: Hashable) -> None:
        """A row added now (ignored while the partition is not indexed: its scan finds it)."""
        rows = self._by_partition.get(partition)
        if rows is not None:
            rows.append((at_ms, key))

    def due(self, partition: int, before_ms: int) -> list[tuple[int, Hashable]]:
        """Take the (time, key) pairs added before ``before_ms``, oldest first (the caller
        decides what each row becomes; what stays it gives back with ``keep``)."""
        rows = self._by_partition.get(partition)
        taken: list[tuple[int, Hashable]] = []
        while rows and rows[0][0] < before_ms:
            taken.append(rows.popleft())
        return taken

    def keep(self, partition: int, taken: list) -> None:
        """Give back pairs ``due`` took that are to stay (they are still the oldest)."""
        rows = self._by_partition.get(partition)
        if rows is not None:
            rows.extendleft(reversed(taken))

    def forget(self) -> None:
        """After a rebalance: partitions are indexed afresh from their rows."""
        self._by_partition.clear()
