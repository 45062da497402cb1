"""The one place a request's ending is built (pipeline/outputs/outcomes.py): its Response and its
Usage, priced from the catalog, for a live answer, a Batch API result, a routed failure and
an intake refusal."""

from __future__ import annotations

from pipeline.outputs import outcomes
from pipeline.catalog import load_catalog
from pipeline.events.models import (AttemptRecord, ChatMessage, Request, Response, RouteDecision,
                                    RoutedRequest, Usage)
from pipeline.providers.base import Completion
from pipeline.settings import Topics

catalog = load_catalog()
topics = Topics()
NANOS = 1_000_000_000


def routed(**kw) -> RoutedRequest:
    request = Request(request_id="r-1", tenant="acme", team="search", end_user="u-7",
                      messages=[ChatMessage("user", "hi")], model="gpt-4",
                      created_at_ms=1_000, metadata={"trace": "t-1"})
    fields = dict(request=request, max_tokens=256, reply_topic="acme.replies",
                  received_at_ms=1_200, routed_at_ms=1_250, tenant_partition=3,
                  route=RouteDecision("openai-gpt-4.1", "gpt-4.1", "openai", "pinned",
                                      region="us-east", task_class="chat"),
                  reply_format="json")
    fields.update(kw)
    return RoutedRequest(**fields)


COMPLETION = Completion("hello", "stop", prompt_tokens=1_000, completion_tokens=500,
                        cached_tokens=200, provider_ms=400)


def pair(outs) -> tuple:
    (response_out, usage_out) = outs
    assert isinstance(response_out.event, Response) and isinstance(usage_out.event, Usage)
    return response_out, usage_out


def test_an_answer_is_billed_at_the_catalog_price_in_exact_nanos():
    # gpt-4.1: $2 input, $0.50 cached input, $8 output per million tokens (catalog.yaml)
    expected = (800 * 2 + 200 * 0.5 + 500 * 8) * NANOS // 1_000_000
    resp_out, usage_out = pair(outcomes.answered(
        routed(), COMPLETION, catalog=catalog, at=2_000, attempts=1, provider_ms=400,
        routed_model="gpt-4.1", topics=topics))
    response, usage = resp_out.event, usage_out.event
    assert response.cost_nanos == usage.cost_nanos == expected == 5_700_000
    assert usage.baseline_cost_nanos == expected        # served the baseline model itself
    assert (resp_out.topic, resp_out.key, resp_out.fmt) == ("acme.replies", "r-1", "json")
    assert (usage_out.topic, usage_out.key, usage_out.partition) == (topics.usage, "acme", 3)
    assert response.content == "hello" and response.metadata == {"trace": "t-1"}
    assert response.tried == ["openai-gpt-4.1"] and response.latency_ms == 1_000
    assert (usage.created_at_ms, usage.queue_ms, usage.provider_ms, usage.pipeline_ms) == \
        (1_000, 200, 400, 400)
    assert (usage.team, usage.end_user, usage.requested_model, usage.served_model) == \
        ("search", "u-7", "gpt-4", "gpt-4.1")
    assert usage.price_version == catalog.price_version and usage.batch_id in ("", None)


def test_a_batch_api_result_is_billed_at_the_discounted_price_and_names_its_job():
    live = outcomes.answered(routed(), COMPLETION, catalog=catalog, at=2_000, attempts=1,
                             provider_ms=0, routed_model="gpt-4.1", topics=topics)
    batch = outcomes.answered(routed(), COMPLETION, catalog=catalog, at=2_000, attempts=1,
                              provider_ms=0, routed_model="gpt-4.1", topics=topics,
                              batch_job=("job-9", 40))
    live_usage, batch_usage = live[1].event, batch[1].event
    assert batch_usage.cost_nanos * 2 == live_usage.cost_nanos          # batch_discount 0.50
    assert batch_usage.baseline_cost_nanos == live_usage.baseline_cost_nanos   # live baseline
    assert (batch_usage.batch_id, batch_usage.batch_size) == ("job-9", 40)


def test_a_hedges_losing_call_is_billed_with_the_request_and_failover_is_counted():
    tried = [AttemptRecord("openai-gpt-4o", "rate_limited", 3),
             AttemptRecord("openai-gpt-4o-b", "hedge_lost", 1)]
    _, usage_out = pair(outcomes.answered(
        routed(tried=tried), COMPLETION, catalog=catalog, at=2_000, attempts=2, provider_ms=0,
        routed_model="gpt-4o", topics=topics, extra_cost_nanos=123))
    usage = usage_out.event
    assert usage.cost_nanos == 5_700_000 + 123
    assert usage.attempts == 6 and usage.fallbacks == 1 and usage.route_rule == "failover"


def test_a_routed_failure_answers_with_the_error_and_bills_nothing():
    tried = [AttemptRecord("openai-gpt-4.1", "timeout", 3)]
    resp_out, usage_out = pair(outcomes.routed_failed(
        routed(), "timeout", "no answer", True, at=3_000, tried=tried, provider_ms=900,
        routed_model="gpt-4.1", topics=topics, reply_topic=topics.responses))
    response, usage = resp_out.event, usage_out.event
    assert resp_out.topic == topics.responses          # the caller's topic could not be used
    assert response.status == usage.status == "error"
    assert (response.error.code, response.error.retryable, response.attempts) == ("timeout", True, 3)
    assert usage.error_code == "timeout" and not usage.cost_nanos


def test_an_intake_refusal_is_one_error_response_and_one_usage_row():
    request = routed().request
    resp_out, usage_out = pair(outcomes.refused(
        request, "unknown_model", "unknown model", at=1_500, received=1_200, topics=topics,
        usage_partition=5))
    assert resp_out.topic == topics.responses and usage_out.partition == 5
    assert resp_out.event.error.code == usage_out.event.error_code == "unknown_model"
    assert usage_out.event.queue_ms == 200 and usage_out.event.pipeline_ms == 300
    assert not usage_out.event.cost_nanos


def test_without_a_callers_created_at_the_request_dates_from_receipt():
    request = routed().request.replace(created_at_ms=None)
    assert outcomes.created_at(request, 1_200) == 1_200
    _, usage_out = pair(outcomes.refused(request, "invalid_request", "x", at=1_500,
                                         received=1_200, topics=topics))
    assert usage_out.event.created_at_ms == 1_200 and usage_out.event.queue_ms == 0


def test_first_model_is_the_one_routing_chose_before_failover():
    assert outcomes.first_model(routed(), lambda dep: None) == "gpt-4.1"
    moved = routed(tried=[AttemptRecord("openai-gpt-4o", "timeout")])
    assert outcomes.first_model(moved, {"openai-gpt-4o": "gpt-4o"}.get) == "gpt-4o"
