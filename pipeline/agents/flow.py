"""The one way agents process a stream: decode defensively, run the step in its own task
(bounded concurrency), publish its outputs and wait for the broker's acknowledgement,
then ack the input in offset order. At-least-once, nothing committed early."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from pipeline.agents.acks import InOrderAcker
from pipeline.outputs import Emitter, Origin, Out, dead_letter

log = logging.getLogger("llmpipe.flow")


def flow_paused(app: Any) -> bool:
    """Partitions are being revoked or the worker is stopping: Faust has paused the flow and
    waits until every message it handed out is acked. Whatever holds messages un-acked (open
    batch windows, ledger rows not yet inserted) must finish them now, not on its timer —
    Faust's own timers stop with the app."""
    return app.should_stop or app.rebalancing or not app.flow_control.is_active()


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
            try:
                await emitter.emit(outs, agent=agent, origin=origin)
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # a bug while publishing: the input's own dead letter
                log.exception("emit_failed agent=%s topic=%s partition=%s offset=%s", agent,
                              origin.topic, origin.partition, origin.offset)
                await emitter.emit([dead_letter(
                    dead_letter_topic, origin, event.value, agent, "internal_error",
                    f"{agent} could not publish its outputs: {type(exc).__name__}: {exc}")],
                    agent=agent, origin=origin)
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
        ticket = acker.track(event.message.tp, event.message.offset, event)
        if ticket.repeat:               # handed to this process before: done there (acks.py)
            acker.done(ticket)
            continue
        await slots.acquire()
        task = asyncio.create_task(run(event, ticket))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
