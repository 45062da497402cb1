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
                                    Response, RoutedRequest, Usage)
from pipeline.outputs import AVRO, JSON, Origin, Out, dead_letter
from pipeline.routing.policy import Router, RoutingPolicy
from pipeline.routing.tokens import estimate_prompt_tokens
from pipeline.settings import Topics

MAX_TENANT_LENGTH = 128


def now_ms() -> int:
    return int(time.time() * 1000)


class Intake:
    agent = "intake"

    def __init__(self, codec: Codec, catalog: Catalog, router: Router, policy: RoutingPolicy,
                 topics: Topics, clock: Callable[[], int] = now_ms):
        self.codec, self.catalog, self.router, self.policy = codec, catalog, router, policy
        self.topics, self.clock = topics, clock

    def handle(self, value: bytes | None, origin: Origin) -> list[Out]:
        received = self.clock()
        fmt = JSON if is_json(value) else AVRO
        try:
            request = self.codec.decode(value, Request)
        except DecodeError as exc:
            return self._rejected_bytes(value, origin, exc.code, exc.reason, received)
        try:
            self._validate(request)
            request = self._normalise(request)
            prompt_tokens = estimate_prompt_tokens(m.content for m in request.messages)
            if prompt_tokens > self.policy.max_prompt_tokens:
                raise Rejected(f"prompt of ~{prompt_tokens} tokens exceeds the gateway limit of "
                               f"{self.policy.max_prompt_tokens}", errors.CONTEXT_LENGTH_EXCEEDED)
            route = self.router.route(request, prompt_tokens)
        except Rejected as exc:
            return self._refused(request, fmt, exc, received, origin)
        routed = RoutedRequest(
            request=request, route=route.decision, max_tokens=route.max_tokens,
            reply_topic=request.reply_topic or self.topics.responses, received_at_ms=received,
            routed_at_ms=self.clock(), fallbacks=route.fallbacks,
            estimated_prompt_tokens=prompt_tokens, reply_format=fmt)
        return [Out(self.topics.routed, route.decision.deployment, routed)]

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
                Out(self.topics.usage, r.tenant, usage)]

    def _rejected_bytes(self, value: bytes | None, origin: Origin, code: str, reason: str,
                        at: int) -> list[Out]:
        request_id, tenant = _peek_ids(value)
        return [dead_letter(self.topics.dead_letter, origin, value, self.agent, code, reason,
                            request_id, tenant)]


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
