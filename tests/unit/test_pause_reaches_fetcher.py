"""Faust's pause and resume reach the aiokafka consumer, in its thread's loop and in call
order (pipeline/kafka/faust_tuning.py)."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

from aiokafka.structs import TopicPartition
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP

from pipeline.kafka import faust_tuning


class Client:
    """aiokafka's consumer as far as pause/resume go: TopicPartitions only, assigned only."""

    def __init__(self, assigned):
        self._assigned, self._paused, self.loops = set(assigned), set(), set()

    def assignment(self):
        return set(self._assigned)

    def paused(self):
        return set(self._paused)

    def pause(self, *tps):
        assert all(type(tp) is TopicPartition and tp in self._assigned for tp in tps)
        self.loops.add(asyncio.get_running_loop())
        self._paused.update(tps)

    def resume(self, *tps):
        assert all(type(tp) is TopicPartition and tp in self._assigned for tp in tps)
        self._paused.difference_update(tps)


def consumer_on_a_thread(client):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = SimpleNamespace(_thread=SimpleNamespace(_consumer=client, thread_loop=loop),
                           _active_partitions=set(), _paused_partitions=set())
    fake._get_active_partitions = lambda: fake._active_partitions
    return fake, loop, thread


def settle(loop):
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)


def test_faust_pause_and_resume_are_applied_to_aiokafka_in_its_loop_in_order():
    assert FaustConsumer.pause_partitions is faust_tuning.pause_partitions
    stream, changelog, gone = TP("llm.requests", 0), TP("x-tenancy-changelog", 0), TP("old", 3)
    client = Client({TopicPartition(*stream), TopicPartition(*changelog)})
    consumer, loop, thread = consumer_on_a_thread(client)
    try:
        FaustConsumer.pause_partitions(consumer, iter([stream, changelog, gone]))
        settle(loop)
        assert client.paused() == {TopicPartition(*stream), TopicPartition(*changelog)}
        assert consumer._paused_partitions == {stream, changelog, gone}   # Faust's own, too
        assert client.loops == {loop}                 # aiokafka's loop, not the caller's
        FaustConsumer.resume_partitions(consumer, [stream])
        FaustConsumer.pause_partitions(consumer, [stream])    # queued: applied in this order
        FaustConsumer.resume_partitions(consumer, [stream])
        settle(loop)
        assert client.paused() == {TopicPartition(*changelog)}
        assert faust_tuning.fetching(consumer) == {"streams": 1, "changelogs": 0}
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_without_a_threaded_aiokafka_consumer_only_fausts_bookkeeping_changes():
    consumer = SimpleNamespace(_active_partitions=set(), _paused_partitions=set())
    consumer._get_active_partitions = lambda: consumer._active_partitions
    FaustConsumer.pause_partitions(consumer, [TP("llm.requests", 1)])
    assert consumer._paused_partitions == {TP("llm.requests", 1)}
    assert faust_tuning.fetching(consumer) is None
