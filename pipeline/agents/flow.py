"""The one way agents process a stream: decode defensively, run the step in its own task
(bounded concurrency), publish its outputs and wait for the broker's acknowledgement,
then ack the input in offset order. At-least-once, nothing committed early."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from pipeline.agents.acks import InOrderAcker
from pipeline.events.codec import Codec
from pipeline.outputs import JSON, Origin, Out, dead_letter

log = logging.getLogger("llmpipe.flow")

Send = Callable[[str, bytes | None, bytes, int | None], Awaitable[Awaitable[Any]]]


def _key_bytes(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


class Emitter:
    """Encodes outputs and publishes them, waiting until the broker has them.
    A failed publish is retried with backoff until it succeeds: the input stays un-acked
    meanwhile, so a crash re-delivers rather than loses it."""

    def __init__(self, send: Send, codec: Codec, max_backoff_s: float = 5.0):
        self.send, self.codec, self.max_backoff_s = send, codec, max_backoff_s

    def encode(self, out: Out) -> bytes:
        if out.fmt == JSON:
            return self.codec.encode_json(out.event)
        return self.codec.encode(out.event, out.topic)

    async def emit(self, outs: list[Out]) -> None:
        encoded = [(o.topic, _key_bytes(o.key), self.encode(o), o.partition) for o in outs]
        delay = 0.1
        while True:
            try:
                futures = [await self.send(*out) for out in encoded]
                await asyncio.gather(*futures)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("publish_failed topics=%s error=%r retry_in=%.1fs",
                          ",".join(out[0] for out in encoded), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)


def origin_of(event: Any) -> Origin:
    m = event.message
    ts = int(m.timestamp * 1000) if m.timestamp else None
    return Origin(m.topic, m.partition, m.offset, m.key, ts)


async def process(stream: Any, step: Callable[[bytes | None, Origin], Awaitable[list[Out]]],
                  emitter: Emitter, *, agent: str, dead_letter_topic: str,
                  concurrency: int, after: Callable[[Origin], None] | None = None) -> None:
    """Run ``step`` for each event of ``stream`` (a Faust stream of raw bytes). ``after``
    runs once the event's outputs are on the broker, before it is acknowledged (still in
    the event's context, so it may write Faust tables)."""
    acker = InOrderAcker(lambda event: event.ack())
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task] = set()

    async def run(event: Any, ticket: Any) -> None:
        origin = origin_of(event)
        try:
            try:
                outs = await step(event.value, origin)
            except Exception as exc:   # a bug must not stop the partition: dead-letter it
                log.exception("step_failed agent=%s topic=%s partition=%s offset=%s",
                              agent, origin.topic, origin.partition, origin.offset)
                outs = [dead_letter(dead_letter_topic, origin, event.value, agent, "internal_error",
                                    f"{agent} failed: {type(exc).__name__}: {exc}")]
            await emitter.emit(outs)
            if after is not None:
                try:
                    after(origin)
                except Exception:      # bookkeeping only: never hold back the ack
                    log.exception("after_emit_failed agent=%s partition=%s offset=%s",
                                  agent, origin.partition, origin.offset)
            acker.done(ticket)
        finally:
            slots.release()

    async for event in stream.noack().events():
        await slots.acquire()
        ticket = acker.track(event.message.tp, event.message.offset, event)
        task = asyncio.create_task(run(event, ticket))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
