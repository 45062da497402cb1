"""The Faust application: one worker process running the agents named in settings
(intake, dispatch, ledger, monitor). Agents are thin: decode, call the plain steps, publish."""

from __future__ import annotations

import logging

import faust

from pipeline import metrics
from pipeline.agents.batcher import register_batcher
from pipeline.agents.dispatch import register_dispatch
from pipeline.outputs import Emitter
from pipeline.agents.cache import CacheTable, register_cache_fill
from pipeline.agents.inline import InlineDispatch
from pipeline.agents.intake import register_intake
from pipeline.agents.tenancy import Tenancy, register_settle, register_views
from pipeline.batching.config import load_batching
from pipeline.agents.ledger import register_ledger
from pipeline.agents.monitor import register_monitor
from pipeline.batchapi.poller import register_batch_api
from pipeline.kafka import write_behind
from pipeline.kafka.faust_tuning import fetching, set_fetch_waits
from pipeline.kafka.redelivery import stream_iterator_problem
from pipeline.kafka.topics import faust_partitions, load_topic_specs, prefixed
from pipeline.runtime import Runtime

log = logging.getLogger("llmpipe.app")


def create_app(runtime: Runtime) -> faust.App:
    s = runtime.settings
    problem = stream_iterator_problem()
    if problem:
        log.warning("faust_stream_iterator %s", problem)
    set_fetch_waits(s.fetch_max_wait_ms, s.idle_fetch_wait_ms, s.idle_fetch_after_s,
                    s.fetch_min_bytes)
    session = s.session_timeout_s
    app = faust.App(
        s.app_id,
        broker=f"kafka://{s.kafka_bootstrap}",
        store="memory://",
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_replication_factor=s.replication_factor,
        broker_session_timeout=session,
        broker_rebalance_timeout=session,
        broker_heartbeat_interval=max(1.0, session / 6),
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        stream_wait_empty=True,
        web_enabled=s.web_port > 0,
        web_port=max(s.web_port, 1),
        web_bind=s.web_host,
        web_host=s.web_host,
        producer_max_request_size=s.max_message_bytes,
        # A send whose topic has no leader fails within this instead of Faust's 20 minutes,
        # so the emitter's stall bound can act on it.
        producer_request_timeout=max(5.0, min(30.0, s.publish_stall_s / 2)),
    )
    partitions = faust_partitions(prefixed(load_topic_specs(), s.topics.prefix))

    def topic(name: str) -> faust.TopicT:
        return app.topic(name, partitions=partitions.get(name), key_serializer="raw",
                         value_serializer="raw", internal=False)

    async def send(topic_name: str, key: bytes | None, value: bytes, partition: int | None):
        return await app.producer.send(topic_name, key, value, partition, None, None)

    emitter = Emitter(send, runtime.codec, s.topics, max_message_bytes=s.max_message_bytes,
                      stall_s=s.publish_stall_s)
    windows = load_batching()        # intake (windowless priorities) and the batcher share it
    # Batches of one dispatched by intake itself; needs both agents in this worker.
    inline = InlineDispatch(app, s.topics.batches, partitions.get(s.topics.batches),
                            windows.in_intake, s.intake_dispatch_max) \
        if {"intake", "dispatch"} <= set(s.agents) else None
    if "intake" in s.agents:
        # Reserve (intake) and settle (usage) meet on the tenant's partition: same worker.
        tenancy = Tenancy(app, runtime, partitions[s.topics.requests])
        # The response cache lives there too: looked up by intake, filled by cachefill.
        cache = CacheTable(app, runtime, partitions[s.topics.requests])
        register_intake(app, runtime, tenancy, topic(s.topics.requests), emitter,
                        partitions.get(s.topics.requests), windows, cache.cache, inline)
        register_settle(app, runtime, tenancy, topic(s.topics.usage), emitter)
        register_cache_fill(app, runtime, tenancy, cache, topic(s.topics.cache_fills), emitter)
        register_views(app, tenancy)
    if "batcher" in s.agents or "dispatch" in s.agents:
        # Dispatch reads only what the batcher publishes (llm.routed -> llm.batches, same
        # deployment partitions): naming dispatch runs its batcher too.
        register_batcher(app, runtime, topic(s.topics.routed), emitter, windows)
    if "dispatch" in s.agents:
        # Batch-priority batches go to provider Batch APIs; the poller owns the job
        # partitions matching this worker's llm.batches partitions.
        offload = register_batch_api(app, runtime, emitter, s.topics.batches)
        register_dispatch(app, runtime, topic(s.topics.batches), emitter, offload=offload,
                          partitions=partitions.get(s.topics.batches), inline=inline)
    if "ledger" in s.agents:
        register_ledger(app, runtime, topic(s.topics.usage), emitter)
    if "monitor" in s.agents:
        register_monitor(app, runtime, topic(s.topics.usage), topic(s.topics.alerts), partitions,
                         emitter)
    @app.page("/llmpipe/health/")
    async def health(web, request):
        assigned = len(app.consumer.assignment()) if app.consumer else 0
        return web.json({"ok": True, "app_id": s.app_id, "agents": list(s.agents),
                         "assigned_partitions": assigned,
                         "fetching_partitions": fetching(app.consumer)})

    @app.page("/metrics")
    async def prometheus(web, request):
        return web.bytes(metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE})

    def consumer_lag():
        """Per assigned partition: the log end minus this worker's committed offset."""
        family = metrics.gauge("llmpipe_consumer_lag")
        monitor = app.monitor
        assigned = app.consumer.assignment() if app.consumer else set()
        for tp in sorted(assigned):
            end = monitor.tp_end_offsets.get(tp) if monitor.tp_end_offsets else None
            if end is None:
                continue
            committed = (monitor.tp_committed_offsets or {}).get(tp, 0)
            family.add_metric([tp.topic, str(tp.partition)], max(0, end - committed))
        yield family
    metrics.register_collector(consumer_lag)

    def table_writes():
        family = metrics.gauge("llmpipe_table_writes")
        for table, (written, sent) in sorted(write_behind.totals().items()):
            family.add_metric([table, "written"], written)
            family.add_metric([table, "sent"], sent)
        yield family
    metrics.register_collector(table_writes)

    log.info("app_created app_id=%s agents=%s bootstrap=%s", s.app_id, ",".join(s.agents),
             s.kafka_bootstrap)
    return app
