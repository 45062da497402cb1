"""The response cache (pipeline/cache/store.py) and intake's use of it: what changes
the key, who may be answered or kept, a hit's Response and Usage, fills and evictions, and
that no tenant ever reaches another's entry."""

from __future__ import annotations

import asyncio
import random
import uuid

import faust
import pytest

from pipeline.agents.cache import CacheTable
from pipeline.cache.store import (CLEAR, PUT, CacheConfig, ResponseCache, fill_for, key_of,
                                  scope_of)
from pipeline.catalog import load_catalog
from pipeline.events.models import (CacheFill, ChatMessage, GenerationParams, Request,
                                    ResponseFormat, Response, RoutedRequest, RouteDecision,
                                    RoutingHints, TenantPolicy, Tool, Usage)
from pipeline.intake import Intake
from pipeline.intake.bounds import load_bounds
from pipeline.outputs import Origin
from pipeline.providers.deployments import load_deployments
from pipeline.routing.policy import Router, load_routing
from pipeline.events.codec import Codec
from pipeline.intake.validation import tenant_partition
from pipeline.runtime import build_runtime
from pipeline.settings import Settings, Topics

catalog = load_catalog()
NOW = 1_763_900_000_000
ON = TenantPolicy("acme", cache_kinds=["exact"], cache_ttl_s=60)


def ask(text: str = "where is my parcel?", tenant: str = "acme", **kw) -> Request:
    return Request(str(uuid.uuid4()), tenant, [ChatMessage("user", text)], created_at_ms=NOW,
                   **kw)


def answer_for(r: Request, content: str = "It is on its way.") -> Response:
    return Response(r.request_id, r.tenant, "ok", NOW, content=content, finish_reason="stop",
                    model="gpt-4o-mini", deployment="openai-gpt-4o-mini", prompt_tokens=12,
                    completion_tokens=30, cost_nanos=20_000, attempts=1,
                    tried=["openai-gpt-4o-mini"], metadata={"trace": "first caller"})


def routed_for(r: Request, key: str, ttl_s: int = 60) -> RoutedRequest:
    return RoutedRequest(request=r, route=RouteDecision("openai-gpt-4o-mini", "gpt-4o-mini",
                                                        "openai", "pinned"),
                         max_tokens=64, reply_topic="llm.responses", received_at_ms=NOW,
                         routed_at_ms=NOW, tenant_partition=2, cache_key=key, cache_ttl_s=ttl_s)


# --- the key ---------------------------------------------------------------------------------

def test_what_changes_the_answer_changes_the_key_and_nothing_else_does():
    base = ask()
    same = base.replace(request_id=str(uuid.uuid4()), created_at_ms=NOW + 5, team="t",
                        end_user="u", metadata={"a": "b"}, reply_topic="x", stream=True,
                        hints=RoutingHints(priority="batch"))
    assert key_of(same) == key_of(base)
    changed = [
        base.replace(tenant="globex"),
        base.replace(model="gpt-4o"),
        base.replace(messages=[ChatMessage("user", "where is my parcel!")]),
        base.replace(messages=[ChatMessage("system", "be brief"), *base.messages]),
        base.replace(params=GenerationParams(temperature=0.2)),
        base.replace(params=GenerationParams(max_tokens=10)),
        base.replace(params=GenerationParams(seed=3)),
        base.replace(params=GenerationParams(n=2)),
        base.replace(params=GenerationParams(top_p=0.5)),
        base.replace(params=GenerationParams(stop=["."])),
        base.replace(tools=[Tool("track", None, '{"type": "object"}')]),
        base.replace(response_format=ResponseFormat("json_object")),
        base.replace(hints=RoutingHints(required_quality=0.95)),
    ]
    keys = {key_of(r) for r in changed}
    assert len(keys) == len(changed) and key_of(base) not in keys


# --- who may be answered or kept ----------------------------------------------------------------

@pytest.mark.parametrize("policy, request_kw, expect", [
    (None, {}, (False, False)),
    (TenantPolicy("acme"), {}, (False, False)),                       # opt-in: no kinds
    (TenantPolicy("acme", cache_enabled=False, cache_kinds=["exact"]), {}, (False, False)),
    (ON, {}, (True, True)),
    (ON, {"cache_control": "no-cache"}, (False, True)),
    (ON, {"cache_control": "no-store"}, (True, False)),
    (ON, {"cache_control": "No-Cache, no-store"}, (False, False)),
    (ON, {"params": GenerationParams(temperature=1.5)}, (False, False)),
    (ON, {"params": GenerationParams(temperature=1.0)}, (True, True)),
])
def test_policy_request_directives_and_temperature_decide(policy, request_kw, expect):
    assert ResponseCache({}, catalog).decide(ask(**request_kw), policy) == expect


# --- fills, hits, evictions --------------------------------------------------------------------

def test_a_hit_is_the_cached_answer_for_this_caller_billed_zero():
    cache = ResponseCache({}, catalog)
    first = ask()
    key = key_of(first)
    fill = fill_for(routed_for(first, key), answer_for(first), NOW)
    assert fill is not None and fill.op == PUT and fill.answer.metadata == {}
    cache.apply(fill, 10)
    second = ask(metadata={"trace": "second caller"}, team="ops")
    cached, kind, similarity = cache.lookup(second, key_of(second), NOW + 1000)
    assert (kind, similarity) == ("exact", None)
    response, usage = cache.answer(second, cached, NOW + 1000, NOW + 1002)
    assert response.request_id == second.request_id and response.content == "It is on its way."
    assert response.metadata == {"trace": "second caller"} and response.cache == "exact"
    assert (response.cost_nanos, response.attempts, response.tried) == (0, 0, [])
    assert (usage.cache, usage.cache_kind, usage.cost_nanos, usage.team) == ("hit", "exact", 0, "ops")
    assert usage.cache_saved_nanos == catalog.cost_nanos("gpt-4o-mini", 12, 30) > 0
    assert usage.baseline_cost_nanos == catalog.cost_nanos(catalog.baseline_model, 12, 30)
    assert usage.completion_tokens == 30 and usage.route_rule == "cache"


def test_a_kept_answer_drops_what_belonged_to_its_first_request():
    first = ask()
    kept = answer_for(first).replace(context="context normalise: ~90 -> ~80 tokens")
    fill = fill_for(routed_for(first, key_of(first)), kept, NOW)
    assert fill.answer.metadata == {} and fill.answer.context == "" and fill.answer.cache == ""


def test_entries_expire_and_are_never_kept_when_not_asked_or_failed():
    cache = ResponseCache({}, catalog)
    r = ask()
    cache.apply(fill_for(routed_for(r, key_of(r), ttl_s=1), answer_for(r), NOW), 10)
    assert cache.lookup(r, key_of(r), NOW + 999) is not None
    assert cache.lookup(r, key_of(r), NOW + 1000) is None and cache.entries("acme") == 0
    assert fill_for(routed_for(r, ""), answer_for(r), NOW) is None          # no-store / off
    failed = answer_for(r).replace(status="error", content=None)
    assert fill_for(routed_for(r, key_of(r)), failed, NOW) is None
    huge = answer_for(r, "x" * 300)
    assert fill_for(routed_for(r, key_of(r)), huge, NOW, CacheConfig(max_answer_bytes=200)) is None


def test_a_tenant_keeps_at_most_its_cap_oldest_first_and_a_clear_takes_only_its_own():
    rows: dict = {}
    cache = ResponseCache(rows, catalog)
    for i in range(5):
        for tenant in ("acme", "globex"):
            r = ask(f"question {i}", tenant=tenant)
            cache.apply(fill_for(routed_for(r, key_of(r)), answer_for(r), NOW + i), max_entries=3)
    assert cache.entries("acme") == cache.entries("globex") == 3
    assert cache.lookup(ask("question 0"), key_of(ask("question 0")), NOW) is None
    assert cache.lookup(ask("question 4"), key_of(ask("question 4")), NOW) is not None
    cache.apply(CacheFill("acme", CLEAR, NOW), 3)
    assert cache.entries("acme") == 0 and cache.entries("globex") == 3
    fresh = ResponseCache(rows, catalog)                   # counted again after a rebalance
    assert fresh.entries("globex") == 3


# --- through intake ------------------------------------------------------------------------------

def test_intake_answers_a_repeat_from_the_cache_and_keeps_tenants_apart():
    topics = Topics()
    rows: dict = {}
    policies = {"acme": ON, "globex": TenantPolicy("globex", cache_kinds=["exact"])}
    cache = ResponseCache(rows, catalog)
    deployments = load_deployments(catalog, env={})
    policy = load_routing(catalog)
    intake = Intake(Codec(), catalog, Router(catalog, deployments, policy, random.Random(1)),
                    policy, topics, clock=lambda: NOW, policies=policies.get,
                    bounds=load_bounds(), partitions=6, cache=cache)

    def origin(tenant: str) -> Origin:
        return Origin(topics.requests, tenant_partition(tenant, 6), 1, tenant.encode(), NOW)

    def send(r: Request):
        return intake.handle(Codec().encode(r, topics.requests), origin(r.tenant))

    first = ask()
    (routed_out,) = send(first)
    routed = routed_out.event.items[0] if hasattr(routed_out.event, "items") else routed_out.event
    assert routed.cache_key == key_of(first) and routed.cache_ttl_s == 60
    # dispatch answers and publishes the fill; the cache-fill agent applies it
    cache.apply(fill_for(routed, answer_for(first), NOW), 10)

    repeat = ask()
    response_out, usage_out = send(repeat)
    assert isinstance(response_out.event, Response) and response_out.event.cache == "exact"
    assert isinstance(usage_out.event, Usage) and usage_out.event.cache == "hit"
    assert usage_out.partition == tenant_partition("acme", 6)
    again = send(repeat.replace(request_id=str(uuid.uuid4()), cache_control="no-cache"))
    assert len(again) == 1 and not isinstance(again[0].event, Response)       # routed again
    other = ask(tenant="globex")                 # same words, another tenant: a miss
    (globex_routed,) = send(other)
    assert not isinstance(globex_routed.event, Response)


# --- semantic lookups ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def similar():
    from pipeline.cache.embedder import load_embedder
    from pipeline.cache.semantic import SemanticIndex
    return SemanticIndex(load_embedder())


def test_a_rephrased_question_is_a_semantic_hit_only_in_its_own_scope_and_tenant(similar):
    similar.clear()
    both = TenantPolicy("acme", cache_kinds=["exact", "semantic"], cache_threshold=0.95)
    cache = ResponseCache({}, catalog, similar=similar)
    first = ask("Where is my parcel?")
    routed = routed_for(first, key_of(first)).replace(cache_scope=scope_of(first))
    cache.apply(fill_for(routed, answer_for(first), NOW), 10)
    again = ask("where is my parcel")
    cached, kind, similarity = cache.lookup(again, key_of(again), NOW + 1, both)
    assert kind == "semantic" and similarity >= 0.95 and cached.content == "It is on its way."
    response, usage = cache.answer(again, cached, NOW + 1, NOW + 2, kind, similarity)
    assert (response.cache, response.cache_similarity) == ("semantic", similarity)
    assert (usage.cache, usage.cache_kind) == ("hit", "semantic")
    misses = [
        ask("where is my parcel", tenant="globex"),                            # other tenant
        ask("where is my parcel", params=GenerationParams(temperature=0.2)),   # other scope
        Request(str(uuid.uuid4()), "acme", [ChatMessage("system", "be brief"),
                                            ChatMessage("user", "where is my parcel")]),
        ask("where is not my parcel"),                                         # a negation
    ]
    for request in misses:
        policy = both if request.tenant == "acme" else both.replace(tenant="globex")
        assert cache.lookup(request, key_of(request), NOW + 1, policy) is None, request
    exact_only = both.replace(cache_kinds=["exact"])
    assert cache.lookup(again, key_of(again), NOW + 1, exact_only) is None
    cache.apply(CacheFill("acme", CLEAR, NOW), 10)
    assert cache.lookup(again, key_of(again), NOW + 1, both) is None


def test_the_semantic_index_is_rebuilt_from_the_rows_after_a_rebalance(similar):
    similar.clear()
    rows: dict = {}
    both = TenantPolicy("acme", cache_kinds=["exact", "semantic"])
    writer = ResponseCache(rows, catalog)                  # another worker kept the rows
    first = ask("How do I reset my password?")
    routed = routed_for(first, key_of(first)).replace(cache_scope=scope_of(first))
    writer.apply(fill_for(routed, answer_for(first), NOW), 10)
    reader = ResponseCache(rows, catalog, similar=similar)
    again = ask("how do I reset my password")
    assert reader.lookup(again, key_of(again), NOW + 1, both)[1] == "semantic"


async def test_after_a_rebalance_the_index_is_built_off_the_loop_and_misses_until_then(similar):
    """With an event loop running (a worker), the first semantic lookup starts the build in
    a thread and misses; fills and drops made meanwhile reach the new index; a rebalance
    during a build abandons it."""
    rows: dict = {}
    both = TenantPolicy("acme", cache_kinds=["exact", "semantic"])
    writer = ResponseCache(rows, catalog)
    for text in ("How do I reset my password?", "What is your refund policy?"):
        first = ask(text)
        writer.apply(fill_for(routed_for(first, key_of(first)).replace(
            cache_scope=scope_of(first)), answer_for(first), NOW), 10)
    from pipeline.cache.semantic import SemanticIndex
    reader = ResponseCache(rows, catalog, similar=SemanticIndex(similar.embedder))
    again = ask("how do I reset my password")
    assert reader.lookup(again, key_of(again), NOW + 1, both) is None       # building
    late = ask("Can I change my delivery address?")                        # filled meanwhile
    reader.apply(fill_for(routed_for(late, key_of(late)).replace(cache_scope=scope_of(late)),
                          answer_for(late), NOW), 10)
    await reader.index_ready()
    assert reader.lookup(again, key_of(again), NOW + 1, both)[1] == "semantic"
    moved = ask("can I change my delivery address")
    assert reader.lookup(moved, key_of(moved), NOW + 1, both)[1] == "semantic"
    assert len(reader.similar) == 3

    reader.forget_counts()                        # a rebalance: built again, from the rows
    assert reader.lookup(again, key_of(again), NOW + 1, both) is None
    reader.forget_counts()                        # and again while that build runs
    await asyncio.sleep(0.5)
    assert reader.lookup(again, key_of(again), NOW + 1, both) is None      # a new build
    await reader.index_ready()
    assert reader.lookup(again, key_of(again), NOW + 1, both)[1] == "semantic"


def test_eviction_keeps_the_newest_without_scanning_the_rows_again():
    rows: dict = {}
    cache = ResponseCache(rows, catalog)
    firsts = [ask(f"question {i}") for i in range(5)]
    for i, r in enumerate(firsts):
        cache.apply(fill_for(routed_for(r, key_of(r)), answer_for(r), NOW + i), 3)
    assert cache.entries("acme") == 3
    assert len(rows) == 3 and cache.lookup(firsts[0], key_of(firsts[0]), NOW + 10) is None
    assert cache.lookup(firsts[4], key_of(firsts[4]), NOW + 10) is not None
    # a restarted worker orders the rows by when they were kept
    again = ResponseCache(rows, catalog)
    extra = ask("question 5")
    again.apply(fill_for(routed_for(extra, key_of(extra)), answer_for(extra), NOW + 9), 3)
    assert again.lookup(firsts[2], key_of(firsts[2]), NOW + 10) is None
    assert again.entries("acme") == 3


async def test_rows_a_table_recovery_brings_back_are_found_by_similarity():
    """A lookup in flight while the table's changelog is read back builds the index from
    the rows read so far; the rows recovered after it (written to the store, not through
    the cache) reach the index once the recovery completes."""
    app = faust.App(f"cache-table-{uuid.uuid4().hex[:6]}", autodiscover=False)
    table = CacheTable(app, build_runtime(Settings.from_env()), partitions=6)
    writer = ResponseCache({}, catalog)
    first = ask("How do I reset my password?")
    writer.apply(fill_for(routed_for(first, key_of(first)).replace(
        cache_scope=scope_of(first)), answer_for(first), NOW), 10)
    both = TenantPolicy("acme", cache_kinds=["exact", "semantic"])
    again = ask("how do I reset my password")
    assert table.cache.lookup(again, key_of(again), NOW + 1, both) is None   # building
    await table.cache.index_ready()                # built while nothing was read back yet
    table.table.data.update(writer.rows)           # the recovery writes the store itself
    await table.table.call_recover_callbacks()
    assert table.cache.lookup(again, key_of(again), NOW + 1, both) is None   # built again
    await table.cache.index_ready()
    assert table.cache.lookup(again, key_of(again), NOW + 1, both)[1] == "semantic"
