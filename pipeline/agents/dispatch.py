"""Faust wiring of dispatch (llm.routed -> responses + usage, or a re-route)."""

from __future__ import annotations

import faust

from pipeline.agents.flow import Emitter, process
from pipeline.dispatch import Dispatcher
from pipeline.events.codec import DecodeError
from pipeline.events.models import RoutedRequest
from pipeline.outputs import Origin, Out, dead_letter
from pipeline.providers import make_adapter
from pipeline.resilience.backoff import Backoff
from pipeline.runtime import Runtime


def register_dispatch(app: faust.App, runtime: Runtime, source: faust.TopicT, emitter: Emitter) -> None:
    s = runtime.settings
    keys = runtime.load_keys()          # fail fast at start-up on a missing or bad key
    calls = runtime.deployments.calls
    adapters = {dep_id: make_adapter(dep, keys[dep_id], calls)
                for dep_id, dep in runtime.deployments.by_id.items()}
    dispatcher = Dispatcher(runtime.catalog, runtime.deployments, adapters, s.topics,
                            Backoff(calls.backoff_base_s, calls.backoff_cap_s, calls.jitter),
                            rng=runtime.rng)

    async def step(value: bytes | None, origin: Origin) -> list[Out]:
        try:
            routed = runtime.codec.decode(value, RoutedRequest)
        except DecodeError as exc:
            return [dead_letter(s.topics.dead_letter, origin, value, "dispatch", exc.code, exc.reason)]
        return await dispatcher.handle(routed)

    @app.agent(source, name="dispatch")
    async def dispatch_agent(stream):
        await process(stream, step, emitter, agent="dispatch",
                      dead_letter_topic=s.topics.dead_letter, concurrency=s.dispatch_concurrency)
