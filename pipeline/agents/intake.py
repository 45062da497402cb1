"""Faust wiring of the intake step (llm.requests -> llm.routed | llm.batches for windowless
priorities | responses | dead letters),
with the tenant's policy and its state (admissions, budgets, canary) on the same partition."""

from __future__ import annotations

import faust

from pipeline.agents.flow import process
from pipeline.outputs import Emitter
from pipeline.agents.tenancy import Tenancy
from pipeline.batching.config import BatchingConfig
from pipeline.cache.store import ResponseCache
from pipeline.intake import Intake
from pipeline.outputs import Origin
from pipeline.runtime import Runtime


def register_intake(app: faust.App, runtime: Runtime, tenancy: Tenancy, source: faust.TopicT,
                    emitter: Emitter, partitions: int | None, windows: BatchingConfig,
                    cache: ResponseCache | None = None) -> None:
    """``partitions``: llm.requests' partition count (a record must sit on its tenant's).
    ``windows``: the micro-batch windows (windowless priorities skip the batcher).
    ``cache``: the response cache on the same tenant partitions."""
    s = runtime.settings
    intake = Intake(runtime.codec, runtime.catalog, runtime.router(), runtime.policy, s.topics,
                    policies=tenancy.directory.get, state=tenancy.state, bounds=runtime.bounds,
                    partitions=partitions, windows=windows, cache=cache)

    async def step(value: bytes | None, origin: Origin):
        return intake.handle(value, origin, await intake.prepare(value))

    @app.agent(source, name="intake")
    async def intake_agent(stream):
        await tenancy.ready()
        await process(stream, step, emitter, agent="intake",
                      dead_letter_topic=s.topics.dead_letter, concurrency=s.intake_concurrency)
