"""One gateway instance's answers: its two reply topics (responses and chunks), one
partition each, read from their end by this instance alone, so replicas never read each
other's answers. Each fetch waits at most ``fetch_max_wait_ms`` (LLMPIPE_FETCH_MAX_WAIT_MS,
as the workers): on the embedded broker that wait is what an answer waits on average
about half of (see docs/ARCHITECTURE.md "Embedded stack facts").

Answers are handed to the waiter of their (tenant, request id); an answer nobody waits
for (its caller left, or a redelivered repeat) is dropped. Chunks and Responses come on
separate topics, so a Response may overtake the last chunks of its stream: the Response
holds the whole text, which is what the HTTP layer finishes from."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.events.codec import Codec, DecodeError
from pipeline.events.models import Chunk, Event, Response
from pipeline.kafka import clients
from pipeline.kafka.topics import TopicSpec, apply_topics

log = logging.getLogger("llmpipe.gateway")

Key = tuple[str, str]          # (tenant, request id)


@dataclass(eq=False)
class Waiter:
    """What one HTTP call is waiting for: its Chunks (in order) and then its Response."""
    key: Key
    events: asyncio.Queue = field(default_factory=asyncio.Queue)

    async def next(self, timeout_s: float) -> Chunk | Response:
        """The next answer event; TimeoutError after ``timeout_s``."""
        return await asyncio.wait_for(self.events.get(), max(timeout_s, 0.001))

    async def response(self, timeout_s: float) -> Response:
        """The Response, skipping any chunks (a caller that did not ask to stream)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            event = await self.next(deadline - loop.time())
            if isinstance(event, Response):
                return event


async def create_reply_topics(bootstrap: str, names: tuple[str, str], template: TopicSpec) -> None:
    """The instance's reply topics, if missing: one partition each, the template's
    replication and retention."""
    specs = [TopicSpec(name, 1, template.replication_factor, dict(template.config),
                       "request id", schema, f"gateway replies ({schema})")
             for name, schema in zip(names, ("Response", "Chunk"))]
    report = await apply_topics(bootstrap, specs)
    if report.created:
        log.info("reply_topics_created topics=%s", ",".join(report.created))


class Replies:
    def __init__(self, bootstrap: str, topics: tuple[str, str], codec: Codec, *,
                 fetch_max_wait_ms: int = 20):
        self.bootstrap, self.codec = bootstrap, codec
        self.response_topic, self.chunk_topic = topics
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self._waiters: dict[Key, Waiter] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self.dropped = 0                 # answers nobody was waiting for
        self.undecodable = 0

    async def start(self) -> None:
        """Read both topics from their current end; returns once the positions are fixed,
        so nothing published after it is missed."""
        consumer = self._consumer = clients.consumer(
            self.bootstrap, auto_offset_reset="latest", fetch_max_wait_ms=self.fetch_max_wait_ms)
        await consumer.start()
        tps = [TopicPartition(self.response_topic, 0), TopicPartition(self.chunk_topic, 0)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        self._task = asyncio.create_task(self._read(consumer), name="gateway-replies")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
        self._task = self._consumer = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def expect(self, tenant: str, request_id: str) -> Waiter:
        """Register before publishing, so a fast answer is not missed."""
        waiter = self._waiters[(tenant, request_id)] = Waiter((tenant, request_id))
        return waiter

    def forget(self, waiter: Waiter) -> None:
        if self._waiters.get(waiter.key) is waiter:
            del self._waiters[waiter.key]

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        """One consumer for both topics: one fetch per wait, not two."""
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:        # the broker away: aiokafka reconnects
                log.warning("reply_read_failed error=%r", exc)
                await asyncio.sleep(0.5)
                continue
            for tp, records in batches.items():
                cls = Chunk if tp.topic == self.chunk_topic else Response
                for record in records:
                    self._deliver(record.value, cls)

    def _deliver(self, value: bytes | None, cls: type[Event]) -> None:
        try:
            event = self.codec.decode(value, cls)
        except DecodeError as exc:
            self.undecodable += 1
            log.warning("reply_undecodable topic_type=%s reason=%s", cls.__name__, exc.reason)
            return
        waiter = self._waiters.get((event.tenant, event.request_id))
        if waiter is None:
            self.dropped += 1
            return
        waiter.events.put_nowait(event)
