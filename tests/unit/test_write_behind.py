"""A table wrapped in WriteBehind sends each key's latest value once per flush, in the order
of the last writes, and every Faust commit flushes and waits for the broker's
acknowledgements first (so an offset is never committed ahead of its events' table
writes). The restart test with a real worker: tests/integration/test_alerting.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from mode.signals import Signal

from pipeline.kafka import write_behind
from pipeline.kafka.write_behind import WriteBehind


@pytest.fixture(autouse=True)
def only_this_tests_tables():
    """Commits go through every WriteBehind of the process: keep other tests' out."""
    write_behind._tables.clear()
    yield
    write_behind._tables.clear()


class Table:
    """What WriteBehind touches of a Faust table: send_changelog (returning the message's
    future, acknowledged at once unless ``hold``), name and app."""

    name = "t"

    def __init__(self, hold: bool = False):
        self.sent: list[tuple] = []
        self.futures: list[asyncio.Future] = []
        self.hold = hold
        self.app = SimpleNamespace(on_partitions_revoked=Signal())

    def send_changelog(self, partition, key, value, key_serializer=None, value_serializer=None):
        self.sent.append((partition, key, value, value_serializer))
        try:
            fut = asyncio.get_running_loop().create_future()
        except RuntimeError:                 # no loop: nothing will wait for it
            return None
        if not self.hold:
            fut.set_result(None)
        self.futures.append(fut)
        return fut


def test_writes_to_one_key_go_out_once_with_the_latest_value():
    table = Table()
    buffered = WriteBehind(table)
    for n in range(5):
        assert table.send_changelog(3, "spend|acme", {"n": n}).message.partition == 3
    table.send_changelog(3, "latency|acme", {"n": 1})
    table.send_changelog(3, "spend|acme", {"n": 9})
    table.send_changelog(4, "gone", None, value_serializer="raw")      # a delete
    assert table.sent == [] and buffered.pending == 3
    assert buffered.flush() == 3
    assert table.sent == [(3, "latency|acme", {"n": 1}, None), (3, "spend|acme", {"n": 9}, None),
                          (4, "gone", None, "raw")]
    assert (buffered.writes, buffered.sent, buffered.pending) == (8, 3, 0)
    assert buffered.flush() == 0


def test_max_pending_keys_flush_at_once():
    table = Table()
    WriteBehind(table, max_pending=2)
    table.send_changelog(0, "a", 1)
    table.send_changelog(0, "a", 2)
    assert table.sent == []
    table.send_changelog(0, "b", 1)
    assert table.sent == [(0, "a", 2, None), (0, "b", 1, None)]


def replacing(name: str, fake):
    """Run a coroutine with Faust's own ``name`` (as write_behind saved it) replaced."""
    async def run(coro):
        saved = getattr(write_behind, name)
        setattr(write_behind, name, fake)
        try:
            return await coro
        finally:
            setattr(write_behind, name, saved)
    return run


def test_a_commit_sends_the_writes_before_faust_counts_its_offsets():
    """No await between the flush and Faust's counting of the offsets to commit: an event
    acknowledged after the flush cannot be counted with its writes still queued."""
    assert FaustConsumer._commit_tps is write_behind.commit_tps
    table = Table(hold=True)
    WriteBehind(table)
    counted = []

    async def original(consumer, tps, start_new_transaction):
        counted.append(list(table.sent))     # Faust's _filter_committable_offsets runs here
        return True

    async def scenario():
        table.send_changelog(1, "k", "v")
        return await write_behind.commit_tps(object(), [], start_new_transaction=True)

    assert asyncio.run(replacing("_commit_tps", original)(scenario()))
    assert counted == [[(1, "k", "v", None)]]


def recording(committed: list):
    """Faust's ``_commit_offsets`` as a stand-in that records what it was asked to commit."""
    async def original(consumer, offsets, start_new_transaction=True):
        committed.append(offsets)
        return True
    return original


def test_the_offsets_are_committed_only_once_the_writes_are_acknowledged():
    assert FaustConsumer._commit_offsets is write_behind.commit_offsets
    table = Table(hold=True)
    buffered = WriteBehind(table)
    committed = []
    original = recording(committed)

    async def scenario():
        table.send_changelog(1, "k", "v")
        buffered.flush()
        commit = asyncio.ensure_future(write_behind.commit_offsets(object(), {"tp": 5}))
        await asyncio.sleep(0.05)
        assert committed == []                                   # sent, not acknowledged
        table.futures[0].set_result(None)
        return await commit

    assert asyncio.run(replacing("_commit_offsets", original)(scenario()))
    assert committed == [{"tp": 5}]


def test_a_write_the_broker_refuses_skips_the_commit_and_goes_again():
    table = Table(hold=True)
    buffered = WriteBehind(table)
    committed = []
    original = recording(committed)

    async def scenario():
        table.send_changelog(1, "a", "A1")
        table.send_changelog(1, "b", "B1")
        buffered.flush()
        commit = asyncio.ensure_future(write_behind.commit_offsets(object(), {"tp": 5}))
        await asyncio.sleep(0.05)
        table.futures[0].set_exception(RuntimeError("NotLeaderForPartition"))
        table.futures[1].set_result(None)
        table.send_changelog(1, "c", "C1")                    # written meanwhile
        assert await commit is False and committed == []
        assert buffered.pending == 2                          # a again, before c
        table.hold = False
        buffered.flush()
        assert await write_behind.commit_offsets(object(), {"tp": 6})
        return table.sent

    sent = asyncio.run(replacing("_commit_offsets", original)(scenario()))
    assert sent[2:] == [(1, "a", "A1", None), (1, "c", "C1", None)] and committed == [{"tp": 6}]


def test_a_revocation_sends_what_waits_and_waits_for_its_acknowledgement():
    table = Table()
    WriteBehind(table)

    async def scenario():
        table.send_changelog(2, "k", "v")
        await table.app.on_partitions_revoked.send(object(), set())
        return table.futures

    futures = asyncio.run(scenario())
    assert table.sent == [(2, "k", "v", None)] and len(futures) == 1 and futures[0].done()


def test_a_write_the_producer_refuses_stays_with_those_after_it():
    table = Table()
    buffered = WriteBehind(table)
    for key in "abc":
        table.send_changelog(0, key, key.upper())

    def refuse_b(partition, key, value, key_serializer=None, value_serializer=None):
        if key == "b":
            raise RuntimeError("producer not running")
        table.sent.append((partition, key, value, value_serializer))
    original, buffered._send = buffered._send, refuse_b
    try:
        buffered.flush()
    except RuntimeError:
        pass
    assert table.sent == [(0, "a", "A", None)] and buffered.pending == 2
    buffered._send = original
    assert buffered.flush() == 2
    assert table.sent[1:] == [(0, "b", "B", None), (0, "c", "C", None)]
