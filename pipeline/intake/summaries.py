"""History summaries for the context window (pipeline/context/, issue 15): when a tenant's
context policy says ``summarise``, the turns the window drops are replaced by a summary the
cheapest capable chat model writes.

- **Which model.** The cheapest chat model by list price (input + output per MTok) that
  has a deployment, is allowed by the tenant's policy and whose context window holds the
  transcript, ties by name; its first deployment is called (``Summariser.model_for``).
- **When.** Before the intake step, like the cache's provider embedding
  (``Intake.prepare``): a provider call must not run inside the synchronous step. The
  summary waits at most ``TIMEOUT_S``.
- **Billed.** Each call is its own usage row, billed to the tenant: request id
  ``summary_id(id)`` (a UUID derived from the request's, the same on a redelivery, so the
  ledger keeps one), route rule ``context-summary``, ``for_request_id`` = the request it
  served.
- **Cached** by tenant and conversation prefix (``prefix_key`` of the dropped messages) in
  a bounded memo of the intake worker, so a conversation's history is summarised once per
  worker; a restart or a rebalance may pay for one summary again.
- **Guarded.** Each deployment called for summaries has a guard of its own in this
  worker (breaker, limits and health from its ``resilience:`` settings, as dispatch's):
  a deployment whose breaker is open, or whose limits are full, is passed over at once
  for the next cheapest capable model, and a failed call moves on to it too, up to
  ``MAX_CALLS`` calls within ``TIMEOUT_S``. So a provider that is down costs a few
  summaries their timeout, then none: it does not hold every summarising request (and
  the intake slot it sits in) for the whole timeout. These guards are not dispatch's:
  summary calls do not draw on the rate limits dispatch keeps for the same deployment.
- **Failed** (no capable model, every candidate refused or failed, the timeout): the
  request keeps its whole history — the window is not applied — so nothing the caller
  sent is lost. The decision says so."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from pipeline import errors
from pipeline.catalog import CHAT, Catalog
from pipeline.clock import MonotonicClock, now_ms
from pipeline.context import summary_prompt
from pipeline.events.models import (ChatMessage, GenerationParams, Request, RouteDecision,
                                    RoutedRequest, TenantPolicy, Usage)
from pipeline.outputs.outcomes import answered
from pipeline.providers.base import Adapter, Completion
from pipeline.providers.deployments import Deployment, Deployments
from pipeline.resilience.guard import Guards, Refusal
from pipeline.routing.tokens import estimate_messages_tokens
from pipeline.settings import Topics

log = logging.getLogger("llmpipe.context")

MEMO_SIZE = 10_000
TIMEOUT_S = 20.0            # for the whole summary, every call it makes included
MAX_CALLS = 2               # calls made for one summary (refusals by a guard cost none)
MAX_SUMMARY_TOKENS = 400
SUMMARY_RULE = "context-summary"


def summary_id(request_id: str) -> str:
    """The request id of the summary call made for ``request_id`` (ids are UUIDs)."""
    try:
        namespace = uuid.UUID(request_id)
    except ValueError:
        namespace = uuid.uuid5(uuid.NAMESPACE_URL, request_id)
    return str(uuid.uuid5(namespace, SUMMARY_RULE))


@dataclass(frozen=True)
class Summary:
    text: str
    usage: Usage | None = None          # the call's own row; None when taken from the memo


class Summariser:
    """Makes and remembers summaries; ``adapter_for(deployment)`` gives the adapter that
    calls a deployment (built once per deployment by the caller)."""

    def __init__(self, catalog: Catalog, deployments: Deployments,
                 adapter_for: Callable[[Deployment], Adapter], memo_size: int = MEMO_SIZE,
                 timeout_s: float = TIMEOUT_S, clock: Callable[[], int] = now_ms) -> None:
        self.catalog, self.deployments, self.adapter_for = catalog, deployments, adapter_for
        self.memo: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.memo_size, self.timeout_s, self.clock = memo_size, timeout_s, clock
        self.guards = Guards(lambda deployment: deployments.by_id[deployment].guard,
                             MonotonicClock())
        self.calls = self.failures = 0

    def models_for(self, prompt_tokens: int, policy: TenantPolicy | None) -> list[str]:
        """The chat models that may and can summarise ``prompt_tokens`` of history,
        cheapest first."""
        allowed = set(policy.allowed_models) if policy and policy.allowed_models else None
        denied = set(policy.denied_models) if policy else set()
        fits = [m for m in self.catalog.models.values()
                if m.kind == CHAT and self.deployments.for_model(m.name)
                and (allowed is None or m.name in allowed) and m.name not in denied
                and m.context_window >= prompt_tokens + MAX_SUMMARY_TOKENS]
        fits.sort(key=lambda m: (m.input_per_mtok + m.output_per_mtok, m.name))
        return [m.name for m in fits]

    def model_for(self, prompt_tokens: int, policy: TenantPolicy | None) -> str | None:
        """The cheapest of :meth:`models_for` (None: none)."""
        return next(iter(self.models_for(prompt_tokens, policy)), None)

    async def summary(self, request: Request, dropped: list[ChatMessage], key: str,
                      policy: TenantPolicy | None) -> Summary | None:
        """The summary of ``dropped`` for ``request`` (None: could not be made)."""
        memo_key = (request.tenant, key)
        text = self.memo.get(memo_key)
        if text is not None:
            self.memo.move_to_end(memo_key)
            return Summary(text)
        prompt = summary_prompt(dropped)
        prompt_tokens = estimate_messages_tokens(prompt)
        models = self.models_for(prompt_tokens, policy)
        why = "no capable model"
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        calls = 0
        for model in models:
            remaining = deadline - asyncio.get_running_loop().time()
            if calls >= MAX_CALLS or remaining <= 0:
                break
            deployment = self.deployments.for_model(model)[0]
            guard = self.guards.get(deployment.id)
            permit = await guard.acquire(prompt_tokens + MAX_SUMMARY_TOKENS, 0.0, asyncio.sleep)
            if isinstance(permit, Refusal):
                why = f"{model}: {permit.message}"
                continue
            calls += 1
            routed = self._routed(request, prompt, model, deployment, policy)
            self.calls += 1
            try:
                done = await asyncio.wait_for(self.adapter_for(deployment).complete(routed),
                                              remaining)
            except asyncio.CancelledError:
                permit.abandoned()
                raise
            except Exception as exc:    # any failure: the next model, or the history kept
                permit.failed(_failure_code(exc))
                why = f"{model}: {type(exc).__name__}: {exc}"
                continue
            permit.succeeded(done.prompt_tokens + done.completion_tokens)
            if done.content.strip():
                return self._kept(request, memo_key, routed, model, done)
            why = f"{model}: an empty summary"
        self.failures += 1
        log.warning("context_summary_failed request_id=%s tenant=%s error=%s",
                    request.request_id, request.tenant, why[:200])
        return None

    def _routed(self, request: Request, prompt: list[ChatMessage], model: str,
                deployment: Deployment, policy: TenantPolicy | None) -> RoutedRequest:
        call = Request(summary_id(request.request_id), request.tenant, prompt, team=request.team,
                       end_user=request.end_user, model=model,
                       params=GenerationParams(max_tokens=MAX_SUMMARY_TOKENS, temperature=0.0))
        started = self.clock()
        return RoutedRequest(call, RouteDecision(deployment.id, model, deployment.provider,
                                                 SUMMARY_RULE, region=deployment.region,
                                                 task_class="summary"),
                             max_tokens=MAX_SUMMARY_TOKENS, reply_topic="",
                             received_at_ms=started, routed_at_ms=started,
                             baseline_model=(policy.baseline_model or "") if policy else "")

    def _kept(self, request: Request, memo_key: tuple[str, str], routed: RoutedRequest,
              model: str, done: Completion) -> Summary:
        self.memo[memo_key] = done.content
        while len(self.memo) > self.memo_size:
            self.memo.popitem(last=False)
        # priced and stamped as any answered request is (outcomes.answered): its own row
        _, billed, *_ = answered(routed, done, catalog=self.catalog, at=self.clock(),
                                 attempts=1, provider_ms=done.provider_ms,
                                 routed_model=model, topics=Topics())
        usage = billed.event.replace(for_request_id=request.request_id)
        return Summary(done.content, usage)


def _failure_code(exc: Exception) -> str:
    """What a failed summary call counts as for its deployment's breaker."""
    if isinstance(exc, errors.GatewayError):
        return exc.code
    return errors.TIMEOUT if isinstance(exc, asyncio.TimeoutError) else errors.PROVIDER_ERROR
