"""DOMAIN.md §3 as tables: each routing rule with its boundaries and precedence, every alias,
every fallback chain, and the weighted, priority-tiered choice among deployments."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import replace
from decimal import Decimal

import pytest

from pipeline.catalog import load_catalog
from pipeline.providers.deployments import Deployments, load_deployments
from pipeline.events.models import ChatMessage, GenerationParams, Request, RoutingHints
from pipeline.routing.policy import Router, load_routing

catalog = load_catalog()
deployments = load_deployments(catalog, env={})
policy = load_routing(catalog)


class Fixed:
    def __init__(self, task_class: str):
        self.task_class, self.score, self.reason = task_class, 0.5, "fixed"

    def classify(self, messages):
        return self


def request(model: str | None = None, **hints) -> Request:
    if "budget_per_mtok" in hints:
        hints["budget_per_mtok"] = Decimal(hints["budget_per_mtok"])
    return Request(str(uuid.uuid4()), "acme", messages=[ChatMessage("user", "hello")],
                   model=model, hints=RoutingHints(**hints), params=GenerationParams())


def route(req: Request, task_class: str | None = None):
    router = Router(catalog, deployments, policy, random.Random(3),
                    Fixed(task_class) if task_class else None)
    return router.route(req, 20).decision


@pytest.mark.parametrize("hints, task_class, model, rule", [
    # rule 2: required_quality >= 0.95 -> gpt-4.1 (claude-sonnet-4.5 the alternative)
    ({"required_quality": 0.95}, None, "gpt-4.1", "quality"),
    ({"required_quality": 1.0}, "simple", "gpt-4.1", "quality"),
    ({"required_quality": 0.949}, None, "gemini-2.5-flash", "default"),
    # rule 3: budget_per_mtok < 2 -> deepseek-v3.2
    ({"budget_per_mtok": "1.99"}, "complex", "deepseek-v3.2", "budget"),
    ({"budget_per_mtok": "2"}, None, "gemini-2.5-flash", "default"),
    # rule 4: max_latency_ms < 500 -> gemini-2.5-flash
    ({"max_latency_ms": 499}, "complex", "gemini-2.5-flash", "latency"),
    ({"max_latency_ms": 500}, "complex", "gpt-4.1", "class"),
    # first match wins: quality before budget before latency before class
    ({"required_quality": 0.96, "budget_per_mtok": "1"}, None, "gpt-4.1", "quality"),
    ({"budget_per_mtok": "1", "max_latency_ms": 100}, None, "deepseek-v3.2", "budget"),
    # rule 5: by task class
    ({}, "simple", "deepseek-v3.2", "class"),
    ({}, "medium", "gemini-2.5-flash", "class"),
    ({}, "complex", "gpt-4.1", "class"),
    ({}, None, "gemini-2.5-flash", "default"),
])
def test_rules_in_order(hints, task_class, model, rule):
    decision = route(request(**hints), task_class)
    assert (decision.model, decision.rule) == (model, rule)


def test_quality_rule_names_its_alternative():
    assert route(request(required_quality=0.97)).candidates == ["gpt-4.1", "claude-sonnet-4.5"]


@pytest.mark.parametrize("alias, model", [
    ("gpt-4", "gpt-4.1"), ("claude-3", "claude-sonnet-4.5"), ("gemini-pro", "gemini-2.5-flash"),
    ("deepseek-chat", "deepseek-v3.2"), ("  GPT-4 ", "gpt-4.1"), ("gpt-4o-mini", "gpt-4o-mini"),
])
def test_rule_1_a_pinned_model_is_normalised_and_beats_every_hint(alias, model):
    decision = route(request(alias, required_quality=0.99, budget_per_mtok="0.1"), "complex")
    assert (decision.model, decision.rule) == (model, "pinned")


@pytest.mark.parametrize("model, chain", [
    ("gpt-4.1", ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4.5"]),
    ("claude-sonnet-4.5", ["gemini-2.5-flash"]),
    ("gemini-2.5-flash", ["deepseek-v3.2", "gpt-4o-mini"]),
])
def test_fallback_chains_of_domain_md(model, chain):
    assert list(policy.fallback_chains[model]) == chain
    router = Router(catalog, deployments, policy, random.Random(1))
    r = router.route(request(model), 20)
    fallback_models = [deployments.by_id[d].model for d in r.fallbacks]
    assert fallback_models == chain                   # one deployment per model here


def test_every_chat_model_has_a_fallback_chain_of_catalog_models():
    for model in (name for name, m in catalog.models.items() if m.kind == "chat"):
        assert policy.fallback_chains.get(model), model
        assert model not in policy.fallback_chains[model]


def test_weighted_choice_among_the_best_priority_and_the_rest_head_the_fallbacks():
    base = deployments.by_id["deepseek-v3.2"]
    extra = {
        "ds-a": replace(base, id="ds-a", weight=100, priority=1),
        "ds-b": replace(base, id="ds-b", weight=60, priority=1),
        "ds-far": replace(base, id="ds-far", weight=1000, priority=99, region="us-west"),
    }
    by_id = {k: v for k, v in deployments.by_id.items() if v.model != "deepseek-v3.2"} | extra
    deps = Deployments(by_id, deployments.calls)
    router = Router(catalog, deps, policy, random.Random(42))
    picks = Counter(router.route(request("deepseek-chat"), 20).decision.deployment
                    for _ in range(4000))
    assert set(picks) == {"ds-a", "ds-b"}            # the far region only as a fallback
    assert picks["ds-a"] / picks["ds-b"] == pytest.approx(100 / 60, rel=0.1)
    r = router.route(request("deepseek-chat"), 20)
    other = "ds-b" if r.decision.deployment == "ds-a" else "ds-a"
    assert r.fallbacks[:2] == [other, "ds-far"]
