"""Faust wiring of the response cache: one table on the tenant's partitions (the cached
answers; its changelog brings them back after a restart or a rebalance) and the agent that
applies CacheFill events (dispatch's answers to keep, `llmpipe cache clear`) to it. Runs in
every worker that runs intake: the lookups (intake) and the fills meet on the tenant's
partition, so the worker owning it is the single writer."""

from __future__ import annotations

import logging

import faust

from pipeline.agents.flow import process
from pipeline.agents.tenancy import Tenancy
from pipeline.cache.embedder import Embedder, load_embedder
from pipeline.cache.remote import PREFIX, ProviderEmbedder
from pipeline.catalog import EMBEDDING
from pipeline.config import ConfigError, config_path
from pipeline.providers import make_adapter
from pipeline.secrets import load_secret
from pipeline.cache.store import CLEAR, ResponseCache, load_cache_config
from pipeline.cache.semantic import SemanticIndex
from pipeline.events.codec import DecodeError
from pipeline.events.models import CacheFill, TenantPolicy
from pipeline.outputs import Emitter, Origin, Out, dead_letter
from pipeline.runtime import Runtime

log = logging.getLogger("llmpipe.cache")
DEFAULT_MAX_ENTRIES = TenantPolicy("").cache_max_entries


def make_embedder(runtime: Runtime, name: str) -> Embedder:
    """The configured embedder: offline by name, or ``provider:MODEL`` through the first
    deployment of a catalog embedding model, with that deployment's key (the intake worker
    needs it too, then)."""
    if not name.startswith(PREFIX):
        return load_embedder(name)
    model = name[len(PREFIX):]
    spec = runtime.catalog.models.get(model)
    if spec is None or spec.kind != EMBEDDING or not runtime.deployments.for_model(model):
        raise ConfigError(config_path("cache.yaml"), "embedder",
                          f"{PREFIX}MODEL, MODEL a catalog embedding model with a deployment",
                          name)
    deployment = runtime.deployments.for_model(model)[0]
    key = load_secret(deployment.api_key_env, deployment.api_key_file,
                      f"deployment {deployment.id} (the cache's embedder)")
    adapter = make_adapter(deployment, key, runtime.deployments.calls)
    log.info("cache_embedder model=%s deployment=%s dims=%s", model, deployment.id,
             spec.dimensions)
    return ProviderEmbedder(model, deployment, adapter, runtime.catalog)


class CacheTable:
    def __init__(self, app: faust.App, runtime: Runtime, partitions: int):
        self.table = app.Table("cache", partitions=partitions, help="response cache",
                               schema=faust.Schema(key_serializer="json",
                                                   value_serializer="json"))
        # The semantic index is built in memory from the table's rows (their text, or the
        # provider vectors stored in them): nothing of it needs its own changelog.
        config = load_cache_config()
        self.cache = ResponseCache(self.table, runtime.catalog, config,
                                   SemanticIndex(make_embedder(runtime, config.embedder)))

        @app.on_partitions_assigned.connect
        async def on_assigned(sender, assigned, **kwargs) -> None:
            self.cache.forget_counts()

        @self.table.on_recover
        async def on_recovered() -> None:
            # The changelog has been read back (rows of new partitions came in, rows of
            # revoked ones went, neither through the cache): an index built meanwhile, from
            # a lookup in flight during the recovery, misses them. Build it again.
            self.cache.forget_counts()


def register_cache_fill(app: faust.App, runtime: Runtime, tenancy: Tenancy, cache: CacheTable,
                        source: faust.TopicT, emitter: Emitter) -> None:
    s = runtime.settings

    async def step(value: bytes | None, origin: Origin) -> list[Out]:
        try:
            fill = runtime.codec.decode(value, CacheFill)
        except DecodeError as exc:
            return [dead_letter(s.topics.dead_letter, origin, value, "cachefill", exc.code,
                                exc.reason)]
        policy = tenancy.directory.get(fill.tenant)
        removed = cache.cache.apply(fill, policy.cache_max_entries if policy
                                    else DEFAULT_MAX_ENTRIES)
        if fill.op == CLEAR or removed:
            log.info("cache_%s tenant=%s removed=%d", "cleared" if fill.op == CLEAR else
                     "evicted", fill.tenant, removed)
        return []

    @app.agent(source, name="cachefill")
    async def cache_fill_agent(stream):
        await tenancy.ready()
        await process(stream, step, emitter, agent="cachefill",
                      dead_letter_topic=s.topics.dead_letter, concurrency=1)
