"""Routing policy (DOMAIN.md §3): pick the model and deployment for a request, first
matching rule wins, and attach the fallback chain. Plain Python, no Kafka."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Protocol
from decimal import Decimal
from pathlib import Path

from pipeline import errors
from pipeline.catalog import CHAT, EMBEDDING, Catalog
from pipeline.config import ConfigError, Section, config_path, load_yaml
from pipeline.providers.deployments import Deployment, Deployments
from pipeline.errors import Rejected
from pipeline.events.models import ChatMessage, Request, RouteDecision
from pipeline.routing.features import describe, needed
from pipeline.routing.tokens import estimate_messages_tokens, estimate_text_tokens

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

    def matches(self, request: Request, required_quality: float | None = None) -> bool:
        h = request.hints
        if self.required_quality_at_least is not None:
            return required_quality is not None and required_quality >= self.required_quality_at_least
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
    quality_floors: dict[str, float] = field(default_factory=dict)   # task class -> lowest quality
    default_embedding_model: str | None = None


@dataclass(frozen=True)
class Route:
    decision: RouteDecision
    fallbacks: list[str]       # deployment ids, in order
    max_tokens: int
    messages: list[ChatMessage] = field(default_factory=list)   # as sent (truncated if so)
    prompt_tokens: int = 0
    quality_floor: float = 0.0


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
    floors = {}
    for task_class, floor in (root.raw("quality_floors", {}) or {}).items():
        if task_class not in TASK_CLASSES:
            raise ConfigError(path, f"quality_floors.{task_class}", f"one of {TASK_CLASSES}")
        if not isinstance(floor, (int, float)) or not 0 <= floor <= 1:
            raise ConfigError(path, f"quality_floors.{task_class}", "a number in 0..1", floor)
        floors[task_class] = float(floor)
    embedding = root.raw("default_embedding_model", None)
    if embedding is not None and (model_at(embedding, "default_embedding_model")
                                  and catalog.models[embedding].kind != EMBEDDING):
        raise ConfigError(path, "default_embedding_model", "a model of kind embedding", embedding)
    return RoutingPolicy(tuple(rules), model_at(root.str("default_model"), "default_model"),
                         root.int("default_max_tokens", minimum=1),
                         root.int("max_prompt_tokens", minimum=1), chains, class_models, floors,
                         embedding)


class Classification(Protocol):
    task_class: str
    score: float
    reason: str


class Classifier(Protocol):
    def classify(self, messages: list[tuple[str, str]]) -> Classification: ...


@dataclass(frozen=True)
class TenantRules:
    """What the tenant's policy and budget state ask of this routing decision."""
    allowed: frozenset[str] = frozenset()      # empty: every model
    denied: frozenset[str] = frozenset()
    default_quality: float | None = None       # stands in for an absent required_quality
    canary_model: str | None = None            # the request is in a canary arm
    economise: bool = False                    # a soft budget is crossed: cheapest model meeting the floor
    truncation_allowed: bool = False
    unfit: frozenset[str] = frozenset()        # models that cannot serve this request (features, kind)

    def permits(self, model: str) -> bool:
        return (model not in self.unfit and model not in self.denied
                and (not self.allowed or model in self.allowed))


OPEN = TenantRules()


class Router:
    def __init__(self, catalog: Catalog, deployments: Deployments, policy: RoutingPolicy,
                 rng: random.Random | None = None, classifier: Classifier | None = None):
        self.catalog, self.deployments, self.policy = catalog, deployments, policy
        self.rng = rng or random.Random()
        self.classifier = classifier

    def route(self, request: Request, prompt_tokens: int, tenant: TenantRules = OPEN) -> Route:
        if request.embedding is not None:
            return self._route_embedding(request, prompt_tokens, tenant)
        needs = needed(request)
        tenant = replace(tenant, unfit=frozenset(
            m.name for m in self.catalog.models.values()
            if m.kind != CHAT or m.lacks(frozenset(needs))))
        classification = (self.classifier.classify([(m.role, m.text) for m in request.messages])
                           if self.classifier else None)
        wanted = request.params.max_tokens or self.policy.default_max_tokens
        choice = self._choose_model(request, classification, tenant, needs)
        floor = self._floor(request, classification, tenant)
        pinned = choice.rule == "pinned"
        if tenant.canary_model and not pinned and tenant.permits(tenant.canary_model):
            choice.switch(tenant.canary_model, "canary", f"canary arm -> {tenant.canary_model}")
        if tenant.economise and not pinned:
            cheaper = self._cheapest(floor, prompt_tokens, wanted, tenant)
            if cheaper and self._estimate(cheaper, prompt_tokens, wanted) < \
                    self._estimate(choice.model, prompt_tokens, wanted):
                choice.switch(cheaper, f"{choice.rule}+budget",
                              f"soft budget crossed: downgraded to {cheaper}, the cheapest model "
                              f"with quality >= {floor:g}")
        if choice.model in tenant.unfit:
            lacking = self.catalog.models[choice.model].lacks(frozenset(needs))
            choice.switch(self._permitted_instead(choice, floor, prompt_tokens, wanted, tenant,
                                                  needs),
                          f"{choice.rule}+features",
                          f"{choice.model} lacks {describe(lacking, needs)}")
        elif not tenant.permits(choice.model):
            choice.switch(self._permitted_instead(choice, floor, prompt_tokens, wanted, tenant,
                                                  needs),
                          f"{choice.rule}+policy", f"{choice.model} is not allowed for this tenant")
        messages = list(request.messages)
        if not self._fits(choice.model, prompt_tokens, wanted):
            extra = prompt_tokens - estimate_messages_tokens(messages)   # tools, schema
            if pinned and tenant.truncation_allowed:
                messages, prompt_tokens = self._truncate(choice, messages, wanted, extra)
            else:
                fitted = self._fitting(choice.model, prompt_tokens, wanted, tenant)
                if fitted:
                    choice.switch(fitted, f"{choice.rule}+context",
                                  f"{prompt_tokens} prompt tokens do not fit {choice.model}")
                elif tenant.truncation_allowed:
                    messages, prompt_tokens = self._truncate(choice, messages, wanted, extra)
                else:
                    raise Rejected(f"prompt of ~{prompt_tokens} tokens does not fit the context window "
                                   f"of any model this tenant may use, and the tenant's policy does "
                                   f"not allow truncation", errors.CONTEXT_LENGTH_EXCEEDED)
        model = self.catalog.models[choice.model]
        deployment = self._pick_deployment(choice.model)
        decision = RouteDecision(deployment=deployment.id, model=choice.model,
                                 provider=deployment.provider, rule=choice.rule,
                                 region=deployment.region, candidates=choice.candidates,
                                 reason="; ".join(choice.reasons),
                                 task_class=classification.task_class if classification else "",
                                 complexity=classification.score if classification else None)
        fallbacks = self._fallbacks(choice.model, deployment.id, prompt_tokens, tenant)
        return Route(decision, fallbacks, min(wanted, model.max_output_tokens), messages,
                     prompt_tokens, floor)

    def _route_embedding(self, request: Request, prompt_tokens: int,
                         tenant: TenantRules) -> Route:
        """An embedding request goes to its pinned model or the default embedding model, and
        fails over only to other deployments of that model: another model's vectors live in
        another space, so they would be wrong, not just different."""
        if request.model:
            model = self.catalog.resolve(request.model)
            if model is None:
                raise Rejected(f"unknown model {request.model!r}; embedding models: "
                               f"{', '.join(self._embedding_models())}", errors.UNKNOWN_MODEL)
            rule, reason = "pinned", f"pinned model {request.model} -> {model}"
        elif self.policy.default_embedding_model:
            model, rule, reason = self.policy.default_embedding_model, "default", \
                "no model named; default embedding model"
        else:
            raise Rejected("an embedding request must name its model (no default embedding "
                           "model is configured)", errors.INVALID_REQUEST)
        m = self.catalog.models[model]
        if m.kind != EMBEDDING:
            raise Rejected(f"{model} is a {m.kind} model; embeddings need an embedding model: "
                           f"{', '.join(self._embedding_models())}", errors.INVALID_REQUEST)
        if not tenant.permits(model):
            raise Rejected(f"model {model} is not allowed for this tenant",
                           errors.MODEL_NOT_ALLOWED)
        e = request.embedding
        assert e is not None
        if e.dimensions is not None and e.dimensions > m.dimensions:
            raise Rejected(f"embedding.dimensions {e.dimensions} is more than {model}'s "
                           f"{m.dimensions}", errors.INVALID_REQUEST)
        for i, text in enumerate(e.inputs):
            tokens = estimate_text_tokens(text)
            if tokens > m.context_window:
                raise Rejected(f"embedding.inputs[{i}] is ~{tokens} tokens; {model} takes at "
                               f"most {m.context_window} per input",
                               errors.CONTEXT_LENGTH_EXCEEDED)
        deployment = self._pick_deployment(model)
        decision = RouteDecision(deployment=deployment.id, model=model,
                                 provider=deployment.provider, rule=rule,
                                 region=deployment.region, candidates=[model], reason=reason)
        fallbacks = [d.id for d in self.deployments.for_model(model) if d.id != deployment.id]
        return Route(decision, fallbacks, 0, [], prompt_tokens)

    def _embedding_models(self) -> list[str]:
        return sorted(n for n, m in self.catalog.models.items() if m.kind == EMBEDDING)

    def estimate_nanos(self, route: Route) -> int:
        """Worst-case cost of a routed request: estimated prompt plus the full max_tokens."""
        return self._estimate(route.decision.model, route.prompt_tokens, route.max_tokens)

    # --- model choice ----------------------------------------------------------------

    def _choose_model(self, request: Request, classification: Classification | None,
                      tenant: TenantRules = OPEN, needs: dict[str, str] | None = None
                      ) -> "_Choice":
        denied_pin = ""
        if request.model:
            pinned = self.catalog.resolve(request.model)
            if pinned is None:
                raise Rejected(f"unknown model {request.model!r}; known models: "
                               f"{', '.join(sorted(self.catalog.models))}", errors.UNKNOWN_MODEL)
            if pinned in tenant.unfit:
                raise Rejected(self._unfit_reason(pinned, needs or {}), errors.INVALID_REQUEST)
            if tenant.permits(pinned):
                return _Choice(pinned, "pinned", [f"pinned model {request.model} -> {pinned}"], [pinned])
            denied_pin = f"pinned model {pinned} is not allowed for this tenant; "
        quality = self._required_quality(request, tenant)
        for rule in self.policy.rules:
            if rule.matches(request, quality):
                candidates = [rule.model] + ([rule.alternative] if rule.alternative else [])
                return _Choice(rule.model, rule.name, [f"{denied_pin}rule {rule.name} matched"],
                               candidates, rule.alternative)
        if classification and classification.task_class in self.policy.class_models:
            model = self.policy.class_models[classification.task_class]
            return _Choice(model, "class", [f"{denied_pin}task class {classification.task_class} "
                                            f"({classification.reason})"], [model])
        return _Choice(self.policy.default_model, "default",
                       [f"{denied_pin}no rule matched; default model"], [self.policy.default_model])

    @staticmethod
    def _required_quality(request: Request, tenant: TenantRules) -> float | None:
        q = request.hints.required_quality
        return q if q is not None else tenant.default_quality

    def _floor(self, request: Request, classification: Classification | None,
               tenant: TenantRules) -> float:
        """The lowest quality this request may be served at when the router economises."""
        floor = self._required_quality(request, tenant) or 0.0
        if classification:
            floor = max(floor, self.policy.quality_floors.get(classification.task_class, 0.0))
        return floor

    def _estimate(self, model: str, prompt_tokens: int, max_tokens: int) -> int:
        m = self.catalog.models[model]
        return self.catalog.cost_nanos(model, prompt_tokens, min(max_tokens, m.max_output_tokens))

    def _cheapest(self, floor: float, prompt_tokens: int, max_tokens: int,
                  tenant: TenantRules) -> str | None:
        options = [m.name for m in self.catalog.models.values()
                   if m.quality >= floor and tenant.permits(m.name)
                   and self._fits(m.name, prompt_tokens, max_tokens)
                   and self.deployments.for_model(m.name)]
        return min(options, key=lambda n: (self._estimate(n, prompt_tokens, max_tokens), n),
                   default=None)

    def _unfit_reason(self, model: str, needs: dict[str, str]) -> str:
        m = self.catalog.models[model]
        if m.kind != CHAT:
            return (f"{model} is an {m.kind} model; a chat request needs a chat model")
        capable = sorted(n for n, x in self.catalog.models.items()
                         if x.kind == CHAT and not x.lacks(frozenset(needs)))
        return (f"model {model} does not support {describe(m.lacks(frozenset(needs)), needs)}; "
                f"models that do: {', '.join(capable) or 'none'}")

    def _permitted_instead(self, choice: "_Choice", floor: float, prompt_tokens: int,
                           max_tokens: int, tenant: TenantRules,
                           needs: dict[str, str] | None = None) -> str:
        for other in [choice.alternative] + list(self.policy.fallback_chains.get(choice.model, ())):
            if other and tenant.permits(other):
                return other
        best = self._cheapest(floor, prompt_tokens, max_tokens, tenant)
        if best:
            return best
        anything = sorted((m for m in self.catalog.models.values() if tenant.permits(m.name)),
                          key=lambda m: -m.quality)
        if not anything and needs:
            raise Rejected(f"no model this tenant may use supports "
                           f"{describe(sorted(needs), needs)}", errors.INVALID_REQUEST)
        if not anything:
            raise Rejected("the tenant's policy allows no model in the catalog",
                           errors.MODEL_NOT_ALLOWED)
        return anything[0].name

    # --- context window ----------------------------------------------------------------

    def _fits(self, name: str, prompt_tokens: int, max_tokens: int) -> bool:
        m = self.catalog.models[name]
        return prompt_tokens + min(max_tokens, m.max_output_tokens) <= m.context_window

    def _fitting(self, model: str, prompt_tokens: int, max_tokens: int,
                 tenant: TenantRules) -> str | None:
        for other in self.policy.fallback_chains.get(model, ()):
            if tenant.permits(other) and self._fits(other, prompt_tokens, max_tokens):
                return other
        larger = sorted((m for m in self.catalog.models.values()
                         if tenant.permits(m.name) and self._fits(m.name, prompt_tokens, max_tokens)),
                        key=lambda m: (-m.quality, m.output_per_mtok))
        return larger[0].name if larger else None

    def _truncate(self, choice: "_Choice", messages: list[ChatMessage], max_tokens: int,
                  extra: int = 0) -> tuple[list[ChatMessage], int]:
        """``extra``: prompt tokens that are not messages (tools, a response schema)."""
        m = self.catalog.models[choice.model]
        room = m.context_window - min(max_tokens, m.max_output_tokens) - extra
        kept, dropped = truncate_to_fit(messages, room, choice.model)
        if kept is None:
            raise Rejected(f"the latest message alone does not fit {choice.model}'s context window "
                           f"of {m.context_window} tokens", errors.CONTEXT_LENGTH_EXCEEDED)
        tokens = estimate_messages_tokens(kept) + extra
        choice.note(f"truncated: dropped the {dropped} oldest message(s) to fit {choice.model} "
                    f"({tokens} prompt tokens kept)")
        choice.rule += "+truncated"
        return kept, tokens

    # --- deployments -------------------------------------------------------------------

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

    def _fallbacks(self, model: str, chosen: str, prompt_tokens: int,
                   tenant: TenantRules = OPEN) -> list[str]:
        ids = [d.id for d in self.deployments.for_model(model) if d.id != chosen]
        for other in self.policy.fallback_chains.get(model, ()):
            m = self.catalog.models[other]
            if prompt_tokens < m.context_window and tenant.permits(other):
                ids += [d.id for d in self.deployments.for_model(other) if d.id not in ids]
        return ids


@dataclass
class _Choice:
    model: str
    rule: str
    reasons: list[str]
    candidates: list[str]
    alternative: str | None = None

    def switch(self, model: str, rule: str, reason: str) -> None:
        self.model, self.rule = model, rule
        self.reasons.append(reason)
        if model not in self.candidates:
            self.candidates.append(model)

    def note(self, reason: str) -> None:
        self.reasons.append(reason)


TRUNCATION_NOTE = ("[llmpipe] {dropped} earlier message(s) of this conversation were removed "
                   "to fit the {model} context window.")


def truncate_to_fit(messages: list[ChatMessage], room_tokens: int, model: str
                    ) -> tuple[list[ChatMessage] | None, int]:
    """Keep the system messages and the latest other messages that fit ``room_tokens``,
    with a system note saying how many were dropped. None if the last message cannot fit."""
    system = [m for m in messages if m.role == "system"]
    others = [m for m in messages if m.role != "system"]
    for dropped in range(0, len(others)):
        if others[dropped].role == "tool":
            continue            # a tool result needs the call before it: never cut between
        note = [ChatMessage("system", TRUNCATION_NOTE.format(dropped=dropped, model=model))] if dropped else []
        kept = system + note + others[dropped:]
        if estimate_messages_tokens(kept) <= room_tokens:
            return kept, dropped
    return None, len(others)
