"""Prometheus metrics of a worker (GET /metrics on its web port) and of the gateway (GET
/metrics on its port). Names, labels and meaning: docs/OPERATIONS.md "Metrics".

Most figures are read off the events a process publishes, in one place (``observe``,
called by the emitter for every output that reached the broker): a Usage ends a request
(requests by tenant, model and outcome; end-to-end, provider and first-token latency;
retries and failovers), a Batch is a micro-batch closed (size, fill reason). State that
is not an event — breakers, buckets, consumer lag, the ledger's backlog — is read when
Prometheus scrapes, by collectors the agents register (``register_collector``).

Labels are bounded: tenants, models, deployments, providers, priorities, topics and
partitions, error codes — never a request id or an end user."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.events.models import OK, Batch, Usage

REGISTRY = CollectorRegistry()
CONTENT_TYPE = CONTENT_TYPE_LATEST
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128)

#: every metric a process may serve, as PromQL names it (a counter with ``_total``), with
#: its labels; HISTOGRAMS are read through ``_bucket``/``_sum``/``_count``. The Grafana
#: dashboards are checked against these (tests/unit/test_deploy_grafana.py).
LABELS: dict[str, frozenset[str]] = {}
HISTOGRAMS: set[str] = set()


def _counter(name: str, doc: str, labels: list[str]) -> Counter:
    LABELS[f"{name}_total"] = frozenset(labels)
    return Counter(name, doc, labels, registry=REGISTRY)


def _histogram(name: str, doc: str, labels: list[str], buckets: tuple) -> Histogram:
    LABELS[name] = frozenset(labels)
    HISTOGRAMS.add(name)
    return Histogram(name, doc, labels, buckets=buckets, registry=REGISTRY)


#: gauges read at scrape by the agents' collectors (``gauge(name)`` makes the family)
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "llmpipe_breaker_open": ("1 while a deployment's breaker is open, 0.5 half-open, 0 closed",
                             ("deployment",)),
    "llmpipe_bucket_available": ("Tokens left in a deployment's rate-limit buckets "
                                 "(requests, tokens)", ("deployment", "bucket")),
    "llmpipe_calls_in_flight": ("Provider calls in flight", ("deployment",)),
    "llmpipe_consumer_lag": ("Records not yet committed by this worker, by topic and "
                             "partition", ("topic", "partition")),
    "llmpipe_ledger_pending_rows": ("Rows read but not yet in ClickHouse, by sink", ("sink",)),
    "llmpipe_table_writes": ("Since start, writes to a table whose changelog is coalesced "
                             "(kind written) and the changelog records sent for them (kind "
                             "sent)", ("table", "kind")),
    "llmpipe_budget_spent_usd": ("Spend in the current budget period: settled (billed) or "
                                 "reserved (in flight), for the tenant (team *) and each team "
                                 "with a budget", ("tenant", "team", "period", "state")),
    "llmpipe_budget_limit_usd": ("A budget's soft or hard limit for the current period",
                                 ("tenant", "team", "period", "level")),
}
LABELS.update({name: frozenset(labels) for name, (_, labels) in GAUGES.items()})


def gauge(name: str) -> GaugeMetricFamily:
    doc, labels = GAUGES[name]
    return GaugeMetricFamily(name, doc, labels=list(labels))

REQUESTS = _counter("llmpipe_requests", "Requests ended, by tenant, served model and outcome "
                    "(ok, cache_hit, error, rejected)", ["tenant", "model", "outcome"])
ERRORS = _counter("llmpipe_errors", "Requests ended in an error, by code", ["code"])
REQUEST_SECONDS = _histogram("llmpipe_request_duration_seconds", "End to end, from the "
                             "request's creation to its answer (ok requests)", ["model"], SECONDS)
PROVIDER_SECONDS = _histogram("llmpipe_provider_duration_seconds", "Time spent in provider "
                              "calls per request", ["provider", "model"], SECONDS)
TTFT_SECONDS = _histogram("llmpipe_ttft_seconds", "Time to the first token of streamed "
                          "requests, from their creation", ["model"], SECONDS)
RETRIES = _counter("llmpipe_retries", "Provider calls re-tried on the same deployment",
                   ["deployment"])
HEDGES = _counter("llmpipe_hedges", "Hedged calls started, by the deployment that was slow",
                  ["deployment"])
FAILOVERS = _counter("llmpipe_failovers", "Requests that moved to another deployment, by the "
                     "one that answered", ["deployment"])
COST = _counter("llmpipe_cost_usd", "Money billed, USD (for rates; the ledger is exact)",
                ["tenant"])
BATCHES = _counter("llmpipe_batches", "Micro-batches closed, by priority and why",
                   ["priority", "reason"])
INTAKE_DISPATCHES = _counter("llmpipe_intake_dispatches", "Batches of one (no window, or a "
                             "quiet one skipped) of a priority that may be dispatched in "
                             "intake, by where they were: intake, or hop (llm.batches: another "
                             "worker owns the deployment, or intake held its most calls)",
                             ["priority", "where"])
BATCH_SIZE = _histogram("llmpipe_batch_size", "Requests per micro-batch", ["priority"], SIZES)
CACHE_LOOKUPS = _counter("llmpipe_cache_lookups", "Response-cache lookups: result hit or miss, "
                         "kind of a hit (exact, semantic)", ["kind", "result"])
CONTEXT_TOKENS = _counter("llmpipe_context_tokens_removed", "Prompt tokens context management "
                          "removed (estimate)", ["tenant"])
LEDGER_INSERT_SECONDS = _histogram("llmpipe_ledger_insert_seconds", "ClickHouse inserts of the "
                                   "ledger, by sink", ["sink"], SECONDS)
GATEWAY_REQUESTS = _counter("llmpipe_gateway_requests", "HTTP requests to the gateway, by "
                            "endpoint and status code", ["endpoint", "status"])
GATEWAY_SECONDS = _histogram("llmpipe_gateway_duration_seconds", "HTTP request to response "
                             "(for a stream: to its end)", ["endpoint"], SECONDS)

def observe(event: object) -> None:
    """Count what a published event says (a Usage, a Batch); other events say nothing."""
    if isinstance(event, Usage):
        _usage(event)
    elif isinstance(event, Batch):
        BATCHES.labels(event.priority, event.fill_reason).inc()
        BATCH_SIZE.labels(event.priority).observe(len(event.items))


def _usage(u: Usage) -> None:
    if u.for_request_id:                       # a context summary: a call, not a request
        COST.labels(u.tenant).inc(u.cost_nanos / 1e9)
        return
    model = u.served_model or u.routed_model or u.requested_model or "-"
    if u.status != OK:
        outcome = "rejected" if not u.routed_model and not u.deployment else "error"
        ERRORS.labels(u.error_code or u.status).inc()
    else:
        outcome = "cache_hit" if u.cache == "hit" else "ok"
        REQUEST_SECONDS.labels(model).observe(max(0, u.completed_at_ms - u.created_at_ms) / 1e3)
        if u.first_token_at_ms:
            TTFT_SECONDS.labels(model).observe(
                max(0, u.first_token_at_ms - u.created_at_ms) / 1e3)
    REQUESTS.labels(u.tenant, model, outcome).inc()
    COST.labels(u.tenant).inc(u.cost_nanos / 1e9)
    if u.provider_ms and u.provider:
        PROVIDER_SECONDS.labels(u.provider, model).observe(u.provider_ms / 1e3)
    if u.deployment:
        retries = u.attempts - 1 - u.fallbacks
        if retries > 0:
            RETRIES.labels(u.deployment).inc(retries)
        if u.fallbacks:
            FAILOVERS.labels(u.deployment).inc(u.fallbacks)
    removed = u.context_tokens_before - u.context_tokens_after
    if removed > 0:
        CONTEXT_TOKENS.labels(u.tenant).inc(removed)


class _Callback(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]):
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


def register_collector(collect: Callable[[], Iterable[Metric]]) -> None:
    """Read some state at each scrape: ``collect`` yields metric families (GaugeMetricFamily
    from prometheus_client.core)."""
    REGISTRY.register(_Callback(collect))


def exposition() -> bytes:
    """Every metric of this process in Prometheus' text format."""
    return generate_latest(REGISTRY)
