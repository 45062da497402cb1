"""Two corrections to how Faust drives aiokafka, applied when this module is imported
(pipeline.agents.app does, before any consumer exists).

**Fetch wait.** Faust hard-codes its consumer's fetch_max_wait_ms to 1500 ms. Brokers that
do not wake a waiting fetch when data arrives (the embedded Tansu broker holds it for the
full wait) then add ~0.75 s per hop on average. This sets the wait from settings instead
(LLMPIPE_FETCH_MAX_WAIT_MS): aiokafka reads the attribute when the consumer starts.

**A record lost on a rebalance.** During a rebalance Faust may fetch records of a partition
it then drops, because the partition is not active yet (faust/transport/consumer.py), and
relies on seeking back to the committed offsets afterwards (faust/tables/recovery.py) to
read them again. aiokafka's ``seek_to_committed`` skips every partition whose committed
offset is None or 0 (``if offset and offset > 0``), so on a partition nothing was ever
committed on, the records fetched and dropped were never read again: the first Batch on
such a partition could go unanswered (found by looping tests/integration/test_batcher.py's
rebalance test: 2 lost in 32 runs). Here a partition with no committed offset is sought to
its beginning — what ``auto_offset_reset="earliest"`` would have read; a record read twice
this way is handled like any re-delivery (at-least-once, idempotent consumers). Table
changelogs are left to Faust's recovery, which keeps its own offsets."""

from __future__ import annotations

import logging

from aiokafka.consumer.consumer import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka

_original = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
_seek_to_committed = AIOKafkaConsumer.seek_to_committed
_fetch_max_wait_ms = 1500
log = logging.getLogger("llmpipe.worker")


def set_fetch_max_wait_ms(value: int) -> None:
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = value


def _create_worker_consumer(self, transport):
    consumer = _original(self, transport)
    consumer._fetch_max_wait_ms = _fetch_max_wait_ms
    return consumer


async def seek_to_committed(self: AIOKafkaConsumer, *partitions):
    committed = await _seek_to_committed(self, *partitions)
    # only the pipeline's own topics: table changelogs are positioned by Faust's recovery,
    # which keeps its own offsets, and the assignor's topic is not data
    never = [tp for tp, offset in committed.items() if not offset
             and not tp.topic.endswith(("-changelog", "__leader"))]
    if never:
        await self.seek_to_beginning(*never)
        log.info("rewound_uncommitted partitions=%s", ",".join(
            f"{tp.topic}[{tp.partition}]" for tp in sorted(never)))
    return committed


faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
AIOKafkaConsumer.seek_to_committed = seek_to_committed
