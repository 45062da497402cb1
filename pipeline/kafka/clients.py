"""Kafka clients outside Faust, made in one place, the one way to read a topic to its end,
and end offsets that hold on the embedded broker.

Every producer here waits for all in-sync replicas (``acks="all"``) and is not idempotent:
the embedded broker refuses InitProducerId, and the pipeline is built for at-least-once
delivery anyway. Every consumer here reads without a group, commits nothing and starts
from the beginning unless told otherwise: groups belong to the Faust workers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition


def producer(bootstrap: str, **settings: Any) -> AIOKafkaProducer:
    """A producer with the pipeline's settings; ``settings`` override them."""
    return AIOKafkaProducer(**{"bootstrap_servers": bootstrap, "acks": "all",
                               "enable_idempotence": False, "linger_ms": 5, **settings})


def consumer(bootstrap: str | list[str], *topics: str, **settings: Any) -> AIOKafkaConsumer:
    """A group-less consumer that commits nothing; ``settings`` override the defaults."""
    return AIOKafkaConsumer(*topics, **{"bootstrap_servers": bootstrap, "group_id": None,
                                        "enable_auto_commit": False,
                                        "auto_offset_reset": "earliest", **settings})


async def partitions_of(client: AIOKafkaConsumer, topic: str) -> set[int]:
    """The topic's partitions, refreshing the metadata once if they are not known yet.
    Asks for all topics: naming a missing one makes some brokers (Tansu with
    auto.create.topics.enable) create it, with the wrong partitions."""
    partitions = client.partitions_for_topic(topic)
    if not partitions and topic in await client.topics():
        partitions = client.partitions_for_topic(topic)
    return set(partitions or ())


async def caught_up(client: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """Whether the consumer's position has reached ``ends`` on every partition."""
    for tp, end in ends.items():
        if await client.position(tp) < end:
            return False
    return True


#: How long ``end_offsets`` reads for the last batches before keeping what the broker said.
END_PROBE_TIMEOUT_S = 5.0


async def end_offsets(bootstrap: str | list[str], tps: list[TopicPartition], *,
                      reported: dict[TopicPartition, int] | None = None,
                      timeout: float = END_PROBE_TIMEOUT_S) -> dict[TopicPartition, int]:
    """One past the last record of each partition.

    The embedded broker (Tansu) answers ListOffsets(latest) with one past the *first*
    record of the partition's last batch: after a batch of four records at offsets 0-3 it
    says 1 (measured: every time). Faust's table recovery reads a changelog up to that
    answer, so the rest of the last batch was never applied: a coalesced flush (several
    rows in one batch, pipeline/kafka/write_behind.py) lost all its rows but the first at
    a restart. So each partition whose answer ``reported`` (asked for when None) is not 0
    is read from the offset before it: a fetch returns whole batches, so the last record
    read gives the end. On a broker that answers right this costs one fetch per partition
    and changes nothing."""
    plain = {TopicPartition(tp.topic, tp.partition): tp for tp in tps}    # Faust's TP too
    if reported is not None and not any(reported.values()):
        return dict(reported)
    probe = consumer(bootstrap, fetch_max_wait_ms=50)
    await probe.start()
    try:
        ends = await probe.end_offsets(list(plain)) if reported is None else {
            TopicPartition(tp.topic, tp.partition): end for tp, end in reported.items()}
        todo = {tp for tp, end in ends.items() if end}
        if todo:
            probe.assign(sorted(todo))
            for tp in todo:
                probe.seek(tp, ends[tp] - 1)
            deadline = time.monotonic() + timeout
            while todo and time.monotonic() < deadline:
                for tp, records in (await probe.getmany(*todo, timeout_ms=200)).items():
                    if records:
                        ends[tp] = max(ends[tp], records[-1].offset + 1)
                        todo.discard(tp)
        return {plain.get(tp, tp): end for tp, end in ends.items()}
    finally:
        # aiokafka's stop awaits a task of the consumer's that, cancelled before it ever
        # ran (a stop right after start), raises CancelledError into the caller
        await asyncio.sleep(0)
        await probe.stop()


class TopicReadTimeout(TimeoutError):
    pass


async def read_to_end(bootstrap: str, topic: str, timeout: float = 30.0) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning to its current end (partition, offset,
    timestamp, key, value), in partition order."""
    reader = consumer(bootstrap)
    await reader.start()
    found: list[ConsumerRecord] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(reader, topic))]
        if not tps:
            return found
        ends = await end_offsets(bootstrap, tps)
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while not await caught_up(reader, ends):
            if time.monotonic() > deadline:
                raise TopicReadTimeout(f"reading {topic} took over {timeout}s")
            for records in (await reader.getmany(timeout_ms=300)).values():
                found.extend(records)
    finally:
        await reader.stop()
    return found
