"""The semantic cache with a provider's embedding model (pipeline/cache/remote.py) against
the provider simulator on loopback, through intake's prepare + handle: each paid embedding
is billed to the request it served (a hit's whole cost, added to a miss's), a text already
embedded is not paid again, a restart rebuilds the index from the stored vectors without
calls, and a failed call leaves the request to the exact cache without holding it up."""

from __future__ import annotations

import dataclasses
import random
import uuid

import pytest

from pipeline.cache.remote import ProviderEmbedder
from pipeline.cache.semantic import SemanticIndex
from pipeline.cache.store import ResponseCache, fill_for
from pipeline.catalog import load_catalog
from pipeline.embedded.ports import free_port
from pipeline.events.codec import Codec
from pipeline.events.models import (Batch, ChatMessage, Request, Response, RoutedRequest,
                                    TenantPolicy, Usage)
from pipeline.intake import Intake
from pipeline.intake.bounds import load_bounds
from pipeline.intake.validation import tenant_partition
from pipeline.outputs import Origin
from pipeline.providers import make_adapter
from pipeline.providers.deployments import load_deployments
from pipeline.routing.policy import Router, load_routing
from pipeline.secrets import Secret
from pipeline.settings import Topics
from tests.unit.test_adapters_native import KEY, LIMITS
from tests.unit.test_adapters_openai import EMBEDDER
from tests.unit.test_cache_store import NOW, answer_for
from tests.unit.test_simulator import fast
from pipeline.simulator import start_simulator

catalog = load_catalog()
MODEL = EMBEDDER.model
TENANT = "acme"
POLICY = TenantPolicy(TENANT, cache_kinds=["exact", "semantic"], cache_threshold=0.9)
topics = Topics()


def intake_over(rows: dict, embedder: ProviderEmbedder) -> Intake:
    cache = ResponseCache(rows, catalog, similar=SemanticIndex(embedder))
    deployments = load_deployments(catalog, env={})
    routing = load_routing(catalog)
    return Intake(Codec(), catalog, Router(catalog, deployments, routing, random.Random(1)),
                  routing, topics, clock=lambda: NOW, policies={TENANT: POLICY}.get,
                  bounds=load_bounds(), partitions=6, cache=cache)


async def send(intake: Intake, text: str, **kw) -> tuple[list, int]:
    request = Request(str(uuid.uuid4()), TENANT, [ChatMessage("user", text)], created_at_ms=NOW,
                      model="gpt-4o-mini", **kw)
    value = Codec().encode(request, topics.requests)
    prepared = await intake.prepare(value)
    origin = Origin(topics.requests, tenant_partition(TENANT, 6), 1, TENANT.encode(), NOW)
    return intake.handle(value, origin, prepared), prepared.lookup_cost


def routed_of(outs: list) -> RoutedRequest:
    (out,) = outs
    return out.event.items[0] if isinstance(out.event, Batch) else out.event


@pytest.fixture
async def simulator():
    async with await start_simulator(fast()) as sim:
        yield sim


def embedder_at(base_url: str) -> ProviderEmbedder:
    deployment = dataclasses.replace(EMBEDDER, base_url=base_url)
    return ProviderEmbedder(MODEL, deployment, make_adapter(deployment, Secret(KEY), LIMITS),
                            catalog)


async def test_each_paid_embedding_is_billed_to_the_request_it_served(simulator):
    rows: dict = {}
    embedder = embedder_at(simulator.base_url)
    intake = intake_over(rows, embedder)

    outs, paid = await send(intake, "Where is my parcel?")           # a miss, embedded once
    routed = routed_of(outs)
    await intake.cache.index_ready()              # built off the loop on the first lookup
    assert paid > 0 and embedder.calls == 1
    assert routed.cache_cost_nanos == paid and routed.cache_scope
    tokens = paid // catalog.cost_nanos(MODEL, 1, 0)
    assert catalog.cost_nanos(MODEL, tokens, 0) == paid              # whole tokens at its price
    intake.cache.apply(fill_for(routed, answer_for(routed.request), NOW), 10)
    assert rows and all("vector" in row for row in rows.values())

    outs, paid_again = await send(intake, "WHERE IS MY PARCEL?")     # reworded: semantic hit
    response, usage = (o.event for o in outs)
    assert isinstance(response, Response) and response.cache == "semantic"
    assert isinstance(usage, Usage) and usage.cache_kind == "semantic"
    assert paid_again > 0 and embedder.calls == 2
    assert response.cost_nanos == usage.cost_nanos == usage.cache_cost_nanos == paid_again
    assert usage.cache_saved_nanos > paid_again

    outs, paid_third = await send(intake, "WHERE IS MY PARCEL?")     # embedded before: free
    assert paid_third == 0 and embedder.calls == 2
    assert outs[1].event.cost_nanos == 0

    # a restart: a new worker over the same rows, its memo empty — the stored vector is
    # indexed without a call; only the new question is paid for
    fresh = embedder_at(simulator.base_url)
    restarted = intake_over(rows, fresh)
    await restarted.cache.index_ready()
    outs, paid = await send(restarted, "where is my parcel?")
    assert outs[0].event.cache == "semantic" and fresh.calls == 1 and paid > 0
    await embedder.adapter.aclose()
    await fresh.adapter.aclose()


async def test_a_failed_embedding_leaves_the_exact_cache_and_holds_nothing_up():
    rows: dict = {}
    embedder = embedder_at(f"http://127.0.0.1:{free_port()}/v1")      # nothing listens
    intake = intake_over(rows, embedder)
    outs, paid = await send(intake, "Where is my parcel?")
    routed = routed_of(outs)
    assert paid == 0 and embedder.failures == 1 and routed.cache_cost_nanos == 0
    intake.cache.apply(fill_for(routed, answer_for(routed.request), NOW), 10)
    (row,) = rows.values()
    assert row["scope"] == "" and "vector" not in row                  # exact lookups only
    outs, _ = await send(intake, "Where is my parcel?")
    assert outs[0].event.cache == "exact" and outs[1].event.cost_nanos == 0
    outs, _ = await send(intake, "WHERE IS MY PARCEL?")
    assert not isinstance(outs[0].event, Response)                     # routed: a miss
    await embedder.adapter.aclose()


async def test_a_request_refused_after_its_embedding_was_paid_is_billed_for_it(simulator):
    """The reply topic is judged in handle, after prepare paid for the lookup's embedding:
    the refusal's one Usage row carries that cost, so the ledger and the budget see it."""
    embedder = embedder_at(simulator.base_url)
    intake = intake_over({}, embedder)
    outs, paid = await send(intake, "Where is my parcel?", reply_topic="someone.elses")
    response, usage = (o.event for o in outs)
    assert paid > 0 and embedder.calls == 1
    assert response.status == usage.status == "error" and "reply_topic" in response.error.message
    assert response.cost_nanos == usage.cost_nanos == usage.cache_cost_nanos == paid
    await embedder.adapter.aclose()


async def test_a_duplicate_copy_pays_for_no_embedding(simulator):
    """A copy of an admitted request id at another offset is answered as a duplicate and
    billed nothing, so nothing is paid for it either; a redelivery (the same record again)
    skips its lookup, so it pays for no embedding. (The memo by text would hide both when
    the text is the one just paid for: here the copy's text differs, and the memo is lost
    as in a restart before the redelivery.)"""
    embedder = embedder_at(simulator.base_url)
    intake = intake_over({}, embedder)
    request = Request(str(uuid.uuid4()), TENANT, [ChatMessage("user", "Where is my parcel?")],
                      created_at_ms=NOW, model="gpt-4o-mini")
    value = Codec().encode(request, topics.requests)
    at = lambda offset: Origin(topics.requests, tenant_partition(TENANT, 6), offset,  # noqa: E731
                               TENANT.encode(), NOW)
    prepared = await intake.prepare(value, at(1))
    routed = routed_of(intake.handle(value, at(1), prepared))
    assert prepared.lookup_cost > 0 and embedder.calls == 1 and routed.cache_cost_nanos > 0

    other = Codec().encode(request.replace(messages=[ChatMessage("user", "Who are you?")]),
                           topics.requests)
    copy = await intake.prepare(other, at(2))
    (out,) = intake.handle(other, at(2), copy)
    assert copy.lookup_cost == 0 and embedder.calls == 1
    assert out.event.status == "error" and "already accepted" in out.event.error.message

    embedder.memo.clear()
    again = await intake.prepare(value, at(1))
    assert again.lookup_cost == 0 and embedder.calls == 1
    assert routed_of(intake.handle(value, at(1), again)).cache_cost_nanos == 0
    await embedder.adapter.aclose()
