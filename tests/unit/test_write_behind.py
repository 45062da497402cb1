"""A table wrapped in WriteBehind sends each key's latest value once per flush, in the order
of the last writes, and every Faust commit flushes first (so an offset is never committed
ahead of its events' table writes). The restart test with a real worker:
tests/integration/test_alerting.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.transport.consumer import Consumer as FaustConsumer
from mode.signals import Signal

from pipeline.kafka import write_behind
from pipeline.kafka.write_behind import WriteBehind


class Table:
    """What WriteBehind touches of a Faust table: send_changelog and app."""

    def __init__(self):
        self.sent: list[tuple] = []
        self.flushes = 0
        producer = SimpleNamespace(flush=self._producer_flush)
        self.app = SimpleNamespace(on_partitions_revoked=Signal(), producer=producer)

    def send_changelog(self, partition, key, value, key_serializer=None, value_serializer=None):
        self.sent.append((partition, key, value, value_serializer))

    async def _producer_flush(self):
        self.flushes += 1


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


def test_every_commit_flushes_first():
    assert FaustConsumer._commit_tps is write_behind.commit_tps
    table = Table()
    WriteBehind(table)
    table.send_changelog(1, "k", "v")
    seen = []

    async def original(consumer, tps, start_new_transaction):
        seen.append(list(table.sent))
        return True

    saved, write_behind._commit_tps = write_behind._commit_tps, original
    try:
        assert asyncio.run(write_behind.commit_tps(object(), [], start_new_transaction=True))
    finally:
        write_behind._commit_tps = saved
    assert seen == [[(1, "k", "v", None)]]


def test_a_revocation_sends_what_waits_and_waits_for_the_producer():
    table = Table()
    WriteBehind(table)
    table.send_changelog(2, "k", "v")
    asyncio.run(table.app.on_partitions_revoked.send(object(), set()))
    assert table.sent == [(2, "k", "v", None)] and table.flushes == 1
    asyncio.run(table.app.on_partitions_revoked.send(object(), set()))
    assert table.flushes == 1                       # nothing waited: no producer flush


def test_a_write_the_producer_refuses_stays_with_those_after_it():
    table = Table()
    buffered = WriteBehind(table)
    for key in "abc":
        table.send_changelog(0, key, key.upper())
    calls = []

    def refuse_b(partition, key, value, key_serializer=None, value_serializer=None):
        calls.append(key)
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
