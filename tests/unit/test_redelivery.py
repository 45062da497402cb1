"""pipeline/kafka/redelivery.py: Faust's commit rule never passes an offset no agent
finished, a hole that lasts is read again, and records fetched before a seek are passed
over until the record sought comes back. The functions run on a stand-in holding the
Faust consumer's own bookkeeping (the real Consumer needs a broker and a running app)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from types import SimpleNamespace

from faust.types import TP
from intervaltree import IntervalTree

from pipeline.kafka import redelivery
from pipeline.kafka.redelivery import ReadOffsets, books, delivering, new_offset, read_offsets

USAGE = TP("llm.usage", 3)


def consumer(committed: int | None = None, acked: list[int] = ()) -> SimpleNamespace:
    c = SimpleNamespace(
        _acked=defaultdict(list), _acked_index=defaultdict(set), _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None), _read_offset=defaultdict(lambda: None),
        app=SimpleNamespace(rebalancing=False), flow_active=True, assignment=lambda: {USAGE})
    c._committed_offset[USAGE] = committed
    c._acked[USAGE].extend(acked)
    c._acked_index[USAGE].update(acked)
    return c


def test_faust_alone_commits_past_a_record_no_agent_acked():
    # What the trace found: 4 never acked, 5 and 6 done, committed 4 -> Faust commits 7.
    c = consumer(committed=4, acked=[5, 6])
    assert redelivery._new_offset(c, USAGE) == 7


def test_a_hole_at_the_committed_offset_holds_the_commit():
    c = consumer(committed=4, acked=[5, 6])
    assert new_offset(c, USAGE) is None
    assert books(c).holes[USAGE][0] == 4
    assert c._acked[USAGE] == [5, 6]            # nothing dropped from the acked run


def test_once_the_hole_is_acked_the_whole_run_commits():
    c = consumer(committed=4, acked=[5, 6])
    new_offset(c, USAGE)
    c._acked[USAGE].append(4)
    assert new_offset(c, USAGE) == 7
    assert USAGE not in books(c).holes


def test_never_committed_partition_starts_at_the_lowest_offset_delivered():
    assert redelivery._new_offset(consumer(acked=[1, 2]), USAGE) == 3    # Faust: no check
    c = consumer(committed=None, acked=[1, 2])
    books(c).lowest[USAGE] = 0
    assert new_offset(c, USAGE) is None
    assert books(c).holes[USAGE][0] == 0


def test_gaps_in_delivered_offsets_are_not_booked_as_acked():
    c = consumer(committed=4, acked=[4])
    asyncio.run(redelivery.add_gap(c, USAGE, 5, 9))
    assert not c._gap[USAGE]
    assert new_offset(c, USAGE) == 5


def test_a_held_read_offset_does_not_move_past_the_position_sought():
    reads = ReadOffsets()
    reads.hold(USAGE, 4)
    reads[USAGE] = 7                             # a record fetched before the seek
    assert reads[USAGE] == 4
    assert not reads.passes(USAGE, 7)
    assert reads.passes(USAGE, 4)                # read back: the hold ends
    reads[USAGE] = 5
    assert reads[USAGE] == 5 and reads.passes(USAGE, 9)


def test_a_hold_at_zero_lets_faust_read_from_the_start():
    reads = ReadOffsets()
    reads.hold(USAGE, 0)
    assert reads[USAGE] is None                  # Faust's "no read offset yet"
    assert not reads.passes(USAGE, 3) and reads.passes(USAGE, 0)


def test_a_hold_whose_record_never_comes_gives_up(monkeypatch):
    monkeypatch.setattr(redelivery, "REREAD_TIMEOUT_S", 0.0)
    reads = ReadOffsets()
    reads.hold(USAGE, 4)
    assert reads.passes(USAGE, 9) and USAGE not in reads.sought


def test_delivery_passes_over_stale_records_and_notes_the_lowest_offset():
    c = consumer()
    got = []

    async def callback(message):
        got.append(message.offset)

    deliver = delivering(c, callback)
    read_offsets(c).hold(USAGE, 4)

    async def run():
        for offset in (6, 7, 4, 5):
            await deliver(SimpleNamespace(tp=USAGE, offset=offset))
    asyncio.run(run())
    assert got == [4, 5]
    assert books(c).lowest[USAGE] == 4


def test_a_lasting_hole_is_read_again_once(monkeypatch, caplog):
    c = consumer(committed=4, acked=[5, 6])
    sought = []
    monkeypatch.setattr(redelivery, "seek_in_thread", lambda cons, tp, offset: sought.append((tp, offset)) or True)
    new_offset(c, USAGE)
    asyncio.run(redelivery.reread_holes(c))
    assert sought == []                          # within the grace: maybe an ack on its way
    books(c).holes[USAGE] = (4, 0.0)             # seen long ago
    with caplog.at_level(logging.WARNING, "llmpipe.worker"):
        asyncio.run(redelivery.reread_holes(c))
    assert sought == [(USAGE, 4)]
    assert read_offsets(c).sought[USAGE][0] == 4
    assert "reread_lost_record" in caplog.text and "offset=4" in caplog.text
    books(c).holes[USAGE] = (4, 0.0)             # still there: maybe being processed
    asyncio.run(redelivery.reread_holes(c))
    assert sought == [(USAGE, 4)] and "lost_record_not_back" not in caplog.text
    books(c).reread[(USAGE, 4)] -= redelivery.REREAD_TIMEOUT_S    # ... and long after
    with caplog.at_level(logging.ERROR, "llmpipe.worker"):
        asyncio.run(redelivery.reread_holes(c))
    assert sought == [(USAGE, 4)]                # not sought again: logged instead
    assert "lost_record_not_back" in caplog.text


def test_no_reread_while_rebalancing_or_for_partitions_gone(monkeypatch):
    sought = []
    monkeypatch.setattr(redelivery, "seek_in_thread", lambda cons, tp, offset: sought.append(offset) or True)
    c = consumer(committed=4, acked=[5])
    books(c).holes[USAGE] = (4, 0.0)
    c.app.rebalancing = True
    asyncio.run(redelivery.reread_holes(c))
    c.app.rebalancing, c.assignment = False, lambda: set()
    asyncio.run(redelivery.reread_holes(c))
    assert sought == [] and not books(c).holes


async def _deliver_stale_then_fresh() -> list:
    """A stream of Faust's own, fed a message fetched in an older consumer generation (one
    it must skip) and then a current one: the offsets it yields, and the stale message."""
    import faust
    from faust.events import Event
    from faust.types.tuples import Message

    app = faust.App("skip-check", broker="kafka://127.0.0.1:1", store="memory://",
                    autodiscover=False)
    app.flow_control.resume()
    stream = app.channel().stream().noack()
    gen = app.consumer_generation_id
    stale, fresh = (Message("llm.usage", 3, offset, 0.0, 0, None, b"k", b"v", None,
                            generation_id=g) for offset, g in ((4, gen - 1), (5, gen)))
    for message in (stale, fresh):
        message.incref()
        await stream.channel.put(Event(app, b"k", b"v", None, message))
    seen = []
    async for event in stream.events():
        seen.append(event.message.offset)
        break
    return [seen, stale]


async def test_faust_compiled_iterator_never_acks_an_event_it_skips():
    """What the commit rules above rely on: a skipped message stays un-acked (a hole) until
    its copy read again is done."""
    assert redelivery.stream_iterator_problem() is None     # the wheel's extension is here
    seen, stale = await _deliver_stale_then_fresh()
    assert seen == [5] and (stale.acked, stale.refcount) == (False, 1)


async def test_faust_python_iterator_acks_what_it_skips_and_the_worker_says_so(monkeypatch):
    import faust.streams
    monkeypatch.setattr(faust.streams, "_CStreamIterator", None)     # as with NO_CYTHON=1
    seen, stale = await _deliver_stale_then_fresh()
    assert seen == [5] and (stale.acked, stale.refcount) == (True, 0)
    assert "can lose a record" in redelivery.stream_iterator_problem()
