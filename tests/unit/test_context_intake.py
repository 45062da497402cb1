"""Intake's context step (pipeline/intake/context.py, summaries.py): tenants that did not opt
in are sent exactly what they sent; an opted-in request is compressed after the cache key
is taken and before reservation and routing; a bad override is refused with its reason;
a summary is a real call to the simulator, billed as its own row linked to the request,
made once per conversation prefix; without it the history is kept whole."""

from __future__ import annotations

import dataclasses
import random
import uuid

import pytest

from pipeline.cache.store import ResponseCache, key_of
from pipeline.catalog import load_catalog
from pipeline.context.workload import DEFAULT_SEED, chat_case, facts_present, rag_case
from pipeline.embedded.ports import free_port
from pipeline.events.codec import Codec
from pipeline.events.models import (Batch, ChatMessage, Request, Response, RoutedRequest,
                                    TenantPolicy, Usage)
from pipeline.intake import Intake
from pipeline.intake.bounds import load_bounds
from pipeline.intake.context import Prepared
from pipeline.intake.summaries import SUMMARY_RULE, Summariser, summary_id
from pipeline.intake.validation import tenant_partition
from pipeline.outputs import Origin
from pipeline.providers import make_adapter
from pipeline.providers.deployments import load_deployments
from pipeline.routing.policy import Router, load_routing
from pipeline.routing.tokens import estimate_messages_tokens
from pipeline.secrets import Secret
from pipeline.settings import Topics
from pipeline.simulator import start_simulator
from tests.unit.test_adapters_native import KEY, LIMITS
from tests.unit.test_simulator import fast

catalog = load_catalog()
deployments = load_deployments(catalog, env={})
topics = Topics()
NOW = 1_763_900_000_000
POLICIES = {
    "plain": TenantPolicy("plain"),
    "rag": TenantPolicy("rag", context="normalise,top_k=4"),
    "chat": TenantPolicy("chat", context="normalise,window=4,summarise"),
    "cached": TenantPolicy("cached", context="normalise,top_k=4", cache_kinds=["exact"]),
}


def intake(summariser: Summariser | None = None, cache: ResponseCache | None = None) -> Intake:
    routing = load_routing(catalog)
    return Intake(Codec(), catalog, Router(catalog, deployments, routing, random.Random(1)),
                  routing, topics, clock=lambda: NOW, policies=POLICIES.get,
                  bounds=load_bounds(), partitions=6, cache=cache, summariser=summariser)


def request(tenant: str, messages: list[ChatMessage], **metadata: str) -> Request:
    return Request(str(uuid.uuid4()), tenant, messages, created_at_ms=NOW, model="gpt-4.1",
                   metadata=metadata)


async def send(step: Intake, r: Request) -> list:
    value = Codec().encode(r, topics.requests)
    prepared = await step.prepare(value)
    origin = Origin(topics.requests, tenant_partition(r.tenant, 6), 1, r.tenant.encode(), NOW)
    return step.handle(value, origin, prepared)


def routed_of(outs: list) -> RoutedRequest:
    out = next(o for o in outs if not isinstance(o.event, Usage))
    return out.event.items[0] if isinstance(out.event, Batch) else out.event


RAG = rag_case(random.Random(DEFAULT_SEED), 0, "en")
CHAT_ZH = chat_case(random.Random(DEFAULT_SEED), 1, "zh")


async def test_a_tenant_that_did_not_opt_in_is_sent_exactly_what_it_sent():
    for case in (RAG, CHAT_ZH):
        r = request("plain", case.messages)
        routed = routed_of(await send(intake(), r))
        assert routed.request.messages == r.messages
        assert routed.request == dataclasses.replace(r)                    # every field
        assert (routed.context_tokens_before, routed.context_tokens_after) == (0, 0)
        assert routed.context_note == ""


async def test_an_opted_in_request_is_compressed_before_reservation_and_routing():
    r = request("rag", RAG.messages)
    routed = routed_of(await send(intake(), r))
    sent = routed.request.messages
    assert len(sent) < len(r.messages) and all(facts_present(sent, RAG.facts))
    assert routed.context_tokens_before == estimate_messages_tokens(r.messages)
    assert routed.context_tokens_after == estimate_messages_tokens(sent)
    assert routed.context_tokens_after < 0.8 * routed.context_tokens_before
    assert routed.estimated_prompt_tokens < routed.context_tokens_before   # what is reserved
    assert routed.context_note.startswith("context normalise,top_k=4:")
    # the request's own override: off sends it whole, another setting is applied
    whole = routed_of(await send(intake(), request("rag", RAG.messages, **{
        "x-llmpipe-context": "off"})))
    assert whole.request.messages == r.messages and whole.context_note == ""
    tighter = routed_of(await send(intake(), request("plain", RAG.messages, **{
        "x-llmpipe-context": "top_k=2"})))
    assert len(tighter.request.messages) < len(sent)


async def test_a_bad_override_is_refused_with_its_reason():
    outs = await send(intake(), request("rag", RAG.messages, **{"x-llmpipe-context": "windw=8"}))
    response = next(o.event for o in outs if isinstance(o.event, Response))
    assert response.status == "error" and response.error.code == "invalid_request"
    assert "windw=8" in response.error.message and "x-llmpipe-context" in response.error.message


async def test_the_cache_key_is_the_request_as_received():
    rows: dict = {}
    step = intake(cache=ResponseCache(rows, catalog))
    r = request("cached", RAG.messages)
    routed = routed_of(await send(step, r))
    assert routed.cache_key == key_of(r) and routed.request.messages != r.messages


@pytest.fixture
async def simulator():
    async with await start_simulator(fast()) as sim:
        yield sim


def summariser_at(base_url: str) -> Summariser:
    adapters: dict = {}

    def adapter_for(deployment):
        if deployment.id not in adapters:
            adapters[deployment.id] = make_adapter(
                dataclasses.replace(deployment, base_url=base_url), Secret(KEY), LIMITS)
        return adapters[deployment.id]
    return Summariser(catalog, deployments, adapter_for, clock=lambda: NOW)


async def test_a_summary_is_its_own_billed_row_made_once_per_conversation(simulator):
    summariser = summariser_at(simulator.base_url)
    step = intake(summariser)
    r = request("chat", CHAT_ZH.messages)
    outs = await send(step, r)
    routed = routed_of(outs)
    (row,) = [o.event for o in outs if isinstance(o.event, Usage)]
    assert row.request_id == summary_id(r.request_id) and row.for_request_id == r.request_id
    assert Codec().decode(Codec().encode(row, topics.usage), Usage) == row   # a valid record
    assert row.route_rule == SUMMARY_RULE and row.cost_nanos > 0 and row.tenant == "chat"
    assert row.served_model == summariser.model_for(1000, POLICIES["chat"])
    assert summariser.calls == 1
    sent = routed.request.messages
    assert any(m.content.startswith("Summary of the earlier conversation: ") for m in sent)
    assert sent[-1] == r.messages[-1] and len(sent) < len(r.messages)
    assert "message(s) spliced in (+" in routed.context_note
    assert f"-> ~{routed.context_tokens_after} tokens" in routed.context_note
    # the same conversation again: the summary comes from the memo, no call, no row
    again = await send(step, request("chat", CHAT_ZH.messages))
    assert summariser.calls == 1 and not [o for o in again if isinstance(o.event, Usage)]
    assert ", made before" in routed_of(again).context_note


async def test_without_a_summary_the_history_is_kept_whole():
    summariser = summariser_at(f"http://127.0.0.1:{free_port()}/v1")     # nothing listens
    r = request("chat", CHAT_ZH.messages)
    routed = routed_of(await send(intake(summariser), r))
    assert summariser.failures == 1
    assert len([m for m in routed.request.messages if m.role != "system"]) == \
        len([m for m in r.messages if m.role != "system"]) - sum(
            1 for i, m in enumerate(r.messages[1:], 1)
            if m.role in ("user", "assistant") and m == r.messages[i - 1])  # double sends
    assert "history kept whole" in routed.context_note
    assert all(facts_present(routed.request.messages, CHAT_ZH.facts))


async def test_a_failing_summary_model_is_passed_over_once_its_breaker_opens(simulator):
    """The cheapest model's deployment refuses connections: each summary fails over to the
    next cheapest and is made there; once its breaker opens, summaries stop calling it."""
    down = f"http://127.0.0.1:{free_port()}/v1"                        # nothing listens
    cheapest, second = Summariser(catalog, deployments, lambda d: None).models_for(100, None)[:2]
    called: list[str] = []
    adapters: dict = {}

    def adapter_for(deployment):
        called.append(deployment.model)
        if deployment.id not in adapters:
            url = down if deployment.model == cheapest else simulator.base_url
            adapters[deployment.id] = make_adapter(
                dataclasses.replace(deployment, base_url=url), Secret(KEY), LIMITS)
        return adapters[deployment.id]
    summariser = Summariser(catalog, deployments, adapter_for, clock=lambda: NOW)
    threshold = deployments.for_model(cheapest)[0].guard.breaker.failure_threshold
    r = request("chat", CHAT_ZH.messages)
    for i in range(threshold + 2):
        made = await summariser.summary(r, CHAT_ZH.messages[:6], f"conversation {i}", None)
        assert made is not None and made.usage.served_model == second
    assert called == [cheapest, second] * threshold + [second, second]
    assert summariser.guards.get(deployments.for_model(cheapest)[0].id).breaker.state.value == "open"
    assert summariser.failures == 0


def test_the_cheapest_capable_model_summarises_within_the_tenants_models():
    summariser = Summariser(catalog, deployments, lambda d: None)
    cheapest = summariser.model_for(1000, None)
    prices = {m.name: m.input_per_mtok + m.output_per_mtok for m in catalog.models.values()
              if m.kind == "chat" and deployments.for_model(m.name)}
    assert prices[cheapest] == min(prices.values())
    only = TenantPolicy("t", allowed_models=["gpt-4.1", "gpt-4o-mini"])
    assert summariser.model_for(1000, only) == "gpt-4o-mini"
    assert summariser.model_for(10**9, None) is None                       # nothing fits
    assert Prepared().summary is None
