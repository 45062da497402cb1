"""Faust wiring of the intake step (llm.requests -> llm.routed | a Batch of one on
llm.batches, or dispatched right here | responses | dead letters), with the tenant's policy
and its state (admissions, budgets, canary) on the same partition."""

from __future__ import annotations

import faust

from pipeline.agents.flow import process
from pipeline.agents.inline import InlineDispatch
from pipeline.outputs import Emitter
from pipeline.agents.tenancy import Tenancy
from pipeline.batching.config import BatchingConfig
from pipeline.cache.store import ResponseCache
from pipeline.intake import Intake
from pipeline.intake.summaries import Summariser
from pipeline.providers import make_adapter
from pipeline.providers.base import Adapter
from pipeline.providers.deployments import Deployment
from pipeline.secrets import load_secret
from pipeline.outputs import Origin
from pipeline.runtime import Runtime


def make_summariser(runtime: Runtime) -> Summariser:
    """Summaries for context policies, through each deployment's adapter, built (and its
    key read) the first time a summary goes to it: a missing key fails that summary only,
    and the request keeps its whole history."""
    adapters: dict[str, Adapter] = {}

    def adapter_for(deployment: Deployment) -> Adapter:
        if deployment.id not in adapters:
            key = load_secret(deployment.api_key_env, deployment.api_key_file,
                              f"deployment {deployment.id}")
            adapters[deployment.id] = make_adapter(deployment, key, runtime.deployments.calls)
        return adapters[deployment.id]
    return Summariser(runtime.catalog, runtime.deployments, adapter_for)


def register_intake(app: faust.App, runtime: Runtime, tenancy: Tenancy, source: faust.TopicT,
                    emitter: Emitter, partitions: int | None, windows: BatchingConfig,
                    cache: ResponseCache | None = None,
                    inline: InlineDispatch | None = None) -> None:
    """``partitions``: llm.requests' partition count (a record must sit on its tenant's).
    ``windows``: the micro-batch windows (windowless priorities, and requests whose
    deployment is quiet, skip the batcher).
    ``cache``: the response cache on the same tenant partitions. ``inline``: dispatch of
    Batches of one right here when this worker owns their deployment."""
    s = runtime.settings
    intake = Intake(runtime.codec, runtime.catalog, runtime.router(), runtime.policy, s.topics,
                    policies=tenancy.directory.get, state=tenancy.state, bounds=runtime.bounds,
                    partitions=partitions, windows=windows, cache=cache,
                    summariser=make_summariser(runtime))

    async def step(value: bytes | None, origin: Origin):
        outs = intake.handle(value, origin, await intake.prepare(value, origin))
        return await inline.run(outs, origin) if inline is not None else outs

    @app.agent(source, name="intake")
    async def intake_agent(stream):
        await tenancy.ready()
        await process(stream, step, emitter, agent="intake",
                      dead_letter_topic=s.topics.dead_letter, concurrency=s.intake_concurrency,
                      after=inline.published if inline is not None else None)
