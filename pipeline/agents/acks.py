"""Acknowledge a partition's messages strictly in offset order, each only once its
effects (provider call, produced events, ClickHouse insert) are done.

Why: Faust commits the highest *contiguous* acked offset, but its gap check is off by one
(consumer._new_offset: with offset N in flight and N+1 acked it commits N+2), so acking out
of order can commit past a message still in flight — faust #606; a crash then loses it.
Holding acks back until every earlier message of the partition is done means Faust only
ever sees a contiguous run from the committed offset, so a commit can never pass work
that has not finished. Slow requests delay the commit, never the processing.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable


@dataclass
class Ticket:
    partition: Hashable
    offset: int
    item: Any
    done: bool = field(default=False)


class InOrderAcker:
    def __init__(self, ack: Callable[[Any], Any]):
        self._ack = ack
        self._queues: dict[Hashable, deque[Ticket]] = defaultdict(deque)

    def track(self, partition: Hashable, offset: int, item: Any) -> Ticket:
        """Register a message as read (call in the order the stream yields them)."""
        ticket = Ticket(partition, offset, item)
        self._queues[partition].append(ticket)
        return ticket

    def done(self, ticket: Ticket) -> int:
        """Mark a message's effects done; ack every finished message at the head of its
        partition. Returns how many were acked."""
        ticket.done = True
        queue = self._queues[ticket.partition]
        acked = 0
        while queue and queue[0].done:
            self._ack(queue.popleft().item)
            acked += 1
        return acked

    def in_flight(self) -> int:
        return sum(len(q) for q in self._queues.values())
