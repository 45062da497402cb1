"""Kafka clients outside Faust, made in one place, and the one way to read a topic to its end.

Every producer here waits for all in-sync replicas (``acks="all"``) and is not idempotent:
the embedded broker refuses InitProducerId, and the pipeline is built for at-least-once
delivery anyway. Every consumer here reads without a group, commits nothing and starts
from the beginning unless told otherwise: groups belong to the Faust workers.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition


def producer(bootstrap: str, **settings: Any) -> AIOKafkaProducer:
    """A producer with the pipeline's settings; ``settings`` override them."""
    return AIOKafkaProducer(**{"bootstrap_servers": bootstrap, "acks": "all",
                               "enable_idempotence": False, "linger_ms": 5, **settings})


def consumer(bootstrap: str, *topics: str, **settings: Any) -> AIOKafkaConsumer:
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
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        deadline = time.monotonic() + timeout
        # Read to the end offsets, then on until a poll comes back empty: the embedded
        # broker's ListOffsets(latest) now and then names one offset less than the last
        # record present (seen on llm.responses), so the end offsets alone can miss records.
        drained = False
        while not drained or not await caught_up(reader, ends):
            if time.monotonic() > deadline:
                raise TopicReadTimeout(f"reading {topic} took over {timeout}s")
            batches = await reader.getmany(timeout_ms=300)
            drained = await caught_up(reader, ends) and not any(batches.values())
            for records in batches.values():
                found.extend(records)
    finally:
        await reader.stop()
    return found
