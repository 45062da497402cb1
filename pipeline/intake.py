"""Intake: decode, validate, normalise and route each request on llm.requests.

A valid request becomes a RoutedRequest on llm.routed; a request intake refuses gets a
terminal error Response (and a Usage row, so errors are counted); bytes that are not a
request become a DeadLetter with the raw bytes and the reason. Nothing here raises.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Callable

from pipeline import errors
from pipeline.catalog import Catalog
from pipeline.errors import Rejected
from pipeline.events.codec import Codec, DecodeError, is_json
from pipeline.events.models import (ERROR, PRIORITIES, ROLES, ErrorInfo, Request,
                                    Response, RoutedRequest, TenantPolicy, Usage)
from pipeline.outputs import AVRO, JSON, Origin, Out, dead_letter
from pipeline.routing.policy import Router, RoutingPolicy, TenantRules
from pipeline.tenancy.admissions import DUPLICATE, REDELIVERY, REFUSED, Admission
from pipeline.tenancy.canary import CANARY, arm_for, arm_label
from pipeline.tenancy.state import TenantState, budget_alert
from pipeline.routing.tokens import estimate_prompt_tokens
from pipeline.settings import Topics

MAX_TENANT_LENGTH = 128


def now_ms() -> int:
    return int(time.time() * 1000)


class Intake:
    agent = "intake"

    def __init__(self, codec: Codec, catalog: Catalog, router: Router, policy: RoutingPolicy,
                 topics: Topics, clock: Callable[[], int] = now_ms,
                 policies: Callable[[str], TenantPolicy | None] = lambda tenant: None,
                 state: TenantState | None = None):
        self.codec, self.catalog, self.router, self.policy = codec, catalog, router, policy
        self.topics, self.clock, self.policies = topics, clock, policies
        self.state = state if state is not None else TenantState({})

    def handle(self, value: bytes | None, origin: Origin) -> list[Out]:
        received = self.clock()
        fmt = JSON if is_json(value) else AVRO
        try:
            request = self.codec.decode(value, Request)
        except DecodeError as exc:
            return self._rejected_bytes(value, origin, exc.code, exc.reason, received)
        try:
            self._validate(request)
        except Rejected as exc:
            return self._refused(request, fmt, exc, received, origin)
        request = self._normalise(request)
        self.state.prepare(origin.partition)
        kind, seen = self.state.admissions.classify(request.tenant, request.request_id,
                                                    origin.partition, origin.offset)
        if kind == DUPLICATE:
            return [self._duplicate(request, fmt, seen, received)]
        outs: list[Out] = []
        try:
            policy = self.policies(request.tenant)
            if kind == REDELIVERY and seen.state != REFUSED:
                # Admitted before but never acknowledged: route again, reserve nothing new.
                routed, _ = self._route(request, fmt, origin, received, policy, economise=False)
            else:
                routed, alerts = self._admit(request, fmt, origin, received, policy)
                outs += alerts
        except Rejected as exc:
            self.state.refuse(request.tenant, request.request_id, origin.partition, origin.offset,
                              received)
            alerts = exc.alerts if isinstance(exc, _BudgetRefusal) else []
            return alerts + self._refused(request, fmt, exc, received, origin)
        finally:
            self.state.sweep(origin.partition, received)
        return outs + [Out(self.topics.routed, routed.route.deployment, routed)]

    # --- admission: tenant policy, budgets, routing -----------------------------------

    def _admit(self, request: Request, fmt: str, origin: Origin, received: int,
               policy: TenantPolicy | None) -> tuple[RoutedRequest, list[Out]]:
        routed, estimate = self._route(request, fmt, origin, received, policy, economise=False)
        alerts: list[Out] = []
        budgets = policy.budgets if policy else []
        crossings = self.state.spend.crossings(request.tenant, request.team, budgets, received,
                                               estimate)
        for c in crossings:
            if c.first_in_period:
                self.state.spend.mark_alerted(c, origin.partition)
                alerts.append(Out(self.topics.alerts, request.tenant,
                                  budget_alert(request.tenant, c, received)))
            if c.level == "hard":
                raise _BudgetRefusal(alerts, c.describe())
        if crossings:
            routed, estimate = self._route(request, fmt, origin, received, policy, economise=True)
        self.state.admit(request.tenant, request.team, request.request_id, origin.partition,
                         origin.offset, received, estimate)
        return routed, alerts

    def _route(self, request: Request, fmt: str, origin: Origin, received: int,
               policy: TenantPolicy | None, economise: bool) -> tuple[RoutedRequest, int]:
        prompt_tokens = estimate_prompt_tokens(m.content for m in request.messages)
        if prompt_tokens > self.policy.max_prompt_tokens:
            raise Rejected(f"prompt of ~{prompt_tokens} tokens exceeds the gateway limit of "
                           f"{self.policy.max_prompt_tokens}", errors.CONTEXT_LENGTH_EXCEEDED)
        rules, canary = tenant_rules(policy, request, self.state, economise)
        route = self.router.route(request, prompt_tokens, rules)
        if route.decision.rule != "canary" and canary.endswith(":canary"):
            canary = ""             # the canary model could not take it (pinned, policy, window)
        if route.messages != list(request.messages):
            request = request.replace(messages=route.messages)
        routed = RoutedRequest(
            request=request, route=route.decision, max_tokens=route.max_tokens,
            reply_topic=request.reply_topic or self.topics.responses, received_at_ms=received,
            routed_at_ms=self.clock(), fallbacks=route.fallbacks,
            estimated_prompt_tokens=route.prompt_tokens, reply_format=fmt,
            tenant_partition=origin.partition, canary=canary,
            baseline_model=(policy.baseline_model if policy and policy.baseline_model else ""))
        return routed, self.router.estimate_nanos(route)

    def _duplicate(self, r: Request, fmt: str, seen: Admission, received: int) -> Out:
        where = f"partition {seen.partition} offset {seen.offset}" if seen.offset >= 0 else "earlier"
        state = "in_flight" if seen.in_flight else "completed"
        message = (f"request id {r.request_id} was already accepted ({where}); this copy was not "
                   f"processed and will not be billed. "
                   + ("The original is in flight (or has just finished): its response carries "
                      "this id."
                      if seen.in_flight else
                      f"The original already completed with status {seen.status or 'error'}."))
        return Out(r.reply_topic or self.topics.responses, r.request_id, Response(
            request_id=r.request_id, tenant=r.tenant, status=ERROR, completed_at_ms=received,
            error=ErrorInfo(errors.DUPLICATE, message, retryable=False),
            metadata={**r.metadata, errors.DUPLICATE_STATE: state}), fmt)

    # --- validation ----------------------------------------------------------------

    def _validate(self, r: Request) -> None:
        try:
            uuid.UUID(r.request_id)
        except ValueError:
            raise Rejected(f"request_id {r.request_id!r} is not a UUID") from None
        if not r.tenant.strip() or len(r.tenant) > MAX_TENANT_LENGTH:
            raise Rejected(f"tenant must be 1..{MAX_TENANT_LENGTH} characters")
        if not r.messages:
            raise Rejected("messages must contain at least one message")
        for i, m in enumerate(r.messages):
            if m.role not in ROLES:
                raise Rejected(f"messages[{i}].role {m.role!r} is not one of {', '.join(ROLES)}")
        if not any(m.content.strip() for m in r.messages):
            raise Rejected("every message is empty")
        p, h = r.params, r.hints
        if p.max_tokens is not None and p.max_tokens < 1:
            raise Rejected(f"params.max_tokens must be at least 1 (got {p.max_tokens})")
        if p.temperature is not None and not 0 <= p.temperature <= 2:
            raise Rejected(f"params.temperature must be within 0..2 (got {p.temperature})")
        if p.top_p is not None and not 0 <= p.top_p <= 1:
            raise Rejected(f"params.top_p must be within 0..1 (got {p.top_p})")
        if h.required_quality is not None and not 0 <= h.required_quality <= 1:
            raise Rejected(f"hints.required_quality must be within 0..1 (got {h.required_quality})")
        if h.max_latency_ms is not None and h.max_latency_ms < 1:
            raise Rejected(f"hints.max_latency_ms must be positive (got {h.max_latency_ms})")
        if h.budget_per_mtok is not None and h.budget_per_mtok < 0:
            raise Rejected(f"hints.budget_per_mtok must not be negative (got {h.budget_per_mtok})")
        if h.priority not in PRIORITIES:
            raise Rejected(f"hints.priority {h.priority!r} is not one of {', '.join(PRIORITIES)}")

    def _normalise(self, r: Request) -> Request:
        return r.replace(tenant=r.tenant.strip())

    # --- refusals ------------------------------------------------------------------

    def _refused(self, r: Request, fmt: str, exc: Rejected, received: int, origin: Origin) -> list[Out]:
        at = self.clock()
        created = r.created_at_ms or origin.timestamp_ms or received
        response = Response(
            request_id=r.request_id, tenant=r.tenant, status=ERROR, completed_at_ms=at,
            error=ErrorInfo(exc.code, exc.message, retryable=False),
            latency_ms=max(0, at - created), metadata=r.metadata)
        usage = Usage(
            request_id=r.request_id, tenant=r.tenant, created_at_ms=created, completed_at_ms=at,
            status=ERROR, error_code=exc.code, team=r.team or "", end_user=r.end_user or "",
            requested_model=r.model or "", queue_ms=max(0, received - created),
            pipeline_ms=max(0, at - received))
        return [Out(r.reply_topic or self.topics.responses, r.request_id, response, fmt),
                Out(self.topics.usage, r.tenant, usage, partition=origin.partition)]

    def _rejected_bytes(self, value: bytes | None, origin: Origin, code: str, reason: str,
                        at: int) -> list[Out]:
        request_id, tenant = _peek_ids(value)
        return [dead_letter(self.topics.dead_letter, origin, value, self.agent, code, reason,
                            request_id, tenant)]


class _BudgetRefusal(Rejected):
    code = errors.BUDGET_EXCEEDED

    def __init__(self, alerts: list[Out], reason: str):
        super().__init__(f"budget exceeded: {reason}")
        self.alerts = alerts


def tenant_rules(policy: TenantPolicy | None, request: Request, state: TenantState,
                 economise: bool) -> tuple[TenantRules, str]:
    """The routing constraints of the tenant's policy, and the request's canary arm label."""
    if policy is None:
        return TenantRules(economise=economise), ""
    canary_model, label = None, ""
    rule = policy.canary
    if state.canaries.active(request.tenant, rule):
        arm = arm_for(request.tenant, rule, request.end_user or request.request_id)
        label = arm_label(rule, arm)
        canary_model = rule.model if arm == CANARY else None
    return TenantRules(
        allowed=frozenset(policy.allowed_models), denied=frozenset(policy.denied_models),
        default_quality=policy.default_quality, canary_model=canary_model, economise=economise,
        truncation_allowed=policy.truncation_allowed), label


def _peek_ids(value: bytes | None) -> tuple[str | None, str | None]:
    """Best-effort request id and tenant of an undecodable JSON value, for operators."""
    if not is_json(value):
        return None, None
    try:
        obj = json.loads(value)
    except ValueError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    rid, tenant = obj.get("request_id"), obj.get("tenant")
    return (rid if isinstance(rid, str) else None, tenant if isinstance(tenant, str) else None)
