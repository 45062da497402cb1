"""Prometheus metrics on the embedded stack (issue 20): after a few requests through the
gateway, the worker's GET /metrics has live values for requests by tenant and outcome,
latency histograms, cache lookups, breakers and buckets, micro-batches, consumer lag, the
ledger's inserts and budget consumption; the gateway's GET /metrics counts its HTTP requests. Every sample
parses, and no label carries a request id."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.dev.gateway import issue_key, start_gateway
from pipeline.events.models import Budget, TenantPolicy
from tests.integration.conftest import worker_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    with worker_stack(broker, tmp_path_factory, "metrics", seed=20) as stack:
        key = issue_key(stack, "metco", TenantPolicy("metco", cache_kinds=["exact"], budgets=[
            Budget("month", soft_usd=Decimal("5"), hard_usd=Decimal("10"))]))
        gateway = start_gateway(stack, "metrics-1")
        yield stack, gateway, key


def scrape(url: str) -> dict[str, list]:
    resp = httpx.get(url, timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(resp.text)}


def total(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_the_worker_and_the_gateway_serve_live_metrics(stack):
    stack, gateway, key = stack
    auth = {"authorization": f"Bearer {key}"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Metrics, please."}]}
    ids = []
    for _ in range(3):                      # a miss, then (once kept) exact hits
        resp = httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=auth,
                          timeout=60)
        assert resp.status_code == 200, resp.text
        ids.append(resp.headers["x-llmpipe-request-id"])
    bad = httpx.post(f"{gateway.base_url}/chat/completions", json={**body, "model": "gpt-9"},
                     headers=auth, timeout=60)
    assert bad.status_code in (400, 404)
    worker = stack.workers[0]
    worker.wait_for_usage(ids)

    m = scrape(f"{worker.url}/metrics")
    assert total(m["llmpipe_requests"], "llmpipe_requests_total", tenant="metco") >= 3
    assert total(m["llmpipe_requests"], "llmpipe_requests_total", tenant="metco",
                 outcome="ok") >= 1
    assert total(m["llmpipe_request_duration_seconds"],
                 "llmpipe_request_duration_seconds_count") >= 3
    assert total(m["llmpipe_provider_duration_seconds"],
                 "llmpipe_provider_duration_seconds_count", model="gpt-4o-mini") >= 1
    assert total(m["llmpipe_cache_lookups"], "llmpipe_cache_lookups_total") >= 3
    # the gateway's requests are interactive: dispatched in intake, no Batch published
    assert total(m["llmpipe_intake_dispatches"], "llmpipe_intake_dispatches_total",
                 priority="interactive", where="intake") >= 1
    assert any(s.labels["deployment"].startswith("openai") for s in m["llmpipe_breaker_open"])
    assert all(s.value == 0 for s in m["llmpipe_breaker_open"])           # all closed
    assert {s.labels["bucket"] for s in m["llmpipe_bucket_available"]} == {"requests", "tokens"}
    lag_topics = {s.labels["topic"] for s in m["llmpipe_consumer_lag"]}
    assert any(t.endswith("llm.requests") for t in lag_topics), lag_topics
    assert total(m["llmpipe_ledger_insert_seconds"], "llmpipe_ledger_insert_seconds_count",
                 sink="usage") >= 1
    assert {s.labels["sink"] for s in m["llmpipe_ledger_pending_rows"]} == {
        "usage", "alerts", "dead_letters"}
    # budget consumption: settled by the settle agent from the same usage, soon after
    deadline = time.monotonic() + 20
    while not total(m["llmpipe_budget_spent_usd"], "llmpipe_budget_spent_usd", tenant="metco",
                    team="*", period="month", state="settled") and time.monotonic() < deadline:
        time.sleep(0.5)
        m = scrape(f"{worker.url}/metrics")
    assert total(m["llmpipe_budget_spent_usd"], "llmpipe_budget_spent_usd", tenant="metco",
                 team="*", period="month", state="settled") > 0
    assert total(m["llmpipe_budget_limit_usd"], "llmpipe_budget_limit_usd", tenant="metco",
                 period="month", level="hard") == 10
    # the tenancy table's coalesced changelog: what was written, and sent at the next commit
    def writes() -> dict:
        return {(s.labels["table"], s.labels["kind"]): s.value for s in m["llmpipe_table_writes"]}
    deadline = time.monotonic() + 10
    while not writes().get(("tenancy", "sent")) and time.monotonic() < deadline:
        time.sleep(0.5)
        m = scrape(f"{worker.url}/metrics")
    assert writes()[("tenancy", "written")] >= 4       # an admission and a sheet, twice
    assert 0 < writes()[("tenancy", "sent")] <= writes()[("tenancy", "written")]
    every_label = {v for samples in m.values() for s in samples for v in s.labels.values()}
    assert not every_label & set(ids)                                      # bounded labels

    g = scrape(f"{gateway.base_url.removesuffix('/v1')}/metrics")
    assert total(g["llmpipe_gateway_requests"], "llmpipe_gateway_requests_total",
                 endpoint="chat", status="200") >= 3
    assert total(g["llmpipe_gateway_requests"], "llmpipe_gateway_requests_total",
                 endpoint="chat") >= 4
