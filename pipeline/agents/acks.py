"""Acknowledge a partition's messages strictly in offset order, each only once its
effects (provider call, produced events, ClickHouse insert) are done.

Why: Faust commits the highest *contiguous* acked offset, but its gap check is off by one
(consumer._new_offset: with offset N in flight and N+1 acked it commits N+2), so acking out
of order can commit past a message still in flight — faust #606; a crash then loses it.
Holding acks back until every earlier message of the partition is done means Faust only
ever sees a contiguous run from the committed offset, so a commit can never pass work
that has not finished. Slow requests delay the commit, never the processing.

The same message can also reach one process twice without a crash: at start-up Faust
resumes the stream partitions and only then seeks them back to their committed offsets
(faust/tables/recovery.py ``_resume_streams``), so what was fetched in between comes again.
A message whose offset this acker has already tracked is marked ``repeat``: the caller
does nothing with it (its first delivery is, or was, done here and its outputs published)
and marks it done at once; the in-order queue still acks it only after the first delivery.
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
    repeat: bool = field(default=False)   # this process has tracked this offset before


class InOrderAcker:
    def __init__(self, ack: Callable[[Any], Any]):
        self._ack = ack
        self._queues: dict[Hashable, deque[Ticket]] = defaultdict(deque)
        # Per partition, the offsets tracked so far as a few [first, last] ranges: a
        # partition is read in order, so a range only grows at its end; a seek or a partition
        # coming back elsewhere starts another.
        self._seen: dict[Hashable, list[list[int]]] = defaultdict(list)
        self.repeats = 0

    def track(self, partition: Hashable, offset: int, item: Any) -> Ticket:
        """Register a message as read (call in the order the stream yields them)."""
        ticket = Ticket(partition, offset, item)
        ranges = self._seen[partition]
        if any(lo <= offset <= hi for lo, hi in ranges):
            ticket.repeat = True
            self.repeats += 1
        else:
            for r in ranges:
                if offset == r[1] + 1:
                    r[1] = offset
                    break
                if offset == r[0] - 1:
                    r[0] = offset
                    break
            else:
                ranges.append([offset, offset])
            _merge(ranges)
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


def _merge(ranges: list[list[int]]) -> None:
    ranges.sort()
    i = 0
    while i + 1 < len(ranges):
        if ranges[i][1] + 1 >= ranges[i + 1][0]:
            ranges[i][1] = max(ranges[i][1], ranges[i + 1][1])
            del ranges[i + 1]
        else:
            i += 1
