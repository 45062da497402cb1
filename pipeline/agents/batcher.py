"""Faust wiring of the micro-batcher (llm.routed -> llm.batches), see pipeline/batching/.

A routed request is acknowledged only once the Batch holding it is on llm.batches (the
broker has it), in offset order (InOrderAcker, faust #606): the open windows are nothing
but un-acknowledged llm.routed messages, so a crash re-delivers them and nothing is kept
in a Faust table (faust #497 does not arise). A Batch goes to the llm.batches partition
with the number of the llm.routed partition its requests came from (both topics are in
the `deployment` partition group), so dispatch of a deployment stays on one worker.

A flusher task closes aged windows without waiting for new traffic, and closes every
window as soon as Faust suspends the flow (partition revocation or shutdown) — Faust then
waits for all read messages to be acked, which happens once those batches are published."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter, deque
from typing import Any, Callable

import faust

from pipeline.agents.acks import InOrderAcker, Ticket
from pipeline.agents.flow import flow_paused, origin_of
from pipeline.outputs import Emitter
from pipeline.batching.config import BatchingConfig, load_batching
from pipeline.batching.window import FILL_AGE, Flush, WindowKey, Windows
from pipeline.clock import now_ms
from pipeline.events.codec import Codec, DecodeError
from pipeline.events.models import Batch, RoutedRequest
from pipeline.outputs import Origin, Out, dead_letter
from pipeline.resilience.health import percentile
from pipeline.runtime import Runtime
from pipeline.settings import Topics

log = logging.getLogger("llmpipe.batcher")

FLUSH_TICK_S = 0.05        # longest the flusher sleeps when no window is due sooner
IDLE_TICK_S = 1.0          # ... and when no window is open (issue 17: 20 wake-ups/s idle)
WAIT_SAMPLES = 4096        # per priority, for the stats view's percentiles
PUBLISHES_IN_FLIGHT = 64   # batches being published at once; more waits (back-pressure)
BATCH_ROOM = 64 * 1024     # bytes of a Batch record besides its requests' (ids, times, re-encoding)


class BatcherStats:
    """Counters for the stats view: batches, sizes, fill reasons and added waits."""

    def __init__(self) -> None:
        self.batches: Counter[str] = Counter()
        self.items: Counter[str] = Counter()
        self.fill: dict[str, Counter[str]] = {}
        self.max_size: Counter[str] = Counter()
        self.waits: dict[str, deque[int]] = {}
        self.late: dict[str, deque[int]] = {}     # age flushes: how long after their due time
        # How late the flush timer woke for a due window: the worker's event-loop lag, which
        # a loaded worker adds to every window whatever its limits.
        self.loop_lag: deque[int] = deque(maxlen=WAIT_SAMPLES)
        self.dead_letters = 0

    def record(self, flush: Flush, max_wait_ms: int) -> None:
        p = flush.key.priority
        if flush.fill_reason == FILL_AGE:
            late = flush.flushed_at_ms - flush.opened_at_ms - max_wait_ms
            self.late.setdefault(p, deque(maxlen=WAIT_SAMPLES)).append(max(0, late))
        self.batches[p] += 1
        self.items[p] += len(flush.items)
        self.fill.setdefault(p, Counter())[flush.fill_reason] += 1
        self.max_size[p] = max(self.max_size[p], len(flush.items))
        self.waits.setdefault(p, deque(maxlen=WAIT_SAMPLES)).extend(flush.waits_ms())

    def lag_view(self) -> dict[str, float] | None:
        lag = sorted(self.loop_lag)
        return {"p50": percentile(lag, .5), "p99": percentile(lag, .99), "max": lag[-1]} if lag else None

    def view(self) -> dict[str, Any]:
        out = {}
        for p in sorted(self.batches):
            waits, late = sorted(self.waits.get(p, ())), sorted(self.late.get(p, ()))
            out[p] = {"batches": self.batches[p], "requests": self.items[p],
                      "mean_batch_size": round(self.items[p] / self.batches[p], 2),
                      "max_batch_size": self.max_size[p],
                      "fill_reasons": dict(self.fill.get(p, {})),
                      "added_wait_ms": {"p50": percentile(waits, .5), "p99": percentile(waits, .99),
                                        "max": waits[-1]} if waits else None,
                      # event-loop lag: a loaded worker closes windows later than their limit
                      "timer_late_ms": {"p50": percentile(late, .5), "p99": percentile(late, .99),
                                        "max": late[-1]} if late else None}
        return out


class BatcherStage:
    """Everything the batcher does, minus Faust: decode, window, publish, acknowledge.
    ``ack`` acknowledges one input (its handle, e.g. a Faust event)."""

    def __init__(self, codec: Codec, topics: Topics, config: BatchingConfig, emitter: Emitter,
                 ack: Callable[[Any], Any], clock: Callable[[], int] = now_ms,
                 max_batch_bytes: int | None = None):
        """``max_batch_bytes``: the most request bytes one Batch may carry (under the
        broker's message size)."""
        self.codec, self.topics, self.config, self.emitter = codec, topics, config, emitter
        self.clock = clock
        self.windows: Windows[tuple[RoutedRequest, Ticket]] = Windows(config.limits, clock,
                                                                      max_batch_bytes)
        self.acker = InOrderAcker(ack)
        self.stats = BatcherStats()
        self.opened = asyncio.Event()     # a window opened: the flusher may need to wake earlier
        self._slots = asyncio.Semaphore(PUBLISHES_IN_FLIGHT)
        self._publishing: set[asyncio.Task] = set()

    async def receive(self, value: bytes | None, origin: Origin, handle: Any) -> None:
        """One llm.routed message (call in the order the stream yields them)."""
        ticket = self.acker.track(origin.partition, origin.offset, handle)
        if ticket.repeat:                 # already in a window or a Batch (acks.py)
            self.acker.done(ticket)
            return
        try:
            routed = self.codec.decode(value, RoutedRequest)
            key = WindowKey(origin.partition, routed.route.deployment,
                            self.config.priority_of(routed.request.hints.priority))
        except DecodeError as exc:
            await self._dead_letter(value, origin, ticket, exc.code, exc.reason)
            return
        except Exception as exc:          # a bug must not stop the partition
            log.exception("batcher_input_failed topic=%s partition=%s offset=%s", origin.topic,
                          origin.partition, origin.offset)
            await self._dead_letter(value, origin, ticket, "internal_error",
                                    f"batcher failed: {type(exc).__name__}: {exc}")
            return
        opened_before = self.windows.open_windows()
        flushes = self.windows.add(key, (routed, ticket), routed.estimated_prompt_tokens,
                                   len(value or b""))
        if self.windows.open_windows() > opened_before or flushes:
            self.opened.set()
        await self.publish(flushes)

    async def flush_due(self) -> int:
        return await self.publish(self.windows.due())

    async def flush_all(self) -> int:
        return await self.publish(self.windows.flush_all())

    def next_due_in_s(self) -> float:
        """How long the flush timer may sleep: until the next window is due, at most a tick
        (with no window open, until one opens: ``opened`` wakes it; IDLE_TICK_S at most)."""
        due = self.windows.next_due_ms()
        if due is None:
            return IDLE_TICK_S if not self.windows.open_windows() else FLUSH_TICK_S
        return min(FLUSH_TICK_S, max(0.0, (due - self.clock()) / 1000))

    async def publish(self, flushes: list[Flush]) -> int:
        """Start publishing the batches; their requests are acknowledged once the broker has
        them. Returns at once (after a slot is free, for back-pressure): a slow publish must
        not hold up the timer that closes the next window, nor the reading of llm.routed."""
        if not flushes:
            return 0
        await self._slots.acquire()
        task = asyncio.create_task(self._publish(flushes))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)
        return len(flushes)

    async def drain(self) -> None:
        """Wait until every publish started so far is done."""
        while self._publishing:
            await asyncio.gather(*list(self._publishing))

    async def _publish(self, flushes: list[Flush]) -> None:
        try:
            try:
                outs = [Out(self.topics.batches, f.key.deployment, self.batch_of(f),
                            partition=f.key.partition) for f in flushes]
                await self.emitter.emit(outs, agent="batcher")   # each Batch on the broker, or rescued
            except asyncio.CancelledError:
                raise
            except Exception as exc:               # a bug: dead-letter the requests, never drop them
                log.exception("batch_publish_failed batches=%d", len(flushes))
                await self.emitter.emit([
                    dead_letter(self.topics.dead_letter, Origin(self.topics.routed, f.key.partition, -1,
                                                                f.key.deployment.encode(), None),
                                self.codec.encode_json(routed), "batcher", "internal_error",
                                f"batch publish failed: {type(exc).__name__}: {exc}",
                                request_id=routed.request.request_id, tenant=routed.request.tenant)
                    for f in flushes for routed, _ in f.items])
            for f in flushes:
                self.stats.record(f, self.config.limits(f.key.priority).max_wait_ms)
                for _, ticket in f.items:
                    self.acker.done(ticket)
                log.debug("batch_flushed deployment=%s priority=%s size=%d reason=%s age_ms=%d",
                          f.key.deployment, f.key.priority, len(f.items), f.fill_reason,
                          f.flushed_at_ms - f.opened_at_ms)
        finally:
            self._slots.release()

    @staticmethod
    def batch_of(f: Flush) -> Batch:
        return Batch(batch_id=str(uuid.uuid4()), deployment=f.key.deployment,
                     opened_at_ms=f.opened_at_ms, flushed_at_ms=f.flushed_at_ms,
                     items=[routed for routed, _ in f.items], priority=f.key.priority,
                     fill_reason=f.fill_reason)

    def view(self) -> dict[str, Any]:
        return {"open_windows": self.windows.open_windows(), "waiting_requests": self.windows.pending(),
                "unacked_inputs": self.acker.in_flight(), "dead_letters": self.stats.dead_letters,
                "loop_lag_ms": self.stats.lag_view(),
                "windows": [{"deployment": k.deployment, "priority": k.priority, "partition": k.partition,
                             "requests": n, "opened_at_ms": opened}
                            for k, n, opened in sorted(self.windows.snapshot(), key=lambda s: s[2])],
                "limits": {p: vars(lim) for p, lim in self.config.priorities.items()},
                "priorities": self.stats.view()}

    async def _dead_letter(self, value: bytes | None, origin: Origin, ticket: Ticket, code: str,
                           reason: str) -> None:
        await self.emitter.emit([dead_letter(self.topics.dead_letter, origin, value, "batcher",
                                             code, reason)])
        self.stats.dead_letters += 1
        self.acker.done(ticket)


def register_batcher(app: faust.App, runtime: Runtime, source: faust.TopicT, emitter: Emitter,
                     config: BatchingConfig | None = None) -> BatcherStage:
    s = runtime.settings
    stage = BatcherStage(runtime.codec, s.topics, config or load_batching(), emitter,
                         lambda event: event.ack(), max_batch_bytes=s.max_message_bytes - BATCH_ROOM)

    @app.agent(source, name="batcher")
    async def batcher_agent(stream):
        async for event in stream.noack().events():
            await stage.receive(event.value, origin_of(event), event)

    @app.task
    async def flusher() -> None:
        # Runs until Faust cancels it, which is after the consumer's final wait for acks.
        loop = asyncio.get_running_loop()
        while True:
            try:
                if stage.windows.open_windows() and flow_paused(app):
                    n = await stage.flush_all()     # revocation or shutdown: Faust waits for our acks
                    log.info("windows_flushed_for_rebalance_or_shutdown batches=%d", n)
                else:
                    await stage.flush_due()
                stage.opened.clear()
                timeout, window_due = stage.next_due_in_s(), stage.windows.next_due_ms() is not None
                target = loop.time() + timeout
                try:
                    await asyncio.wait_for(stage.opened.wait(), timeout)
                except TimeoutError:
                    if window_due:       # woke for a window: how late, through no fault of ours
                        stage.stats.loop_lag.append(max(0, int((loop.time() - target) * 1000)))
            except asyncio.CancelledError:
                raise
            except Exception:             # never let the timer die: windows would wait forever
                log.exception("flusher_failed")
                await asyncio.sleep(FLUSH_TICK_S)

    @app.page("/llmpipe/batcher/stats/")
    async def batcher_stats(web, request):
        """Open windows, waiting requests, and per priority: batches, mean/max size, fill
        reasons and the wait the window added (P50/P99/max over recent requests)."""
        body = stage.view()
        body["at_ms"] = now_ms()
        return web.json(body)

    return stage
