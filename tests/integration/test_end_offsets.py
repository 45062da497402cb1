"""End offsets on the embedded broker, which answers ListOffsets(latest) with one past the
first record of a partition's last batch: the corrected end offsets (pipeline/kafka/clients.py)
and Faust's table recovery, which reads a changelog up to them (pipeline/kafka/faust_tuning.py).
A table that lost the rest of its last batch at a restart is what these guard against."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.kafka import clients
from pipeline.kafka.faust_tuning import _real_highwaters


async def _topic_with_batches(bootstrap: str) -> str:
    """Partition 0: one batch of four records; 1: four batches of one; 2: empty."""
    topic = f"ends-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    producer = clients.producer(bootstrap, linger_ms=100)
    await producer.start()
    try:
        together = [await producer.send(topic, b"v%d" % i, key=b"k%d" % i, partition=0)
                    for i in range(4)]                 # queued within one linger: one batch
        assert [m.offset for m in await asyncio.gather(*together)] == [0, 1, 2, 3]
        for i in range(4):
            await producer.send_and_wait(topic, b"v%d" % i, partition=1)
    finally:
        await producer.stop()
    return topic


def test_end_offsets_reach_the_last_record_of_a_batch(broker):
    async def run():
        topic = await _topic_with_batches(broker.bootstrap)
        tps = [TopicPartition(topic, p) for p in range(3)]
        probe = clients.consumer(broker.bootstrap)
        await probe.start()
        try:
            said = await probe.end_offsets(tps)
        finally:
            await probe.stop()
        ends = await clients.end_offsets(broker.bootstrap, tps)
        records = await clients.read_to_end(broker.bootstrap, topic)
        return said, ends, records

    said, ends, records = asyncio.run(run())
    topic = next(iter(ends)).topic
    assert [ends[TopicPartition(topic, p)] for p in range(3)] == [4, 4, 0], (said, ends)
    assert sorted((r.partition, r.offset) for r in records) == [
        (p, o) for p in (0, 1) for o in range(4)]
    # what the broker itself says, for the record (a fixed broker makes this [4, 4, 0])
    print("broker's own end offsets:", [said[TopicPartition(topic, p)] for p in range(3)])


def test_faust_recovery_reads_a_changelog_to_its_last_record(broker):
    """Faust's table recovery asks its consumer's ``highwaters`` for the offsets it reads up
    to; with the correction they name the last record of the last batch."""
    async def run():
        topic = await _topic_with_batches(broker.bootstrap)
        reader = clients.consumer(broker.bootstrap)
        await reader.start()
        try:
            host, port = broker.bootstrap.split(":")
            faust_consumer = SimpleNamespace(
                in_transaction=False,
                _thread=SimpleNamespace(highwaters=lambda *tps: reader.end_offsets(list(tps))),
                app=SimpleNamespace(conf=SimpleNamespace(broker=[
                    SimpleNamespace(host=host, port=int(port))])))
            return topic, await _real_highwaters(faust_consumer, *[
                TopicPartition(topic, p) for p in range(3)])
        finally:
            await reader.stop()

    topic, ends = asyncio.run(run())
    assert {tp.partition: end for tp, end in ends.items()} == {0: 4, 1: 4, 2: 0}


def test_end_offsets_of_empty_partitions_return_at_once(broker):
    """A worker's first start: every changelog is empty. (A probe consumer started and
    stopped at once raised CancelledError out of aiokafka and killed Faust's recovery.)"""
    async def run():
        topic = await _topic_with_batches(broker.bootstrap)
        empty = [TopicPartition(topic, 2)]
        asked = await clients.end_offsets(broker.bootstrap, empty)
        told = await clients.end_offsets(broker.bootstrap, empty, reported={empty[0]: 0})
        return asked, told

    asked, told = asyncio.run(run())
    assert list(asked.values()) == [0] and list(told.values()) == [0]
