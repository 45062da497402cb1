"""Commit only what every stream finished, and read again a record a stream lost. Applied
when imported (pipeline.kafka.faust_tuning imports it).

**How Faust lost a record without a crash.** Around a rebalance Faust drops deliveries on
purpose: a stream skips an event taken while the flow is paused or fetched in an older
consumer generation (faust/streams.py, acking its own reference), a revocation clears the
streams' queues, a delivery waiting on a paused flow is cancelled. The seek to committed
offsets after the rebalance is meant to read them again. Three things defeat that:

- the commit rule (``Consumer._new_offset``) lets through one missing offset at the head
  of the acked run (``min(acked) - committed > 1``, faust #606), and checks nothing while a
  partition has never been committed, so once later offsets are done the commit passes a
  record nobody processed;
- records fetched before a seek can still be delivered after it; each moves Faust's read
  offset up, and the records the seek fetches again below it are dropped as already read;
- a jump in delivered offsets is booked as a gap (``_add_gap``) and gaps count as acked.

Found by tracing ``tests/integration/test_crash_recovery.py`` under CPU contention: after
the recovered worker's seek, ``llm.usage[3]@4`` reached the conductor, the ledger's stream
skipped it, no agent acked it, offsets 5.. were done and the commit went from 4 to 56: the
request's usage row was missing for good (one run in four).

**The rules here.** Every agent acks in offset order (pipeline/agents/acks.py) and every
topic an agent reads has contiguous offsets (no compaction, no transactions: compacted
topics are read by plain consumers), so:

1. A commit covers only a run of acked offsets that starts exactly at the committed offset
   (on a partition never committed: the lowest offset delivered since it was assigned).
   Offsets missing below acked ones are a *hole*; gaps are never booked as acked.
2. A hole still there ``HOLE_GRACE_S`` later is a lost delivery, not an ack on its way: the
   partition is sought back to it and the record is read again; the records after it come
   again and are repeats to every agent (acks.py), so nothing is done twice.
3. While rule 2's seek is on its way (it runs in the consumer's thread), the partition
   delivers nothing past the hole: records fetched before the seek are passed over, to
   come again in order. The hold is set before the seek is sent, so the record it waits
   for can only arrive after it. (Not done after Faust's own seek to committed offsets:
   the drain may already deliver from the new position before that seek returns, and a
   hold set then would wait for a record already delivered. Records fetched before that
   seek and delivered after it are left to rules 1 and 2: a full-suite run with such a
   hold lost requests in both rebalance tests.)

**A skipped event is never acked, with Faust's compiled stream iterator** (the one
faust-streaming's wheels ship, used unless ``NO_CYTHON`` is set): it drops a skipped
message without touching it, so the offset stays a hole until the copy read again is done
(rules 1 and 2). Faust's pure-Python iterator (``Stream._py_aiter``) acks what it skips
instead; after a revocation has cleared the acked offsets, that ack can book the committed
offset while its re-read copy is still being processed, and a crash then would lose the
record for that agent. :func:`stream_iterator_problem` names that case; the worker logs it
at start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any, Callable

from aiokafka.structs import TopicPartition
import faust.streams
from faust.transport.consumer import Consumer as FaustConsumer

log = logging.getLogger("llmpipe.worker")

#: How long a hole may last before it is taken for a lost record (the commit timer calls
#: every ``broker_commit_interval``; an ack is never that late behind a later one).
HOLE_GRACE_S = 1.0
#: A re-read whose record never arrives (deleted by retention meanwhile) stops waiting.
REREAD_TIMEOUT_S = 30.0

_new_offset = FaustConsumer._new_offset
_commit = FaustConsumer.commit
_perform_seek = FaustConsumer.perform_seek
_drain_messages = FaustConsumer._drain_messages
_on_partitions_revoked = FaustConsumer.on_partitions_revoked


class ReadOffsets(defaultdict):
    """Faust's read offset per partition, held at a re-read's position until that record
    is delivered: Faust drops records below its read offset as already read, so a record
    fetched before the seek must not move it past what the seek fetches again."""

    def __init__(self, current: dict | None = None):
        super().__init__(lambda: None, current or {})
        #: Partitions sought and not yet read back: (position, when).
        self.sought: dict[Any, tuple[int, float]] = {}

    def __setitem__(self, tp: Any, offset: int | None) -> None:
        sought = self.sought.get(tp)
        if sought is not None and offset is not None and offset > sought[0]:
            return
        super().__setitem__(tp, offset)

    def hold(self, tp: Any, position: int) -> None:
        self.sought[tp] = (position, time.monotonic())
        super().__setitem__(tp, position if position else None)

    def passes(self, tp: Any, offset: int) -> bool:
        """May the record at ``offset`` be delivered? Clears the hold once it is read back."""
        sought = self.sought.get(tp)
        if sought is None:
            return True
        position, since = sought
        if offset > position and time.monotonic() - since < REREAD_TIMEOUT_S:
            return False
        del self.sought[tp]
        return True


class Books:
    """Per consumer: the lowest offset delivered per partition since it was assigned, the
    holes seen by the commit rule (partition -> (offset, first seen)), and the holes read
    again ((partition, offset) -> when)."""

    def __init__(self) -> None:
        self.lowest: dict[Any, int] = {}
        self.holes: dict[Any, tuple[int, float]] = {}
        self.reread: dict[tuple[Any, int], float] = {}

    def forget(self, tps) -> None:
        for tp in tps:
            self.lowest.pop(tp, None)
            self.holes.pop(tp, None)
        self.reread = {key: at for key, at in self.reread.items() if key[0] not in tps}


def books(consumer: Any) -> Books:
    found = consumer.__dict__.get("_llmpipe_books")
    if found is None:
        found = consumer._llmpipe_books = Books()
    return found


def read_offsets(consumer: Any) -> ReadOffsets:
    current = consumer._read_offset
    if not isinstance(current, ReadOffsets):
        current = consumer._read_offset = ReadOffsets(current)
    return current


def head(consumer: Any, tp: Any) -> int | None:
    """The offset a commit of ``tp`` must start from; None when unknown."""
    committed = consumer._committed_offset.get(tp)
    return committed if committed is not None else books(consumer).lowest.get(tp)


def new_offset(self: FaustConsumer, tp: Any) -> int | None:
    acked = self._acked.get(tp)
    if acked:
        start, holes = head(self, tp), books(self).holes
        if start is not None and min(acked) > start:
            if holes.get(tp, (None,))[0] != start:
                holes[tp] = (start, time.monotonic())
            return None
        holes.pop(tp, None)
    return _new_offset(self, tp)


async def add_gap(self: FaustConsumer, tp: Any, offset_from: int, offset_to: int) -> None:
    """Never book a jump in delivered offsets as acked (rule 1)."""


def delivering(consumer: Any, callback: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The conductor's callback, passing over records a re-read will bring again (rule 3) and
    noting the lowest offset delivered per partition (rule 1)."""
    reads, lowest = read_offsets(consumer), books(consumer).lowest

    def deliver(message: Any):
        tp, offset = message.tp, message.offset
        if not reads.passes(tp, offset):
            return asyncio.sleep(0)
        if offset < lowest.get(tp, offset + 1):
            lowest[tp] = offset
        return callback(message)
    return deliver


async def drain_messages(self: FaustConsumer, fetcher: Any) -> None:
    callback = self.callback
    self.callback = delivering(self, callback)
    try:
        await _drain_messages(self, fetcher)
    finally:
        self.callback = callback


async def perform_seek(self: FaustConsumer) -> None:
    """After a rebalance every partition reads from its committed offset again: holes
    and re-reads under way are moot."""
    await _perform_seek(self)
    books(self).holes.clear()
    read_offsets(self).sought.clear()


async def commit(self: FaustConsumer, *args: Any, **kwargs: Any) -> bool:
    done = await _commit(self, *args, **kwargs)
    await reread_holes(self)
    return done


async def reread_holes(consumer: FaustConsumer) -> None:
    """Rule 2: seek each partition whose hole outlived the grace back to it."""
    known = books(consumer)
    holes = known.holes
    if not holes or consumer.app.rebalancing or not consumer.flow_active:
        return
    now, assigned = time.monotonic(), consumer.assignment()
    for tp, (offset, since) in list(holes.items()):
        if tp not in assigned:
            del holes[tp]
        elif now - since >= HOLE_GRACE_S:
            next_done = min(consumer._acked.get(tp) or [offset])
            reread_at = known.reread.get((tp, offset))
            if reread_at is not None:
                # Read again already: its processing may still be under way. Past the
                # re-read timeout it is not coming (deleted by retention?): say so once;
                # commits of the partition stay below it, a restart reads from there.
                if now - reread_at >= REREAD_TIMEOUT_S:
                    del holes[tp]
                    log.error("lost_record_not_back topic=%s partition=%d offset=%d "
                              "next_done=%d: not committing past it", tp.topic, tp.partition,
                              offset, next_done)
                continue
            del holes[tp]
            if not seek_in_thread(consumer, tp, offset):
                continue
            known.reread[(tp, offset)] = now
            read_offsets(consumer).hold(tp, offset)
            log.warning("reread_lost_record topic=%s partition=%d offset=%d next_done=%d: a "
                        "delivery Faust dropped around a rebalance; reading the partition "
                        "again from it (records after it come again as repeats)",
                        tp.topic, tp.partition, offset, next_done)


async def on_partitions_revoked(self: FaustConsumer, revoked: Any) -> None:
    books(self).forget(revoked)
    reads = read_offsets(self)
    for tp in revoked:
        reads.sought.pop(tp, None)
    await _on_partitions_revoked(self, revoked)


def in_consumer_thread(consumer: Any, apply: Callable[[Any], None]) -> bool:
    """Run ``apply(aiokafka consumer)`` in the consumer thread's loop, after whatever was
    queued there before (aiokafka's pause and seek touch that loop's futures); False when
    there is no such consumer (yet, or any more)."""
    thread = getattr(consumer, "_thread", None)
    client = getattr(thread, "_consumer", None)
    loop = getattr(thread, "thread_loop", None)
    if client is None or loop is None or loop.is_closed():
        return False
    loop.call_soon_threadsafe(apply, client)
    return True


def seek_in_thread(consumer: Any, partition: Any, offset: int) -> bool:
    """aiokafka's seek of ``partition`` to ``offset``, if it is still assigned then."""
    tp = TopicPartition(partition.topic, partition.partition)

    def apply(client: Any) -> None:
        if tp in client.assignment():
            client.seek(tp, offset)
    return in_consumer_thread(consumer, apply)


FaustConsumer._new_offset = new_offset
FaustConsumer._add_gap = add_gap
FaustConsumer.commit = commit
FaustConsumer.perform_seek = perform_seek
FaustConsumer._drain_messages = drain_messages
FaustConsumer.on_partitions_revoked = on_partitions_revoked


def stream_iterator_problem() -> str | None:
    """Why Faust's stream iterator here can lose a record around a rebalance, or None (the
    compiled iterator, which never acks a skipped event)."""
    if faust.streams._CStreamIterator is not None:
        return None
    return ("Faust's compiled stream iterator is not available (NO_CYTHON set, or "
            "faust-streaming installed without its extension): its pure-Python iterator "
            "acks an event it skips during a rebalance, so a crash right after one can "
            "lose a record; unset NO_CYTHON or install faust-streaming's binary wheel")
