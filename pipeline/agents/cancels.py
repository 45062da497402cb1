"""Every dispatch worker reads all of llm.cancels (no consumer group, from its end at
start-up) and hands each Cancel to its Dispatcher: the worker calling that request's
provider stops the call; the others remember it, in case the request comes their way.
Best effort by design: a cancel published while no worker reads, or after the answer, does
nothing. A read failure is logged and retried; it never stops the worker."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import TopicPartition

from pipeline.dispatch import Dispatcher
from pipeline.events.codec import Codec, DecodeError
from pipeline.events.models import Cancel
from pipeline.kafka import clients

log = logging.getLogger("llmpipe.dispatch")

FETCH_MAX_WAIT_MS = 500      # a cancel is not latency-critical: poll gently (idle CPU)


async def read_cancels(bootstrap: str, topic: str, codec: Codec, dispatcher: Dispatcher) -> None:
    while True:
        consumer = clients.consumer(bootstrap, auto_offset_reset="latest",
                                    fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
        try:
            await consumer.start()
            partitions = await clients.partitions_of(consumer, topic)
            if not partitions:
                log.warning("cancels_topic_missing topic=%s: cancels are not read", topic)
                return
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:
                        _apply(record.value, codec, dispatcher)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("cancels_read_failed topic=%s error=%r; retrying", topic, exc)
            await asyncio.sleep(1.0)
        finally:
            await consumer.stop()


def _apply(value: bytes | None, codec: Codec, dispatcher: Dispatcher) -> None:
    try:
        cancel = codec.decode(value, Cancel)
    except DecodeError as exc:
        log.warning("cancel_undecodable reason=%s", exc.reason)
        return
    stopped = dispatcher.cancel(cancel.tenant, cancel.request_id)
    log.info("cancel_received request_id=%s tenant=%s stopped_call=%s reason=%s",
             cancel.request_id, cancel.tenant, stopped, cancel.reason[:200])
