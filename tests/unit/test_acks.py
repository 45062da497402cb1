"""In-order acking: a partition's offset is never acked before every earlier one is done."""

from __future__ import annotations


from hypothesis import given, strategies as st

from pipeline.agents.acks import InOrderAcker


def test_out_of_order_completion_acks_in_order():
    acked = []
    acker = InOrderAcker(acked.append)
    t = [acker.track("p0", off, off) for off in range(5)]
    acker.done(t[1]); acker.done(t[3])
    assert acked == []                      # offset 0 still in flight: nothing may be acked
    acker.done(t[0])
    assert acked == [0, 1]
    acker.done(t[4]); acker.done(t[2])
    assert acked == [0, 1, 2, 3, 4]
    assert acker.in_flight() == 0


def test_partitions_are_independent():
    acked = []
    acker = InOrderAcker(acked.append)
    slow = acker.track("p0", 0, "p0-0")
    fast = acker.track("p1", 0, "p1-0")
    acker.done(fast)
    assert acked == ["p1-0"]
    acker.done(slow)
    assert acked == ["p1-0", "p0-0"]


@given(st.lists(st.integers(0, 3), min_size=1, max_size=60), st.randoms())
def test_acked_prefix_is_always_contiguous(partitions, rnd):
    acked: list[tuple[int, int]] = []
    acker = InOrderAcker(acked.append)
    tickets, next_offset = [], {}
    for p in partitions:
        off = next_offset.get(p, 0)
        next_offset[p] = off + 1
        tickets.append(acker.track(p, off, (p, off)))
    finished: set[tuple[int, int]] = set()
    order = list(tickets)
    rnd.shuffle(order)
    for ticket in order:
        acker.done(ticket)
        finished.add((ticket.partition, ticket.offset))
        for p in next_offset:
            offs = [o for (q, o) in acked if q == p]
            assert offs == list(range(len(offs)))               # contiguous from 0
            assert all((p, o) in finished for o in offs)        # only finished work is acked
    assert sorted(acked) == sorted((t.partition, t.offset) for t in tickets)


def test_a_message_delivered_twice_to_one_process_is_a_repeat_acked_after_the_first():
    """Faust resumes stream partitions before seeking them back to the committed offset, so
    a freshly started worker can be handed offsets 10..12 and then 10..14 again."""
    acked = []
    acker = InOrderAcker(acked.append)
    first = [acker.track("p0", off, ("first", off)) for off in (10, 11, 12)]
    again = [acker.track("p0", off, ("again", off)) for off in (10, 11, 12, 13, 14)]
    assert [t.repeat for t in first + again] == [False] * 3 + [True] * 3 + [False] * 2
    for t in again[:3]:
        acker.done(t)                  # a repeat is done at once ...
    assert acked == []                 # ... but acked only after its first delivery
    for t in first:
        acker.done(t)
    assert acked[:6] == [("first", 10), ("first", 11), ("first", 12),
                         ("again", 10), ("again", 11), ("again", 12)]
    assert acker.repeats == 3


def test_offsets_seen_only_on_one_partition_or_range_are_not_repeats():
    acker = InOrderAcker(lambda item: None)
    assert not acker.track("p0", 5, 1).repeat and not acker.track("p1", 5, 2).repeat
    assert not acker.track("p0", 100, 3).repeat        # a jump: another range
    assert not acker.track("p0", 4, 4).repeat and not acker.track("p0", 6, 5).repeat
    assert acker.track("p0", 100, 6).repeat and acker.track("p0", 5, 7).repeat
    assert not acker.track("p0", 50, 8).repeat
