"""Faust wiring of the cost monitor (agent "monitor"): llm.usage (and llm.alerts, for the
alert_count rules) into windowed tables keyed by (rule, tenant, subject, window start),
rule evaluation by pipeline.monitor, firings and resolutions onto llm.alerts; a timer
resolves open alerts when no new usage arrives; and, when a webhook URL is configured,
the webhook sink posting every alert of llm.alerts.

Each table is co-partitioned with its source topic, and Usage is keyed by tenant, so one
worker is the only writer of a tenant's windows and alert states. Steps run one event at a
time (concurrency 1): an alert is published and acknowledged before the state that
de-duplicates it is written, so a crash in between re-publishes the same alert id."""

from __future__ import annotations

import logging
import os

import faust
import httpx
from faust.exceptions import ConsumerNotStarted

from pipeline.agents.flow import process
from pipeline.outputs import Emitter
from pipeline.alerts.webhook import WebhookSink, load_webhook_config, redact_url, webhook_url
from pipeline.clock import now_ms
from pipeline.events.codec import Codec, DecodeError
from pipeline.events.models import Alert, Usage
from pipeline.kafka.write_behind import WriteBehind
from pipeline.monitor.evaluate import Decision, Monitor
from pipeline.monitor.rules import load_rules
from pipeline.outputs import Origin, Out, dead_letter
from pipeline.runtime import Runtime

log = logging.getLogger("llmpipe.monitor")


def register_monitor(app: faust.App, runtime: Runtime, usage_topic: faust.TopicT,
                     alerts_topic: faust.TopicT, partitions: dict[str, int],
                     emitter: Emitter) -> dict[str, Monitor]:
    s = runtime.settings
    ruleset = load_rules()              # a bad rule stops the worker at start-up
    schema = faust.Schema(key_serializer="json", value_serializer="json")
    sweep_ms = int(ruleset.sweep_interval_s * 1000)
    sources = {"usage": s.topics.usage, "alerts": s.topics.alerts}
    monitors: dict[str, Monitor] = {}
    for source, topic_name in sources.items():
        rules = ruleset.for_source(source)
        if not rules:
            continue
        n = partitions[topic_name]
        # Window rows are rewritten for every event (one per rule) and each keeps the
        # offset it counted last, so their changelog is coalesced (pipeline/kafka/write_behind.py);
        # alert states keep Faust's write-through (they de-duplicate published alerts).
        windows = app.Table(f"monitor_{source}_windows", partitions=n, schema=schema,
                            help=f"alert-rule window sums of {topic_name}")
        WriteBehind(windows)
        monitors[source] = Monitor(
            rules,
            windows,
            app.Table(f"monitor_{source}_states", partitions=n, schema=schema,
                      help=f"alert states (firing/pending) of rules over {topic_name}"))
    log.info("monitor_rules file=%s usage_rules=%d alert_rules=%d timer_s=%s", ruleset.path,
             len(ruleset.for_source("usage")), len(ruleset.for_source("alerts")),
             ruleset.timer_interval_s)

    async def publish(monitor: Monitor, decision: Decision) -> None:
        if decision.alerts:
            await emitter.emit([Out(s.topics.alerts, a.tenant, a) for a in decision.alerts])
            for a in decision.alerts:
                log.info("alert_%s rule=%s tenant=%s subject=%s value=%s threshold=%s alert_id=%s",
                         a.state, a.rule, a.tenant, a.subject, a.value, a.threshold, a.alert_id)
        monitor.apply(decision.writes)      # only once the alerts are on the broker

    def step_for(source: str, cls: type, observe):
        monitor = monitors[source]

        async def step(value: bytes | None, origin: Origin) -> list[Out]:
            try:
                event = runtime.codec.decode(value, cls)
            except DecodeError as exc:      # the ledger agent dead-letters the same bytes
                log.warning("monitor_skipped_undecodable topic=%s partition=%s offset=%s reason=%s",
                            origin.topic, origin.partition, origin.offset, exc.code)
                return []
            await publish(monitor, observe(monitor, event, origin.partition, origin.offset))
            monitor.sweep(origin.partition, now_ms(), sweep_ms)
            return []
        return step

    if "usage" in monitors:
        usage_step = step_for("usage", Usage, Monitor.observe_usage)

        @app.agent(usage_topic, name="monitor_usage")
        async def monitor_usage_agent(stream):
            await process(stream, usage_step, emitter, agent="monitor_usage",
                          dead_letter_topic=s.topics.dead_letter, concurrency=1)

    if "alerts" in monitors:
        alerts_step = step_for("alerts", Alert, Monitor.observe_alert)

        @app.agent(alerts_topic, name="monitor_alerts")
        async def monitor_alerts_agent(stream):
            await process(stream, alerts_step, emitter, agent="monitor_alerts",
                          dead_letter_topic=s.topics.dead_letter, concurrency=1)

    def owned(topic_name: str) -> set[int]:
        try:
            assigned = app.consumer.assignment()
        except ConsumerNotStarted:        # starting up: nothing is ours yet
            return set()
        return {tp.partition for tp in assigned if tp.topic == topic_name}

    @app.timer(interval=ruleset.timer_interval_s)
    async def monitor_timer():
        """Resolve what no longer holds although no event came (a spend window ended, an
        error burst aged out of its window)."""
        now = now_ms()
        for source, monitor in monitors.items():
            due = monitor.due_resolutions(now, owned(sources[source]))
            if not due:
                continue
            await emitter.emit([Out(s.topics.alerts, a.tenant, a) for _, _, a in due])
            for key, partition, alert in due:
                monitor.timer_published(key, partition, alert)
                log.info("alert_resolved rule=%s tenant=%s subject=%s value=%s threshold=%s "
                         "alert_id=%s by=timer", alert.rule, alert.tenant, alert.subject,
                         alert.value, alert.threshold, alert.alert_id)

    @app.on_partitions_assigned.connect
    async def forget_moved(sender, assigned, **kwargs) -> None:
        for source, monitor in monitors.items():
            monitor.retain_partitions({tp.partition for tp in assigned
                                       if tp.topic == sources[source]})

    @app.page("/llmpipe/monitor/alerts/")
    async def open_alerts(web, request):
        """Alert states held by this worker: firing (and pending) per rule and subject."""
        return web.json({source: monitor.firing(owned(sources[source]))
                         for source, monitor in monitors.items()})

    register_webhook(app, runtime, alerts_topic, emitter, partitions.get(s.topics.alerts))
    return monitors


def register_webhook(app: faust.App, runtime: Runtime, alerts_topic: faust.TopicT,
                     emitter: Emitter, partitions: int | None = None) -> WebhookSink | None:
    """The webhook sink, if the URL variable named in alert_rules.yaml (webhook.url_env,
    default LLMPIPE_ALERT_WEBHOOK_URL) is set. One POST per alert, in partition order; a
    delivery that fails after its retries is dead-lettered with the reason."""
    s = runtime.settings
    config = load_webhook_config()
    url = webhook_url(config, dict(os.environ))
    if url is None:
        log.info("alert_webhook_off reason=%s_unset", config.url_env)
        return None
    # What was posted, on the alert's partition (its changelog survives a restart): a
    # re-delivered alert is not posted again. The one window left is a crash between the
    # POST and this write; the POST's Idempotency-Key (the alert id) covers it.
    posted = app.Table("webhook_posted", partitions=partitions,
                       help="alert ids posted to the webhook",
                       schema=faust.Schema(key_serializer="json", value_serializer="json"))
    sink = WebhookSink(url, httpx.AsyncClient(), config, rng=runtime.rng, posted=posted)
    log.info("alert_webhook_on url=%s min_severity=%s max_attempts=%d", redact_url(url),
             config.min_severity, config.retry.max_attempts)

    async def step(value: bytes | None, origin: Origin) -> list[Out]:
        return await post_alert(sink, runtime.codec, s.topics.dead_letter, value, origin)

    @app.agent(alerts_topic, name="alerts_webhook")
    async def alerts_webhook_agent(stream):
        try:
            await process(stream, step, emitter, agent="alerts_webhook",
                          dead_letter_topic=s.topics.dead_letter, concurrency=1)
        finally:
            await sink.client.aclose()
            sink.close_logging()

    return sink


async def post_alert(sink: WebhookSink, codec: Codec, dead_letter_topic: str, value: bytes | None,
                     origin: Origin) -> list[Out]:
    """One record of llm.alerts to the webhook: nothing to publish when posted (or skipped),
    a dead letter with the reason when it cannot be decoded or delivered."""
    try:
        alert = codec.decode(value, Alert)
    except DecodeError as exc:
        return [dead_letter(dead_letter_topic, origin, value, "alerts_webhook", exc.code, exc.reason)]
    delivery = await sink.deliver(alert)
    if delivery.ok:
        return []
    log.error("alert_webhook_failed alert_id=%s rule=%s attempts=%d reason=%r",
              alert.alert_id, alert.rule, delivery.attempts, delivery.reason)
    return [dead_letter(dead_letter_topic, origin, value, "alerts_webhook", "webhook_failed",
                        delivery.reason, tenant=alert.tenant)]
