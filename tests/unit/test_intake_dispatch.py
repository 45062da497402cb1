"""Intake and dispatch steps without Kafka: validation, routing, retries, failover, cost."""

from __future__ import annotations

import json
import random
import uuid

import httpx
import pytest

from pipeline.batching.config import load_batching
from pipeline.catalog import load_catalog
from pipeline.providers.deployments import load_deployments
from pipeline.dispatch import Dispatcher
from pipeline.events.codec import Codec
from pipeline.events.models import Batch, DeadLetter, Response, RoutedRequest, Usage
from pipeline.intake import Intake
from pipeline.outputs import Origin
from pipeline.providers.openai import OpenAIAdapter
from pipeline.resilience.retry import RetryPolicy
from pipeline.routing.policy import Router, load_routing
from pipeline.secrets import Secret
from pipeline.settings import Topics
from pipeline.intake.bounds import RequestBounds

catalog = load_catalog()
deployments = load_deployments(catalog, env={})
policy = load_routing(catalog)
codec = Codec()
topics = Topics()
ORIGIN = Origin("llm.requests", 0, 5, b"acme", 1_000)


def intake(**kw) -> Intake:
    return Intake(codec, catalog, Router(catalog, deployments, policy, random.Random(1)), policy,
                  topics, clock=lambda: 2_000, **kw)


def body(**kw) -> bytes:
    data = {"request_id": str(uuid.uuid4()), "tenant": "acme",
            "messages": [{"role": "user", "content": "hello"}]}
    data.update(kw)
    return json.dumps(data).encode()


def test_valid_json_request_is_routed_and_remembers_json():
    (out,) = intake().handle(body(model="gpt-4"), ORIGIN)
    assert out.topic == topics.routed and isinstance(out.event, RoutedRequest)
    assert out.event.route.model == "gpt-4.1" and out.event.route.rule == "pinned"
    assert out.key == out.event.route.deployment
    assert out.event.reply_format == "json" and out.event.max_tokens == policy.default_max_tokens
    assert out.event.fallbacks and out.event.fallbacks[0] == "openai-gpt-4o"


def test_a_windowless_priority_goes_straight_to_batches_as_a_batch_of_one():
    windows = load_batching()
    assert windows.limits("interactive").max_wait_ms == 0
    step = intake(windows=windows)
    (fast,) = step.handle(body(hints={"priority": "interactive"}), ORIGIN)
    assert fast.topic == topics.batches and isinstance(fast.event, Batch)
    batch = fast.event
    assert [i.request.tenant for i in batch.items] == ["acme"] and batch.priority == "interactive"
    # keyed like the RoutedRequest it replaces: same partition in the `deployment` group
    assert fast.key == batch.deployment == batch.items[0].route.deployment
    assert batch.opened_at_ms == batch.flushed_at_ms == 2_000 and batch.fill_reason == "age"
    (slow,) = step.handle(body(hints={"priority": "batch"}), ORIGIN)     # batch has a window
    assert slow.topic == topics.routed and isinstance(slow.event, RoutedRequest)
    (old,) = intake().handle(body(hints={"priority": "interactive"}), ORIGIN)
    assert old.topic == topics.routed                      # no windows given: as before


@pytest.mark.parametrize("hints, model", [
    ({"required_quality": 0.96}, "gpt-4.1"),
    ({"budget_per_mtok": "1.5"}, "deepseek-v3.2"),
    ({"max_latency_ms": 300}, "gemini-2.5-flash"),
    ({}, policy.default_model),
])
def test_hint_rules(hints, model):
    (out,) = intake().handle(body(hints=hints), ORIGIN)
    assert out.event.route.model == model


@pytest.mark.parametrize("change, code, fragment", [
    ({"model": "gpt-17"}, "unknown_model", "unknown model 'gpt-17'"),
    ({"params": {"max_tokens": -5}}, "invalid_request", "max_tokens must be at least 1"),
    ({"messages": []}, "invalid_request", "at least one message"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "invalid_request", "role 'wizard'"),
    ({"hints": {"priority": "urgent"}}, "invalid_request", "priority 'urgent'"),
    ({"messages": [{"role": "user", "content": "word " * 900_000}]}, "invalid_request",
     "bytes; at most 900,000 are accepted"),
])
def test_refused_requests_get_one_error_response_and_usage(change, code, fragment):
    outs = intake().handle(body(**change), ORIGIN)
    response = next(o.event for o in outs if isinstance(o.event, Response))
    usage = next(o.event for o in outs if isinstance(o.event, Usage))
    assert len(outs) == 2 and response.status == "error" and response.error.code == code
    assert fragment in response.error.message and usage.error_code == code
    assert usage.cost_nanos == 0


def test_a_prompt_over_the_gateway_token_limit_is_context_length_exceeded():
    big = intake(bounds=RequestBounds(max_request_bytes=10_000_000))
    outs = big.handle(body(messages=[{"role": "user", "content": "word " * 900_000}]), ORIGIN)
    response = next(o.event for o in outs if isinstance(o.event, Response))
    assert response.error.code == "context_length_exceeded" and "exceeds" in response.error.message


def test_garbage_becomes_a_dead_letter_with_the_raw_bytes():
    (out,) = intake().handle(b"\x13\x37 not a request", ORIGIN)
    dl = out.event
    assert isinstance(dl, DeadLetter) and out.topic == topics.dead_letter
    assert dl.value == b"\x13\x37 not a request" and dl.source_offset == 5
    assert "magic byte" in dl.reason


def routed_for(model: str = "gpt-4") -> RoutedRequest:
    (out,) = intake().handle(body(model=model), ORIGIN)
    return out.event


def adapter_with(handler, dep_id="openai-gpt-4.1"):
    return OpenAIAdapter(deployments.by_id[dep_id], Secret("sk-test-0123456789abcdef"),
                         deployments.calls, transport=httpx.MockTransport(handler))


def ok_body(prompt=100, completion=50, cached=0):
    return {"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "prompt_tokens_details": {"cached_tokens": cached}}}


async def no_sleep(_):
    return None


def dispatcher(adapters) -> Dispatcher:
    return Dispatcher(catalog, deployments, adapters, topics, RetryPolicy(1, 60, 0.25),
                      rng=random.Random(1), sleep=no_sleep, clock=lambda: 3_000)


async def test_success_prices_exactly_and_answers_in_the_request_format():
    def handler(request: httpx.Request):
        sent = json.loads(request.content)
        assert sent["model"] == "gpt-4.1" and sent["max_tokens"] == policy.default_max_tokens
        assert request.headers["authorization"] == "Bearer sk-test-0123456789abcdef"
        return httpx.Response(200, json=ok_body(1000, 500, 200))

    routed = routed_for()
    outs = await dispatcher({"openai-gpt-4.1": adapter_with(handler)}).handle(routed)
    response, usage = outs[0].event, outs[1].event
    assert outs[0].fmt == "json" and outs[0].topic == topics.responses
    assert response.status == "ok" and response.attempts == 1
    assert usage.cost_nanos == catalog.cost_nanos("gpt-4.1", 1000, 500, 200) == response.cost_nanos
    assert usage.price_version == catalog.price_version and usage.served_model == "gpt-4.1"


async def test_retryable_errors_are_retried_then_succeed():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) < 3:
            return httpx.Response(429, headers={"retry-after": "2"}, json={"error": {"message": "slow down"}})
        return httpx.Response(200, json=ok_body())

    outs = await dispatcher({"openai-gpt-4.1": adapter_with(handler)}).handle(routed_for())
    assert outs[0].event.status == "ok" and outs[0].event.attempts == 3 and len(calls) == 3


async def test_exhausted_deployment_fails_over_to_the_next_in_chain():
    def handler(request):
        return httpx.Response(503, json={"error": {"message": "overloaded"}})

    (out,) = await dispatcher({"openai-gpt-4.1": adapter_with(handler)}).handle(routed_for())
    assert out.topic == topics.routed and out.key == "openai-gpt-4o"
    assert out.event.route.rule == "failover" and out.event.tried[0].error_code == "overloaded"
    assert out.event.tried[0].attempts == deployments.calls.max_attempts


async def test_bad_request_is_terminal_and_names_what_was_tried():
    def handler(request):
        return httpx.Response(400, json={"error": {"message": "bad stop sequence"}})

    outs = await dispatcher({"openai-gpt-4.1": adapter_with(handler)}).handle(routed_for())
    response = outs[0].event
    assert response.status == "error" and response.error.code == "invalid_request"
    assert "openai-gpt-4.1" in response.error.message and response.attempts == 1


async def test_malformed_body_and_timeouts_map_to_codes():
    def malformed(request):
        return httpx.Response(200, content=b"{not json")

    def hang(request):
        raise httpx.ReadTimeout("timed out", request=request)

    routed = routed_for().replace(fallbacks=[])
    outs = await dispatcher({"openai-gpt-4.1": adapter_with(malformed)}).handle(routed)
    assert outs[0].event.error.code == "provider_error"
    outs = await dispatcher({"openai-gpt-4.1": adapter_with(hang)}).handle(routed)
    assert outs[0].event.error.code == "timeout"


class FixedClassifier:
    def __init__(self, task_class: str, score: float):
        self.result = type("C", (), {"task_class": task_class, "score": score, "reason": "fixed"})()

    def classify(self, messages):
        return self.result


@pytest.mark.parametrize("task_class, hints, model, rule", [
    ("simple", {}, "deepseek-v3.2", "class"),
    ("medium", {}, "gemini-2.5-flash", "class"),
    ("complex", {}, "gpt-4.1", "class"),
    ("simple", {"required_quality": 0.97}, "gpt-4.1", "quality"),     # earlier rules win
    ("complex", {"budget_per_mtok": "1"}, "deepseek-v3.2", "budget"),
])
def test_task_class_rule_comes_after_the_hint_rules(task_class, hints, model, rule):
    router = Router(catalog, deployments, policy, random.Random(1), FixedClassifier(task_class, 0.5))
    step = Intake(codec, catalog, router, policy, topics, clock=lambda: 2_000)
    (out,) = step.handle(body(hints=hints), ORIGIN)
    decision = out.event.route
    assert (decision.model, decision.rule) == (model, rule)
    assert decision.task_class == task_class and decision.complexity == 0.5
