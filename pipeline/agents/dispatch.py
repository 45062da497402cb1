"""Faust wiring of dispatch (llm.batches -> responses + usage, or a re-route; breaker alerts
on llm.alerts) and the worker's view of its deployment guards.

A Batch (from the micro-batcher, pipeline/agents/batcher.py) is one message: its requests
are dispatched concurrently, each in its own task under the deployment's guard (concurrency,
rate, breaker), and one request's failure never fails its neighbours. The Batch is
acknowledged (in offset order, see pipeline/agents/flow.py) only when every request has
ended in a Response or a re-route and those are on the broker. Re-routes go back to
llm.routed and pass the batcher again. A batch-priority Batch is first offered to the
provider Batch API offload (``offload``); only a durably submitted job acknowledges it
without live calls.

Guard state (breakers, buckets, health windows) is in this worker's memory. llm.batches is
keyed by deployment id, so the worker owning a deployment's partition is its only writer.
After a rebalance, guards of deployments whose partitions left this worker are dropped;
whichever worker receives a partition continues its deployments' breakers and buckets from
the ``guards`` table (pipeline/agents/guard_state.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Protocol

import faust
import faust.web

from pipeline.agents.cancels import read_cancels
from pipeline.agents.flow import process
from pipeline.agents.guard_state import PinnedTable, register_guard_state
from pipeline.agents.inline import InlineDispatch
from pipeline.outputs import Emitter
from pipeline.dispatch.hops import FinishedHops
from pipeline.clock import now_ms
from pipeline.dispatch import Dispatcher
from pipeline.events.codec import DecodeError
from pipeline.events.models import Batch, RoutedRequest
from pipeline.outputs import Origin, Out, dead_letter
from pipeline.providers import make_adapter
from pipeline.runtime import Runtime
from pipeline.metrics import gauge, register_collector

BREAKER_LEVEL = {"open": 1.0, "half_open": 0.5, "closed": 0.0}
log = logging.getLogger("llmpipe.dispatch")

ALERT_TICK_S = 0.5       # breaker transitions are published from this tick only (in order)
BATCH_PRIORITY = "batch"


class Offload(Protocol):
    """The provider Batch API path for batch-priority traffic (pipeline/batchapi/)."""

    def supports(self, deployment_id: str) -> bool: ...

    def takes(self, routed: RoutedRequest) -> bool:
        """A job can serve this request (otherwise it is dispatched live)."""

    async def submit(self, batch: Batch) -> Any:
        """Return once the job is durably recorded; raise if it is not."""


async def dispatch_batch(dispatcher: Dispatcher, batch: Batch, origin: Origin, codec: Any,
                         dead_letter_topic: str, offload: Offload | None = None,
                         hops: FinishedHops | None = None) -> list[Out]:
    """The outputs of every request of ``batch``: dispatched concurrently, each isolated —
    a bug in one request dead-letters that request alone (its RoutedRequest, as JSON).
    Requests whose hop ``hops`` has already finished (a re-read Batch, a re-batched
    request) are left out: their outputs are on the broker already."""
    if hops is not None:
        fresh = [item for item in batch.items if not hops.finished(item)]
        if len(fresh) < len(batch.items):
            log.info("hops_already_finished batch_id=%s deployment=%s skipped=%d of %d",
                     batch.batch_id, batch.deployment, len(batch.items) - len(fresh),
                     len(batch.items))
            batch = dataclasses.replace(batch, items=fresh)
        if not batch.items:
            return []
    if batch.priority == BATCH_PRIORITY and offload is not None and offload.supports(batch.deployment):
        try:
            taken = [item for item in batch.items if offload.takes(item)]
            if taken:
                await offload.submit(dataclasses.replace(batch, items=taken))
            batch = dataclasses.replace(batch, items=[i for i in batch.items if i not in taken])
            if not batch.items:
                return []
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("offload_failed batch_id=%s deployment=%s requests=%d error=%r; "
                        "dispatching live", batch.batch_id, batch.deployment, len(batch.items), exc)
    results = await asyncio.gather(*(dispatcher.handle(item) for item in batch.items),
                                   return_exceptions=True)
    outs: list[Out] = []
    for item, result in zip(batch.items, results):
        if isinstance(result, asyncio.CancelledError):
            raise result
        if isinstance(result, BaseException):
            r = item.request
            log.error("dispatch_failed request_id=%s deployment=%s batch_id=%s error=%r",
                      r.request_id, item.route.deployment, batch.batch_id, result)
            outs.append(dead_letter(
                dead_letter_topic, origin, codec.encode_json(item), "dispatch", "internal_error",
                f"dispatch failed: {type(result).__name__}: {result}", request_id=r.request_id,
                tenant=r.tenant))
        else:
            outs += result
    return outs


def _forget_after_recovery(hops: FinishedHops):
    async def recovered() -> None:
        hops.forget_partitions()       # the changelog was read back: index it afresh
    return recovered


def register_dispatch(app: faust.App, runtime: Runtime, source: faust.TopicT,
                      emitter: Emitter, *, offload: Offload | None = None,
                      partitions: int | None = None,
                      inline: InlineDispatch | None = None) -> Dispatcher:
    """``partitions``: llm.batches' partition count, for the finished-hops and guards
    tables (None: no tables — every re-read Batch is dispatched again, and a deployment
    whose partition moves starts with fresh guards). ``inline``: intake's way to dispatch
    a Batch of one itself, given this dispatcher here."""
    s = runtime.settings
    keys = runtime.load_keys()          # fail fast at start-up on a missing or bad key
    calls = runtime.deployments.calls
    adapters = {dep_id: make_adapter(dep, keys[dep_id], calls)
                for dep_id, dep in runtime.deployments.by_id.items()}
    dispatcher = Dispatcher(runtime.catalog, runtime.deployments, adapters, s.topics,
                            calls.retry, rng=runtime.rng,
                            publish=lambda outs: emitter.emit(outs, agent="dispatch"))
    partition_of: dict[str, int] = {}   # deployment id -> the llm.batches partition it arrives on
    source_name = source.get_topic_name()

    hops = None
    if partitions:
        table = app.tables.add(PinnedTable(
            app, name="dispatched", partitions=partitions, beacon=app.tables.beacon,
            help="hops whose outputs are on the broker",
            schema=faust.Schema(key_serializer="json", value_serializer="json")))
        table.pins = {}
        hops = FinishedHops(table, window_ms=s.dispatch_hop_window_s * 1000, pins=table.pins)
        table.on_recover(_forget_after_recovery(hops))
    # Items of each Batch being dispatched, by (partition, offset), recorded once published.
    in_flight: dict[tuple[int, int], list[RoutedRequest]] = {}

    async def step(value: bytes | None, origin: Origin) -> list[Out]:
        try:
            batch = runtime.codec.decode(value, Batch)
        except DecodeError as exc:
            return [dead_letter(s.topics.dead_letter, origin, value, "dispatch", exc.code, exc.reason)]
        partition_of[batch.deployment] = origin.partition
        in_flight[(origin.partition, origin.offset)] = batch.items
        return await dispatch_batch(dispatcher, batch, origin, runtime.codec, s.topics.dead_letter,
                                    offload, hops)

    def published(origin: Origin) -> None:
        items = in_flight.pop((origin.partition, origin.offset), None)
        if hops is not None and items:
            hops.record(items, origin.partition, now_ms())

    async def dispatch_here(batch: Batch, partition: int, origin: Origin) -> list[Out]:
        """A Batch of one of ``partition`` that intake dispatches (agents/inline.py)."""
        partition_of[batch.deployment] = partition
        return await dispatch_batch(dispatcher, batch, origin, runtime.codec,
                                    s.topics.dead_letter, None, hops)

    def finished_here(batch: Batch, partition: int) -> None:
        if hops is not None:
            hops.record(batch.items, partition, now_ms())

    if inline is not None:
        inline.dispatch, inline.finished = dispatch_here, finished_here

    @app.agent(source, name="dispatch")
    async def dispatch_agent(stream):
        await process(stream, step, emitter, agent="dispatch",
                      dead_letter_topic=s.topics.dead_letter, concurrency=s.dispatch_concurrency,
                      after=published)

    @app.task
    async def cancels():
        await read_cancels(s.kafka_bootstrap, s.topics.cancels, runtime.codec, dispatcher)

    @app.timer(interval=ALERT_TICK_S)
    async def breaker_alerts():
        outs = dispatcher.alerts()
        if outs:
            await emitter.emit(outs)

    @app.on_partitions_assigned.connect
    async def forget_moved_deployments(sender, assigned, **kwargs) -> None:
        if hops is not None:
            hops.forget_partitions()
        owned = {tp.partition for tp in assigned if tp.topic == source_name}
        keep = {dep for dep, p in partition_of.items() if p in owned}
        for dep in set(partition_of) - keep:
            del partition_of[dep]
        gone = dispatcher.retain(keep)
        if gone:
            log.info("guards_dropped_after_rebalance deployments=%s", ",".join(sorted(gone)))
    if partitions:
        register_guard_state(app, dispatcher, partition_of, partitions, ALERT_TICK_S)

    def guard_state():
        """Breakers and buckets of the deployments this worker dispatches to, at scrape."""
        open_ = gauge("llmpipe_breaker_open")
        bucket = gauge("llmpipe_bucket_available")
        in_flight = gauge("llmpipe_calls_in_flight")
        for dep, state in dispatcher.guards.snapshot().items():
            open_.add_metric([dep], BREAKER_LEVEL.get(state["breaker"]["state"], 0.0))
            limits = state["limits"]
            bucket.add_metric([dep, "requests"], limits["request_tokens"])
            bucket.add_metric([dep, "tokens"], limits["token_tokens"])
            in_flight.add_metric([dep], limits["in_flight"])
        yield from (open_, bucket, in_flight)
    register_collector(guard_state)

    @app.page("/llmpipe/dispatch/health/")
    async def dispatch_health(web, request):
        """Per deployment this worker dispatches to: breaker state, limiter tokens and
        in-flight calls, P95 latency and error rate over the health window."""
        body = dispatcher.health()
        body["partitions"] = {dep: p for dep, p in sorted(partition_of.items())}
        return web.json(body)

    return dispatcher
