"""How a request ends: its one Response plus its Usage, priced from the catalog, built here
for every path that ends one — a live answer (dispatch), a Batch API result, intake refusing
it, dispatch running out of deployments, and an output the broker can never take
(pipeline/outputs/rescue.py). A request is billed once and its caller hears once, whichever
path ended it."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from pipeline.catalog import Catalog
from pipeline.events.models import (ERROR, OK, AttemptRecord, ErrorInfo, Event, Request,
                                    Response, RoutedRequest, Usage)
from pipeline.outputs.out import AVRO, Out
from pipeline.cache.store import fill_for
from pipeline.providers.base import Completion
from pipeline.settings import Topics

# (job id, items in the job) of a Batch API job whose result ends the request.
BatchJobRef = tuple[str, int]

# AttemptRecord codes of a hedge's losing call: a parallel call, not a hop along the chain.
HEDGE_CODES = frozenset({"hedge_lost", "hedge_cancelled"})


def created_at(request: Request, received_at_ms: int) -> int:
    """When the request was made, as billed: the caller's ``created_at_ms`` (intake keeps it
    within a window of its own clock), else when the gateway received it."""
    return request.created_at_ms or received_at_ms


def refused(r: Request, code: str, message: str, *, at: int, received: int, fmt: str = AVRO,
            topics: Topics, reply_topic: str | None = None,
            usage_partition: int | None = None, lookup_cost: int = 0) -> list[Out]:
    """A request intake will not route: its error Response and a Usage row (errors are
    counted). ``reply_topic``: where the caller listens (the default responses topic when
    the request's own is not acceptable). ``lookup_cost``: what was paid for it before it
    was refused (a provider embedding for its cache lookup): billed, as on a hit."""
    created = created_at(r, received)
    response = Response(
        request_id=r.request_id, tenant=r.tenant, status=ERROR, completed_at_ms=at,
        error=ErrorInfo(code, message, retryable=False), latency_ms=max(0, at - created),
        cost_nanos=lookup_cost, metadata=r.metadata)
    usage = Usage(
        request_id=r.request_id, tenant=r.tenant, created_at_ms=created, completed_at_ms=at,
        status=ERROR, error_code=code, team=r.team or "", end_user=r.end_user or "",
        requested_model=r.model or "", queue_ms=max(0, received - created),
        pipeline_ms=max(0, at - received), cost_nanos=lookup_cost,
        cache_cost_nanos=lookup_cost)
    return [Out(reply_topic or topics.responses, r.request_id, response, fmt),
            Out(topics.usage, r.tenant, usage, partition=usage_partition)]


def routed_usage(routed: RoutedRequest, at: int, status: str, code: str, attempts: int,
                 provider_ms: int, routed_model: str) -> Usage:
    """The Usage of a routed request that ended at ``at``; the caller adds tokens and cost.
    ``routed_model``: the model routing chose first (before any failover)."""
    r, route = routed.request, routed.route
    created = created_at(r, routed.received_at_ms)
    moved = [t for t in routed.tried if t.error_code not in HEDGE_CODES]
    queue_ms = max(0, routed.received_at_ms - created)
    return Usage(
        request_id=r.request_id, tenant=r.tenant, created_at_ms=created, completed_at_ms=at,
        status=status, error_code=code, team=r.team or "", end_user=r.end_user or "",
        routed_at_ms=routed.routed_at_ms, requested_model=r.model or "",
        routed_model=routed_model, route_rule=route.rule if not moved else "failover",
        task_class=route.task_class, attempts=attempts, fallbacks=len(moved),
        queue_ms=queue_ms, provider_ms=provider_ms,
        pipeline_ms=max(0, at - created - queue_ms - provider_ms), canary=routed.canary,
        context_tokens_before=routed.context_tokens_before,
        context_tokens_after=routed.context_tokens_after)


def usage_out(routed: RoutedRequest, usage: Usage, topics: Topics) -> Out:
    """Usage goes to the partition that reserved the budget (see RoutedRequest)."""
    return tenant_out(routed, topics.usage, usage)


def tenant_out(routed: RoutedRequest, topic: str, event: Event) -> Out:
    """``event`` keyed by the tenant, on the partition of llm.requests that owns the
    tenant's state (budget, cache) — the key decides when that is not known."""
    partition = routed.tenant_partition if routed.tenant_partition >= 0 else None
    return Out(topic, routed.request.tenant, event, partition=partition)


def first_model(routed: RoutedRequest, model_of: Callable[[str], str | None]) -> str:
    """The model routing chose first (before any failover); ``model_of`` maps a deployment
    id to its model."""
    if not routed.tried:
        return routed.route.model
    return model_of(routed.tried[0].deployment) or ""


def answered(routed: RoutedRequest, c: Completion, *, catalog: Catalog, at: int, attempts: int,
             provider_ms: int, routed_model: str, topics: Topics, extra_cost_nanos: int = 0,
             batch_job: BatchJobRef | None = None, first_token_at_ms: int = 0) -> list[Out]:
    """A routed request answered: Response + Usage at the catalog's price for the served
    model — the Batch API price for an item of ``batch_job`` — plus ``extra_cost_nanos``
    (a hedge's losing call, billed with the request) and what its cache lookup cost
    (``routed.cache_cost_nanos``: a provider embedding). The baseline is always the live price
    of the tenant's baseline model. ``attempts``: calls made on the last deployment."""
    r, route = routed.request, routed.route
    cost = catalog.cost_nanos(route.model, c.prompt_tokens, c.completion_tokens, c.cached_tokens,
                              batch=batch_job is not None) + extra_cost_nanos \
        + routed.cache_cost_nanos
    baseline = catalog.cost_nanos(routed.baseline_model or catalog.baseline_model,
                                  c.prompt_tokens, c.completion_tokens, c.cached_tokens)
    total_attempts = attempts + sum(t.attempts for t in routed.tried)
    response = Response(
        request_id=r.request_id, tenant=r.tenant, status=OK, completed_at_ms=at,
        content=c.content, finish_reason=c.finish_reason, model=route.model,
        deployment=route.deployment, prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens, cached_tokens=c.cached_tokens, cost_nanos=cost,
        attempts=total_attempts, tried=[t.deployment for t in routed.tried] + [route.deployment],
        latency_ms=max(0, at - created_at(r, routed.received_at_ms)), metadata=r.metadata,
        tool_calls=list(c.tool_calls), refusal=c.refusal, logprobs=c.logprobs,
        more_choices=list(c.more_choices), embeddings=[list(v) for v in c.embeddings],
        context=routed.context_note)
    usage = routed_usage(routed, at, OK, "", total_attempts, provider_ms, routed_model).replace(
        prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
        cached_tokens=c.cached_tokens, cost_nanos=cost, baseline_cost_nanos=baseline,
        cache_cost_nanos=routed.cache_cost_nanos,
        context_saved_nanos=_context_saved(routed, catalog),
        price_version=catalog.price_version, served_model=route.model, provider=route.provider,
        deployment=route.deployment, region=route.region, first_token_at_ms=first_token_at_ms,
        **_batch_fields(batch_job))
    outs = [Out(routed.reply_topic, r.request_id, response, routed.reply_format),
            usage_out(routed, usage, topics)]
    fill = fill_for(routed, response, at)
    if fill is not None:            # kept on the tenant's partition, where intake looks up
        outs.append(tenant_out(routed, topics.cache_fills, fill))
    return outs


def routed_failed(routed: RoutedRequest, code: str, message: str, retryable: bool, *, at: int,
                  tried: list[AttemptRecord], provider_ms: int, routed_model: str,
                  topics: Topics, reply_topic: str | None = None,
                  batch_job: BatchJobRef | None = None,
                  retry_after_s: float | None = None) -> list[Out]:
    """A routed request that ends in an error: ``tried`` names every deployment it went to;
    ``retry_after_s``: what the last provider said about trying again, if anything."""
    r, route = routed.request, routed.route
    attempts = sum(t.attempts for t in tried)
    response = Response(
        request_id=r.request_id, tenant=r.tenant, status=ERROR, completed_at_ms=at,
        error=ErrorInfo(code, message, retryable, None if retry_after_s is None
                        else int(retry_after_s * 1000)), model=route.model,
        deployment=route.deployment, attempts=attempts, tried=[t.deployment for t in tried],
        latency_ms=max(0, at - created_at(r, routed.received_at_ms)), metadata=r.metadata,
        cost_nanos=routed.cache_cost_nanos)       # the lookup was paid for even so
    usage = routed_usage(routed, at, ERROR, code, attempts, provider_ms, routed_model).replace(
        deployment=route.deployment, provider=route.provider, region=route.region,
        cost_nanos=routed.cache_cost_nanos, cache_cost_nanos=routed.cache_cost_nanos,
        **_batch_fields(batch_job))
    return [Out(reply_topic or routed.reply_topic, r.request_id, response, routed.reply_format),
            usage_out(routed, usage, topics)]


def cut_short(routed: RoutedRequest, code: str, message: str, *, content: str,
              completion_tokens: int, first_token_at_ms: int, catalog: Catalog, at: int,
              tried: list[AttemptRecord], provider_ms: int, routed_model: str,
              topics: Topics) -> list[Out]:
    """A provider call that ended early after it had started — a stream broken after its
    first chunk, a call stopped because its caller went away: an error Response holding
    the text the caller was sent (``content``, maybe empty), billed for what the provider
    charges — the estimated prompt and ``completion_tokens`` (estimated from the delivered
    text: such a call reports no usage) at the served model's price."""
    route = routed.route
    prompt = routed.estimated_prompt_tokens
    cost = catalog.cost_nanos(route.model, prompt, completion_tokens) + routed.cache_cost_nanos
    baseline = catalog.cost_nanos(routed.baseline_model or catalog.baseline_model, prompt,
                                  completion_tokens)
    reply, usage = routed_failed(routed, code, message, False, at=at, tried=tried,
                                 provider_ms=provider_ms, routed_model=routed_model,
                                 topics=topics)
    billed = dict(prompt_tokens=prompt, completion_tokens=completion_tokens, cost_nanos=cost)
    return [replace(reply, event=reply.event.replace(content=content, **billed)),
            replace(usage, event=usage.event.replace(
                baseline_cost_nanos=baseline, price_version=catalog.price_version,
                served_model=route.model, first_token_at_ms=first_token_at_ms, **billed))]


def _context_saved(routed: RoutedRequest, catalog: Catalog) -> int:
    """What the prompt tokens context management removed would have cost at the served
    model's input price (estimates: the provider never saw them)."""
    removed = routed.context_tokens_before - routed.context_tokens_after
    return catalog.cost_nanos(routed.route.model, removed, 0) if removed > 0 else 0


def _batch_fields(batch_job: BatchJobRef | None) -> dict:
    return {} if batch_job is None else {"batch_id": batch_job[0], "batch_size": batch_job[1]}
