"""Routing policy (DOMAIN.md §3): pick the model and deployment for a request, first
matching rule wins, and attach the fallback chain. Plain Python, no Kafka."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol
from decimal import Decimal
from pathlib import Path

from pipeline import errors
from pipeline.catalog import Catalog
from pipeline.config import ConfigError, Section, config_path, load_yaml
from pipeline.deployments import Deployment, Deployments
from pipeline.errors import Rejected
from pipeline.events.models import Request, RouteDecision

TASK_CLASSES = ("simple", "medium", "complex")
CONDITIONS = ("required_quality_at_least", "budget_per_mtok_below", "max_latency_ms_below")


@dataclass(frozen=True)
class Rule:
    name: str
    model: str
    alternative: str | None
    required_quality_at_least: float | None = None
    budget_per_mtok_below: Decimal | None = None
    max_latency_ms_below: int | None = None

    def matches(self, request: Request) -> bool:
        h = request.hints
        if self.required_quality_at_least is not None:
            return h.required_quality is not None and h.required_quality >= self.required_quality_at_least
        if self.budget_per_mtok_below is not None:
            return h.budget_per_mtok is not None and h.budget_per_mtok < self.budget_per_mtok_below
        if self.max_latency_ms_below is not None:
            return h.max_latency_ms is not None and h.max_latency_ms < self.max_latency_ms_below
        return False


@dataclass(frozen=True)
class RoutingPolicy:
    rules: tuple[Rule, ...]
    default_model: str
    default_max_tokens: int
    max_prompt_tokens: int
    fallback_chains: dict[str, tuple[str, ...]]
    class_models: dict[str, str]          # rule 5: task class -> model


@dataclass(frozen=True)
class Route:
    decision: RouteDecision
    fallbacks: list[str]       # deployment ids, in order
    max_tokens: int


def load_routing(catalog: Catalog, path: Path | None = None) -> RoutingPolicy:
    path = path or config_path("routing.yaml")
    root = Section(path, "", load_yaml(path))

    def model_at(value: str, key: str) -> str:
        if value not in catalog.models:
            raise ConfigError(path, key, f"a catalog model {sorted(catalog.models)}", value)
        return value

    rules = []
    for i, item in enumerate(root.raw("rules", []) or []):
        s = Section(path, f"rules[{i}]", item)
        when = s.section("when")
        unknown = set(when.data) - set(CONDITIONS)
        if len(when.data) != 1 or unknown:
            raise ConfigError(path, f"rules[{i}].when", f"exactly one of {CONDITIONS}", when.data)
        rules.append(Rule(
            name=s.str("name"), model=model_at(s.str("model"), f"rules[{i}].model"),
            alternative=(model_at(s.str("alternative"), f"rules[{i}].alternative")
                         if s.has("alternative") else None),
            required_quality_at_least=(when.number("required_quality_at_least")
                                       if when.has("required_quality_at_least") else None),
            budget_per_mtok_below=(when.decimal("budget_per_mtok_below")
                                   if when.has("budget_per_mtok_below") else None),
            max_latency_ms_below=(when.int("max_latency_ms_below")
                                  if when.has("max_latency_ms_below") else None)))
    chains = {}
    for model, chain in (root.raw("fallback_chains", {}) or {}).items():
        model_at(model, f"fallback_chains.{model}")
        chains[model] = tuple(model_at(m, f"fallback_chains.{model}") for m in chain)
    class_models = {}
    for task_class, model in (root.raw("class_models", {}) or {}).items():
        if task_class not in TASK_CLASSES:
            raise ConfigError(path, f"class_models.{task_class}", f"one of {TASK_CLASSES}")
        class_models[task_class] = model_at(model, f"class_models.{task_class}")
    return RoutingPolicy(tuple(rules), model_at(root.str("default_model"), "default_model"),
                         root.int("default_max_tokens", minimum=1),
                         root.int("max_prompt_tokens", minimum=1), chains, class_models)


class Classification(Protocol):
    task_class: str
    score: float
    reason: str


class Classifier(Protocol):
    def classify(self, messages: list[tuple[str, str]]) -> Classification: ...


class Router:
    def __init__(self, catalog: Catalog, deployments: Deployments, policy: RoutingPolicy,
                 rng: random.Random | None = None, classifier: Classifier | None = None):
        self.catalog, self.deployments, self.policy = catalog, deployments, policy
        self.rng = rng or random.Random()
        self.classifier = classifier

    def route(self, request: Request, prompt_tokens: int) -> Route:
        classification = (self.classifier.classify([(m.role, m.content) for m in request.messages])
                           if self.classifier else None)
        model, rule, reason, candidates = self._choose_model(request, classification)
        wanted = request.params.max_tokens or self.policy.default_max_tokens
        fitted = self._fit_context(model, prompt_tokens, wanted)
        if fitted != model:
            reason += f"; moved to {fitted}: {prompt_tokens} prompt tokens do not fit {model}"
            rule, model = f"{rule}+context", fitted
        m = self.catalog.models[model]
        max_tokens = min(wanted, m.max_output_tokens)
        deployment = self._pick_deployment(model)
        decision = RouteDecision(deployment=deployment.id, model=model, provider=deployment.provider,
                                 rule=rule, region=deployment.region, candidates=candidates,
                                 reason=reason,
                                 task_class=classification.task_class if classification else "",
                                 complexity=classification.score if classification else None)
        return Route(decision, self._fallbacks(model, deployment.id, prompt_tokens), max_tokens)

    def _choose_model(self, request: Request, classification: Classification | None = None
                      ) -> tuple[str, str, str, list[str]]:
        if request.model:
            pinned = self.catalog.resolve(request.model)
            if pinned is None:
                raise Rejected(f"unknown model {request.model!r}; known models: "
                               f"{', '.join(sorted(self.catalog.models))}", errors.UNKNOWN_MODEL)
            return pinned, "pinned", f"pinned model {request.model} -> {pinned}", [pinned]
        for rule in self.policy.rules:
            if rule.matches(request):
                candidates = [rule.model] + ([rule.alternative] if rule.alternative else [])
                return rule.model, rule.name, f"rule {rule.name} matched", candidates
        if classification and classification.task_class in self.policy.class_models:
            model = self.policy.class_models[classification.task_class]
            return (model, "class", f"task class {classification.task_class} "
                    f"({classification.reason})", [model])
        return (self.policy.default_model, "default", "no rule matched; default model",
                [self.policy.default_model])

    def _fit_context(self, model: str, prompt_tokens: int, max_tokens: int) -> str:
        def fits(name: str) -> bool:
            m = self.catalog.models[name]
            return prompt_tokens + min(max_tokens, m.max_output_tokens) <= m.context_window

        if fits(model):
            return model
        for other in self.policy.fallback_chains.get(model, ()):
            if fits(other):
                return other
        larger = sorted((m for m in self.catalog.models.values() if fits(m.name)),
                        key=lambda m: (-m.quality, m.output_per_mtok))
        if larger:
            return larger[0].name
        raise Rejected(f"prompt of ~{prompt_tokens} tokens does not fit any model's context window",
                       errors.CONTEXT_LENGTH_EXCEEDED)

    def _pick_deployment(self, model: str) -> Deployment:
        options = self.deployments.for_model(model)
        if not options:
            raise Rejected(f"no deployment serves {model}", errors.INVALID_REQUEST)
        best = min(d.priority for d in options)
        tier = [d for d in options if d.priority == best]
        weights = [max(d.weight, 0) for d in tier]
        if sum(weights) == 0:
            return tier[0]
        return self.rng.choices(tier, weights=weights, k=1)[0]

    def _fallbacks(self, model: str, chosen: str, prompt_tokens: int) -> list[str]:
        ids = [d.id for d in self.deployments.for_model(model) if d.id != chosen]
        for other in self.policy.fallback_chains.get(model, ()):
            m = self.catalog.models[other]
            if prompt_tokens < m.context_window:
                ids += [d.id for d in self.deployments.for_model(other) if d.id not in ids]
        return ids
