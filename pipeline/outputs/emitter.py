"""Publishing a step's outputs: each output encoded, checked against the broker's limits
and sent by itself; a permanent failure rescued (pipeline/outputs/rescue.py), a transient
one retried. Knows nothing of Faust: it is given the producer's ``send``."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from pipeline import metrics
from pipeline.clock import now_ms
from pipeline.events.codec import Codec
from pipeline.events.models import Alert
from pipeline.outputs.out import JSON, Origin, Out
from pipeline.outputs.rescue import (GAVE_UP, Rescuer, Unpublishable, check_record, classify,
                                     is_permanent)
from pipeline.resilience.retry import RetryPolicy
from pipeline.settings import DEFAULT_MAX_MESSAGE_BYTES, Topics

log = logging.getLogger("llmpipe.flow")

Send = Callable[[str, bytes | None, bytes, int | None], Awaitable[Awaitable[Any]]]


def _key_bytes(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


@dataclass(eq=False)
class _Pending:
    """One output on its way: encoded once, retried alone, rescued alone."""
    out: Out
    depth: int                   # how many rescues made it
    since: float                 # clock time of its first attempt
    key: bytes | None = None
    value: bytes | None = None
    error: BaseException | None = None


class Emitter:
    """Encodes outputs and publishes them, waiting until the broker has them — each output on
    its own, so one that can never be published costs its neighbours nothing.

    A permanent failure (pipeline/outputs/rescue.py) is rescued at once: the output is replaced by
    the closest thing that can be published (a scrubbed copy, a terminal error, a dead
    letter). A transient one is retried with capped, jittered backoff. Once an output has
    failed for ``stall_s`` while other outputs did go out, the broker is up and the trouble
    is that output's (a reply topic without a leader, say): it is rescued too. While nothing
    goes out at all (the broker is away) retrying goes on — the input stays un-acked, so a
    crash re-delivers rather than loses it — and one ``publish_stalled`` alert and log line
    say so once the bound has passed."""

    def __init__(self, send: Send, codec: Codec, topics: Topics | None = None, *,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 retry: RetryPolicy = RetryPolicy(base_s=0.1, cap_s=5.0, jitter=0.2),
                 stall_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rng: random.Random | None = None):
        self.send, self.codec = send, codec
        self.topics = topics or Topics()
        self.max_message_bytes = max_message_bytes
        self.rescuer = Rescuer(self.topics, codec, max_message_bytes)
        self.retry, self.stall_s, self.clock, self.sleep = retry, stall_s, clock, sleep
        self.rng = rng or random.Random()
        self.last_success = float("-inf")    # when some output last reached the broker
        self.rescued = 0                     # outputs replaced by a rescue
        self.stalls = 0                      # publish_stalled episodes
        self._background: set[asyncio.Future] = set()

    def encode(self, out: Out) -> bytes:
        if out.fmt == JSON:
            return self.codec.encode_json(out.event)
        return self.codec.encode(out.event, out.topic)

    async def emit(self, outs: list[Out], *, agent: str = "pipeline",
                   origin: Origin | None = None) -> None:
        """Publish ``outs``; returns once each is on the broker or replaced by its rescue.
        Raises Unpublishable only for an output that has no replacement (a BatchJob).
        ``origin``: the input these outputs answer, named by any dead letter."""
        pending = [_Pending(out, 0, self.clock()) for out in outs]
        attempt, stalled = 0, False
        while pending:
            ready, follow = [], []
            for item in pending:
                if item.value is None:
                    try:
                        item.key = _key_bytes(item.out.key)
                        item.value = self.encode(item.out)
                        check_record(item.out.topic, item.key, item.value, self.max_message_bytes)
                    except Exception as exc:     # encoding is deterministic: never retried
                        follow += self._rescue(item, classify(exc), agent, origin)
                        continue
                ready.append(item)
            retry = []
            for item, exc in zip(ready, await self._send_all(ready)):
                if exc is None:
                    metrics.observe(item.out.event)          # on the broker: it happened
                    continue
                if is_permanent(exc):
                    follow += self._rescue(item, classify(exc), agent, origin)
                else:
                    item.error = exc
                    retry.append(item)
            if retry:
                now = self.clock()
                overdue = [i for i in retry if now - i.since >= self.stall_s]
                if overdue and any(self.last_success > i.since for i in overdue):
                    for item in overdue:   # the broker takes other records: this one will not go
                        follow += self._rescue(item, Unpublishable(
                            GAVE_UP, f"not published within {self.stall_s:g}s while other "
                                     f"records were: {item.error!r}"), agent, origin)
                    retry = [i for i in retry if i not in overdue]
                elif overdue and not stalled:
                    stalled = True
                    self._stalled(retry, agent)
                if retry:
                    delay = self.retry.delay(attempt, self.rng)
                    attempt += 1
                    log.error("publish_failed agent=%s topics=%s error=%r retry_in=%.1fs", agent,
                              ",".join(sorted({i.out.topic for i in retry})), retry[0].error, delay)
                    await self.sleep(delay)
            pending = retry + follow

    async def _send_all(self, items: list[_Pending]) -> list[BaseException | None]:
        """Send every item, then wait for the broker; per item, None or its failure."""
        results: list[BaseException | None] = [None] * len(items)
        waiting: list[tuple[int, Awaitable[Any]]] = []
        for i, item in enumerate(items):
            try:
                waiting.append((i, await self.send(item.out.topic, item.key, item.value,
                                                   item.out.partition)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                results[i] = exc
        acks = await asyncio.gather(*(fut for _, fut in waiting), return_exceptions=True)
        for (i, _), ack in zip(waiting, acks):
            if isinstance(ack, asyncio.CancelledError):
                raise ack
            if isinstance(ack, BaseException):
                results[i] = ack
        if any(r is None for r in results):
            self.last_success = self.clock()
        return results

    def _rescue(self, item: _Pending, failure: Unpublishable, agent: str,
                origin: Origin | None) -> list[_Pending]:
        self.rescued += 1
        outs = self.rescuer.rescue(
            item.out, failure, item.depth, agent=agent,
            origin_topic=origin.topic if origin else "",
            origin_partition=origin.partition if origin else -1,
            origin_offset=origin.offset if origin else -1)
        return [_Pending(out, item.depth + 1, self.clock()) for out in outs]

    def _stalled(self, items: list[_Pending], agent: str) -> None:
        """The broker has taken nothing for ``stall_s``: say so once per emit, loudly. The
        alert goes out by itself once the broker is back (it never blocks this emit)."""
        topics = ",".join(sorted({i.out.topic for i in items}))
        log.critical("publish_stalled agent=%s topics=%s outputs=%d stalled_s=%.0f error=%r",
                     agent, topics, len(items), self.stall_s, items[0].error)
        if any(i.out.topic == self.topics.alerts for i in items):
            return                 # an alert (this one, maybe) stalled: no alert about it
        self.stalls += 1
        at = now_ms()
        alert = Alert(alert_id=str(uuid.uuid4()), rule="publish_stalled", state="firing",
                      severity="critical", value=f"{len(items)} outputs",
                      threshold=f"{self.stall_s:g}s", at_ms=at, subject=topics[:200],
                      message=f"{agent}: nothing could be published for {self.stall_s:g}s "
                              f"({items[0].error!r}); retrying, inputs stay un-acknowledged")
        self.emit_later([Out(self.topics.alerts, "*", alert)], agent=agent)

    def emit_later(self, outs: list[Out], *, agent: str = "pipeline") -> None:
        """Publish ``outs`` without waiting (notices such as alerts about the pipeline itself)."""
        task = asyncio.ensure_future(self.emit(outs, agent=agent))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
