"""Faust wiring of dispatch (llm.routed -> responses + usage, or a re-route; breaker alerts
on llm.alerts) and the worker's view of its deployment guards.

Guard state (breakers, buckets, health windows) is in this worker's memory. llm.routed is
keyed by deployment id, so the worker owning a deployment's partition is its only writer.
After a rebalance, guards of deployments whose partitions left this worker are dropped: a
deployment starts fresh (breaker closed, buckets full, no health samples) on whichever
worker receives its partition, and again here should it come back."""

from __future__ import annotations

import logging

import faust
import faust.web

from pipeline.agents.flow import Emitter, process
from pipeline.dispatch import Dispatcher
from pipeline.events.codec import DecodeError
from pipeline.events.models import RoutedRequest
from pipeline.outputs import Origin, Out, dead_letter
from pipeline.providers import make_adapter
from pipeline.resilience.backoff import Backoff
from pipeline.runtime import Runtime

log = logging.getLogger("llmpipe.dispatch")

ALERT_TICK_S = 1.0       # how often breakers are polled for transitions without traffic


def register_dispatch(app: faust.App, runtime: Runtime, source: faust.TopicT,
                      emitter: Emitter) -> Dispatcher:
    s = runtime.settings
    keys = runtime.load_keys()          # fail fast at start-up on a missing or bad key
    calls = runtime.deployments.calls
    adapters = {dep_id: make_adapter(dep, keys[dep_id], calls)
                for dep_id, dep in runtime.deployments.by_id.items()}
    dispatcher = Dispatcher(runtime.catalog, runtime.deployments, adapters, s.topics,
                            Backoff(calls.backoff_base_s, calls.backoff_cap_s, calls.jitter),
                            rng=runtime.rng)
    partition_of: dict[str, int] = {}   # deployment id -> the llm.routed partition it arrives on

    async def step(value: bytes | None, origin: Origin) -> list[Out]:
        try:
            routed = runtime.codec.decode(value, RoutedRequest)
        except DecodeError as exc:
            return [dead_letter(s.topics.dead_letter, origin, value, "dispatch", exc.code, exc.reason)]
        partition_of[routed.route.deployment] = origin.partition
        return await dispatcher.handle(routed)

    @app.agent(source, name="dispatch")
    async def dispatch_agent(stream):
        await process(stream, step, emitter, agent="dispatch",
                      dead_letter_topic=s.topics.dead_letter, concurrency=s.dispatch_concurrency)

    @app.timer(interval=ALERT_TICK_S)
    async def breaker_alerts():
        outs = dispatcher.alerts()
        if outs:
            await emitter.emit(outs)

    @app.on_partitions_assigned.connect
    async def forget_moved_deployments(sender, assigned, **kwargs) -> None:
        owned = {tp.partition for tp in assigned if tp.topic == s.topics.routed}
        keep = {dep for dep, p in partition_of.items() if p in owned}
        for dep in set(partition_of) - keep:
            del partition_of[dep]
        gone = dispatcher.retain(keep)
        if gone:
            log.info("guards_dropped_after_rebalance deployments=%s", ",".join(sorted(gone)))

    @app.page("/llmpipe/dispatch/health/")
    async def dispatch_health(web, request):
        """Per deployment this worker dispatches to: breaker state, limiter tokens and
        in-flight calls, P95 latency and error rate over the health window."""
        body = dispatcher.health()
        body["partitions"] = {dep: p for dep, p in sorted(partition_of.items())}
        return web.json(body)

    return dispatcher
