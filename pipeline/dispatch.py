"""Dispatch: call the routed deployment, retry what is retryable, fail over along the
fallback chain, and end every request in exactly one terminal Response plus its Usage.

Waiting for a retry is an ``await`` inside this request's own task, so it never blocks
other requests or other deployments.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Awaitable, Callable, Mapping

from pipeline import errors
from pipeline.catalog import Catalog
from pipeline.deployments import Deployments
from pipeline.errors import GatewayError
from pipeline.events.models import (ERROR, OK, AttemptRecord, ErrorInfo, Response, RouteDecision,
                                    RoutedRequest, Usage)
from pipeline.intake import now_ms
from pipeline.outputs import Out
from pipeline.providers.base import Adapter, Completion
from pipeline.resilience.backoff import Backoff
from pipeline.settings import Topics

log = logging.getLogger("llmpipe.dispatch")

# Errors another deployment cannot fix: the request itself is wrong.
NO_FAILOVER = frozenset({errors.INVALID_REQUEST})


class Dispatcher:
    def __init__(self, catalog: Catalog, deployments: Deployments, adapters: Mapping[str, Adapter],
                 topics: Topics, backoff: Backoff, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] | None = None,
                 clock: Callable[[], int] = now_ms):
        self.catalog, self.deployments, self.adapters = catalog, deployments, adapters
        self.topics, self.backoff, self.clock = topics, backoff, clock
        self.rng = rng or random.Random()
        self.sleep = sleep or asyncio.sleep
        self.max_attempts = deployments.calls.max_attempts

    async def handle(self, routed: RoutedRequest) -> list[Out]:
        deployment_id = routed.route.deployment
        adapter = self.adapters.get(deployment_id)
        provider_ms = 0
        attempts = 0
        if adapter is None:
            failure = GatewayError(f"deployment {deployment_id} is not configured on this worker",
                                   errors.PROVIDER_ERROR)
        else:
            failure = None
            while attempts < self.max_attempts:
                attempts += 1
                try:
                    completion = await adapter.complete(routed)
                except GatewayError as exc:
                    failure = exc
                    provider_ms += exc.elapsed_ms
                    log.info("provider_call_failed request_id=%s deployment=%s attempt=%d code=%s",
                             routed.request.request_id, deployment_id, attempts, exc.code)
                    if not exc.retryable or attempts >= self.max_attempts:
                        break
                    await self.sleep(self.backoff.delay(attempts - 1, self.rng, exc.retry_after_s))
                    continue
                return self._succeeded(routed, completion, attempts, provider_ms + completion.provider_ms)
        assert failure is not None
        return self._failed(routed, failure, attempts)

    # --- outcomes --------------------------------------------------------------------

    def _succeeded(self, routed: RoutedRequest, c: Completion, attempts: int, provider_ms: int) -> list[Out]:
        r, route = routed.request, routed.route
        at = self.clock()
        cost = self.catalog.cost_nanos(route.model, c.prompt_tokens, c.completion_tokens, c.cached_tokens)
        baseline = self.catalog.cost_nanos(routed.baseline_model or self.catalog.baseline_model,
                                           c.prompt_tokens,
                                           c.completion_tokens, c.cached_tokens)
        total_attempts = attempts + sum(t.attempts for t in routed.tried)
        created = r.created_at_ms or routed.received_at_ms
        response = Response(
            request_id=r.request_id, tenant=r.tenant, status=OK, completed_at_ms=at,
            content=c.content, finish_reason=c.finish_reason, model=route.model,
            deployment=route.deployment, prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens, cached_tokens=c.cached_tokens, cost_nanos=cost,
            attempts=total_attempts, tried=[t.deployment for t in routed.tried] + [route.deployment],
            latency_ms=max(0, at - created), metadata=r.metadata)
        usage = self._usage(routed, at, OK, "", total_attempts, provider_ms)
        usage = usage.replace(prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                              cached_tokens=c.cached_tokens, cost_nanos=cost,
                              baseline_cost_nanos=baseline, price_version=self.catalog.price_version,
                              served_model=route.model, provider=route.provider,
                              deployment=route.deployment, region=route.region)
        return [Out(routed.reply_topic, r.request_id, response, routed.reply_format),
                self._usage_out(routed, usage)]

    def _failed(self, routed: RoutedRequest, failure: GatewayError, attempts: int) -> list[Out]:
        route = routed.route
        tried = routed.tried + [AttemptRecord(route.deployment, failure.code, attempts)]
        remaining = [d for d in routed.fallbacks if d in self.deployments.by_id]
        if remaining and failure.code not in NO_FAILOVER:
            nxt = self.deployments.by_id[remaining[0]]
            decision = RouteDecision(
                deployment=nxt.id, model=nxt.model, provider=nxt.provider, rule="failover",
                region=nxt.region, task_class=route.task_class, complexity=route.complexity,
                candidates=route.candidates,
                reason=f"failover from {route.deployment} after {failure.code}")
            max_tokens = min(routed.max_tokens, self.catalog.models[nxt.model].max_output_tokens)
            rerouted = routed.replace(route=decision, fallbacks=remaining[1:], tried=tried,
                                      max_tokens=max_tokens, routed_at_ms=self.clock())
            return [Out(self.topics.routed, nxt.id, rerouted)]
        r = routed.request
        at = self.clock()
        names = ", ".join(f"{t.deployment} ({t.error_code})" for t in tried)
        message = f"{failure.message}; tried {names}"
        total_attempts = sum(t.attempts for t in tried)
        created = r.created_at_ms or routed.received_at_ms
        response = Response(
            request_id=r.request_id, tenant=r.tenant, status=ERROR, completed_at_ms=at,
            error=ErrorInfo(failure.code, message, failure.retryable), model=route.model,
            deployment=route.deployment, attempts=total_attempts,
            tried=[t.deployment for t in tried], latency_ms=max(0, at - created),
            metadata=r.metadata)
        usage = self._usage(routed, at, ERROR, failure.code, total_attempts, failure.elapsed_ms).replace(
            deployment=route.deployment, provider=route.provider, region=route.region)
        return [Out(routed.reply_topic, r.request_id, response, routed.reply_format),
                self._usage_out(routed, usage)]

    def _usage_out(self, routed: RoutedRequest, usage: Usage) -> Out:
        # Settle the budget reservation on the partition that made it (see RoutedRequest).
        partition = routed.tenant_partition if routed.tenant_partition >= 0 else None
        return Out(self.topics.usage, usage.tenant, usage, partition=partition)

    def _first_model(self, routed: RoutedRequest) -> str:
        if not routed.tried:
            return routed.route.model
        first = self.deployments.by_id.get(routed.tried[0].deployment)
        return first.model if first else ""

    def _usage(self, routed: RoutedRequest, at: int, status: str, code: str, attempts: int,
               provider_ms: int) -> Usage:
        r, route = routed.request, routed.route
        created = r.created_at_ms or routed.received_at_ms
        first_rule = route.rule if not routed.tried else "failover"
        queue_ms = max(0, routed.received_at_ms - created)
        return Usage(
            request_id=r.request_id, tenant=r.tenant, created_at_ms=created, completed_at_ms=at,
            status=status, error_code=code, team=r.team or "", end_user=r.end_user or "",
            routed_at_ms=routed.routed_at_ms, requested_model=r.model or "",
            routed_model=self._first_model(routed), route_rule=first_rule,
            task_class=route.task_class, attempts=attempts, fallbacks=len(routed.tried),
            queue_ms=queue_ms, provider_ms=provider_ms,
            pipeline_ms=max(0, at - created - queue_ms - provider_ms), canary=routed.canary)

