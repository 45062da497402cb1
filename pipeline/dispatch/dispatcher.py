"""Dispatch: call the routed deployment behind its guard (circuit breaker, RPM/TPM and
concurrency limits, health window), retry what is retryable within the request's deadline,
fail over along the fallback chain, and end every request in exactly one terminal Response
plus its Usage. Breaker transitions become Alert events, drained in order by the agent's tick.

Waiting — for a rate-limit token, a concurrency slot or a retry's backoff — is an ``await``
inside this request's own task, so it never blocks other requests or other deployments.
Guards live in this worker's memory (see pipeline/resilience/guard.py): llm.routed is keyed
by deployment id, so the worker owning a deployment's partition sees all of its traffic.
A failover or a demotion is a new RoutedRequest keyed by the next deployment, so that
deployment's own worker, with its own guard, makes the call.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

from pipeline import errors
from pipeline.metrics import HEDGES
from pipeline.catalog import Catalog
from pipeline.clock import Clock, MonotonicClock, now_ms
from pipeline.providers.deployments import Deployments
from pipeline.errors import GatewayError
from pipeline.events.models import AttemptRecord, RouteDecision, RoutedRequest
from pipeline.outputs import Out, outcomes
from pipeline.providers.base import Adapter, Completion, provider_call
from pipeline.resilience.guard import DeploymentGuard, Guards, Refusal, breaker_alert
from pipeline.dispatch.stream import ChunkStream, Publish
from pipeline.resilience.retry import DEADLINE, RetryPolicy
from pipeline.routing.tokens import estimate_text_tokens
from pipeline.settings import Topics

log = logging.getLogger("llmpipe.dispatch")

# Errors another deployment cannot fix: the request itself is wrong.
NO_FAILOVER = frozenset({errors.INVALID_REQUEST, errors.CANCELLED})
CANCELS_REMEMBERED = 10_000     # cancels of requests not (yet) seen, oldest forgotten first
# AttemptRecord code of a deployment passed over, without a call, because it is degraded.
DEGRADED = "degraded"
FAILOVER_RULE, DEMOTED_RULE = "failover", "demoted"
ALERT_KEY = "*"          # llm.alerts is keyed by tenant; breaker alerts are global


@dataclass
class _Hop:
    """What happened on one deployment: an answer, or the failure that ended its attempts."""
    completion: Completion | None
    failure: GatewayError | None
    attempts: int
    provider_ms: int
    deadline_cut: bool = False     # retries stopped because the next one would miss the deadline


class Dispatcher:
    def __init__(self, catalog: Catalog, deployments: Deployments, adapters: Mapping[str, Adapter],
                 topics: Topics, retry: RetryPolicy, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] | None = None,
                 clock: Callable[[], int] = now_ms, monotonic: Clock | None = None,
                 publish: Publish | None = None):
        """``clock`` is wall time in epoch ms (event timestamps, the request deadline, which
        counts from ``received_at_ms``); ``monotonic`` drives breakers, buckets and health
        windows; ``sleep`` is every wait. Tests pass a manual clock and a sleep that moves it.
        ``publish``: how a streamed request's chunks reach the broker (the agent's emitter);
        without it every call is made unstreamed."""
        self.catalog, self.deployments, self.adapters = catalog, deployments, adapters
        self.topics, self.retry, self.clock = topics, retry, clock
        self.publish = publish
        self.rng = rng or random.Random()
        self.sleep = sleep or asyncio.sleep
        self.calls = deployments.calls
        self.max_attempts = deployments.calls.max_attempts
        self.guards = Guards(lambda dep: deployments.by_id[dep].guard,
                             monotonic or MonotonicClock())
        # (tenant, request id) -> when its caller gave up; and the provider calls in flight
        self._cancelled: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._calls: dict[tuple[str, str], set[asyncio.Future]] = {}

    async def handle(self, routed: RoutedRequest) -> list[Out]:
        """The request's outputs: terminal Response + Usage, or a re-route. Breaker
        transitions are collected by :meth:`alerts`."""
        return await self._dispatch(routed)

    def alerts(self) -> list[Out]:
        """Alerts for breaker transitions not yet reported, each exactly once, in the order
        they happened. One caller only (the agent's alert tick): requests finish in any
        order, so alerts published with their outputs raced each other (open after closed)."""
        outs = []
        mono_now, wall_now = self.guards.clock.now(), self.clock()
        for guard, t in self.guards.drain_transitions():
            dep = self.deployments.by_id.get(t.deployment)
            labels = {"model": dep.model, "provider": dep.provider, "region": dep.region} if dep else {}
            at_ms = wall_now - int(round((mono_now - t.at) * 1000))
            alert = breaker_alert(guard, t, at_ms, uuid.UUID(int=self.rng.getrandbits(128), version=4),
                                  labels)
            log.warning("breaker_transition deployment=%s from=%s to=%s reason=%s",
                        t.deployment, t.from_state.value, t.to_state.value, t.reason)
            outs.append(Out(self.topics.alerts, ALERT_KEY, alert))
        return outs

    def cancel(self, tenant: str, request_id: str) -> bool:
        """The request's caller went away: stop its provider calls now, or — not here yet —
        end it without a call when it comes (remembered for the last ``CANCELS_REMEMBERED``
        cancels). True if a call was stopped."""
        key = (tenant, request_id)
        self._cancelled[key] = self.clock()
        self._cancelled.move_to_end(key)
        while len(self._cancelled) > CANCELS_REMEMBERED:
            self._cancelled.popitem(last=False)
        calls = [c for c in self._calls.get(key, ()) if not c.done()]
        for call in calls:
            call.cancel()
        return bool(calls)

    def health(self) -> dict[str, Any]:
        """Per-deployment guard state for the worker's health view."""
        return {"deployments": self.guards.snapshot()}

    def retain(self, deployments: set[str]) -> list[str]:
        """Keep only the guards of ``deployments`` (those whose partitions this worker still
        owns); the rest start fresh should their partition come back."""
        return self.guards.retain(deployments)

    # --- one deployment -----------------------------------------------------------------

    async def _dispatch(self, routed: RoutedRequest) -> list[Out]:
        dep_id = routed.route.deployment
        adapter = self.adapters.get(dep_id)
        if adapter is None or dep_id not in self.deployments.by_id:
            failure = GatewayError(f"deployment {dep_id} is not configured on this worker",
                                   errors.PROVIDER_ERROR)
            return self._failed(routed, _Hop(None, failure, 0, 0))
        if self._remaining_s(routed) <= 0:
            failure = GatewayError(f"{dep_id}: not called, the request's deadline had passed",
                                   errors.TIMEOUT)
            return self._failed(routed, _Hop(None, failure, 0, 0, deadline_cut=True))
        if (routed.request.tenant, routed.request.request_id) in self._cancelled:
            failure = GatewayError("the caller went away before the request was dispatched; "
                                   "no provider call was made", errors.CANCELLED)
            return self._failed(routed, _Hop(None, failure, 0, 0))
        guard = self.guards.get(dep_id)
        demoted = self._demote(routed, guard)
        if demoted is not None:
            return [demoted]
        if routed.request.stream and self.publish is not None:
            return await self._streamed(routed, guard, adapter)
        hedge = self._hedge_target(routed)
        if hedge is not None:
            return await self._hedged(routed, guard, adapter, hedge)
        hop = await self._attempts(routed, guard, adapter)
        if hop.completion is not None:
            return self._succeeded(routed, hop.completion, hop.attempts, hop.provider_ms)
        return self._failed(routed, hop)

    # --- streaming -----------------------------------------------------------------------

    async def _streamed(self, routed: RoutedRequest, guard: DeploymentGuard,
                        adapter: Adapter) -> list[Out]:
        """A call in streaming mode, its deltas published as Chunks while it runs. Until the
        first delta a failure is retried and failed over as usual (the caller sees nothing
        of it); after it, the request ends in an error that keeps the delivered text and
        bills it. Never hedged: two streams cannot both reach one caller."""
        assert self.publish is not None
        stream = ChunkStream(routed, self.publish, self.topics, self.clock)
        try:
            hop = await self._attempts(routed, guard, adapter, stream)
        finally:
            await stream.finish()
        if hop.completion is not None:
            return self._succeeded(routed, hop.completion, hop.attempts, hop.provider_ms,
                                   first_token_at_ms=stream.first_at_ms)
        if not stream.started:
            return self._failed(routed, hop)
        failure = hop.failure
        assert failure is not None
        tried = routed.tried + [AttemptRecord(routed.route.deployment, failure.code, hop.attempts)]
        log.info("stream_broken request_id=%s deployment=%s chunks=%d code=%s",
                 routed.request.request_id, routed.route.deployment, stream.chunks, failure.code)
        what = (f"the caller went away after {stream.chunks} chunks"
                if failure.code == errors.CANCELLED else
                f"the answer's stream broke after {stream.chunks} chunks ({failure.message})")
        return self._billed_failure(routed, failure, tried, hop, stream.delivered,
                                    f"{what}; the text delivered so far is billed and was not "
                                    "retried", stream.first_at_ms)

    def _billed_failure(self, routed: RoutedRequest, failure: GatewayError,
                        tried: list[AttemptRecord], hop: _Hop, delivered: str, message: str,
                        first_token_at_ms: int = 0) -> list[Out]:
        """A request ended after a provider call had started (a broken or cancelled stream,
        a stopped call): billed for what the provider charges — the estimated prompt and
        the text delivered."""
        return outcomes.cut_short(
            routed, failure.code, message, content=delivered,
            completion_tokens=estimate_text_tokens(delivered),
            first_token_at_ms=first_token_at_ms, catalog=self.catalog, at=self.clock(),
            tried=tried, provider_ms=hop.provider_ms, routed_model=self._first_model(routed),
            topics=self.topics)

    # --- hedging -------------------------------------------------------------------------

    def _hedge_target(self, routed: RoutedRequest) -> str | None:
        """For latency-critical traffic (interactive, with max_latency_ms) on its first hop:
        the first fallback deployment that could take a parallel call, if hedging is on."""
        h = routed.request.hints
        if (self.calls.hedge_after_ms <= 0 or routed.tried or h.priority != "interactive"
                or h.max_latency_ms is None):
            return None
        for dep_id in routed.fallbacks:
            guard = self.guards.peek(dep_id)
            if dep_id in self.adapters and dep_id in self.deployments.by_id and \
                    (guard is None or guard.admits_calls()):
                return dep_id
        return None

    async def _hedged(self, routed: RoutedRequest, guard: DeploymentGuard, adapter: Adapter,
                      hedge_id: str) -> list[Out]:
        """Call the routed deployment; if it has not answered after ``hedge_after_ms``, call
        ``hedge_id`` too. The first answer wins and the other call is cancelled; both are
        billed — a cancelled call at its estimated prompt cost (what a provider charges at
        least for a started request), a call that also finished at its reported usage.
        The hedge deployment is called from this worker, under a local guard."""
        primary = asyncio.create_task(self._attempts(routed, guard, adapter))
        timer = asyncio.create_task(self.sleep(self.calls.hedge_after_ms / 1000))
        await asyncio.wait({primary, timer}, return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
        if primary.done():
            hop = primary.result()
            if hop.completion is not None:
                return self._succeeded(routed, hop.completion, hop.attempts, hop.provider_ms)
            return self._failed(routed, hop)
        nxt = self.deployments.by_id[hedge_id]
        hedged = routed.replace(route=RouteDecision(
            deployment=nxt.id, model=nxt.model, provider=nxt.provider, rule="hedge",
            region=nxt.region, task_class=routed.route.task_class,
            complexity=routed.route.complexity, candidates=routed.route.candidates,
            reason=f"hedge of {routed.route.deployment} after {self.calls.hedge_after_ms} ms"),
            max_tokens=min(routed.max_tokens, self.catalog.models[nxt.model].max_output_tokens))
        log.info("hedge_started request_id=%s deployment=%s hedge=%s", routed.request.request_id,
                 routed.route.deployment, hedge_id)
        HEDGES.labels(routed.route.deployment).inc()
        second = asyncio.create_task(self._attempts(hedged, self.guards.get(hedge_id),
                                                    self.adapters[hedge_id]))
        calls = {primary: routed, second: hedged}
        hops: dict[asyncio.Task, _Hop] = {}
        while len(hops) < 2:
            done, _ = await asyncio.wait(set(calls) - set(hops), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                hops[task] = task.result()
            winner = next((t for t in (primary, second) if t in hops and hops[t].completion), None)
            if winner is None:
                continue
            loser = second if winner is primary else primary
            if loser not in hops:
                loser.cancel()
                result = (await asyncio.gather(loser, return_exceptions=True))[0]
                if isinstance(result, _Hop):
                    hops[loser] = result
            lost = calls[loser]
            if loser in hops and hops[loser].completion is not None:
                c = hops[loser].completion
                extra = self.catalog.cost_nanos(lost.route.model, c.prompt_tokens,
                                                c.completion_tokens, c.cached_tokens)
                record = AttemptRecord(lost.route.deployment, "hedge_lost", hops[loser].attempts)  # noqa
            else:
                extra = self.catalog.cost_nanos(lost.route.model, lost.estimated_prompt_tokens, 0)
                attempts = hops[loser].attempts if loser in hops else 1
                record = AttemptRecord(lost.route.deployment, "hedge_cancelled", attempts)
            won = hops[winner]
            return self._succeeded(calls[winner].replace(tried=calls[winner].tried + [record]),
                                   won.completion, won.attempts, won.provider_ms,
                                   extra_cost_nanos=extra)
        # both failed: continue along the chain as if the hedge had been the next hop
        failed = hops[second]
        tried = routed.tried + [AttemptRecord(hedge_id, failed.failure.code, failed.attempts)]
        rest = [d for d in routed.fallbacks if d != hedge_id]
        return self._failed(routed.replace(tried=tried, fallbacks=rest), hops[primary])

    async def _attempts(self, routed: RoutedRequest, guard: DeploymentGuard, adapter: Adapter,
                        stream: ChunkStream | None = None) -> _Hop:
        """Call ``adapter`` until it answers, a non-retryable error, ``max_attempts`` for this
        deployment (counting earlier visits of the request), the deadline, or — streaming
        into ``stream`` — a failure after the first delta."""
        r, dep_id = routed.request, routed.route.deployment
        earlier = [t for t in routed.tried if t.deployment == dep_id]
        budget = self.max_attempts - sum(t.attempts for t in earlier)
        tokens = routed.estimated_prompt_tokens + routed.max_tokens
        max_wait_s = guard.settings.limits.max_wait_s
        attempts = provider_ms = 0
        failure: GatewayError | None = None
        if budget <= 0:
            code = earlier[-1].error_code if earlier else errors.PROVIDER_ERROR
            return _Hop(None, GatewayError(f"{dep_id}: all {self.max_attempts} attempts already "
                                           f"used on this request", code), 0, 0)
        while attempts < budget:
            remaining = self._remaining_s(routed)
            if remaining <= 0:
                return _Hop(None, failure or self._deadline_error(None), attempts, provider_ms, True)
            permit = await guard.acquire(tokens, min(max_wait_s, remaining), self.sleep)
            if isinstance(permit, Refusal):
                log.info("call_refused request_id=%s tenant=%s deployment=%s code=%s",
                         r.request_id, r.tenant, dep_id, permit.code)
                # after provider failures, the last one explains more than the refusal
                return _Hop(None, failure or GatewayError(permit.message, permit.code),
                            attempts, provider_ms)
            attempts += 1
            # a stream is cut by the deadline only (httpx's per-read timeout ends a stall)
            total_s = self.calls.total_timeout_s if stream is None else float("inf")
            timeout_s = max(0.001, min(total_s, self._remaining_s(routed)))
            key = (r.tenant, r.request_id)
            call = asyncio.ensure_future(
                provider_call(adapter, routed, None if stream is None else stream.on_delta))
            self._calls.setdefault(key, set()).add(call)
            started = self.clock()
            try:
                completion = await asyncio.wait_for(call, timeout_s)
            except GatewayError as exc:
                failure = exc
            except asyncio.TimeoutError:
                failure = GatewayError(f"{dep_id}: no complete answer within {timeout_s:.1f}s",
                                       errors.TIMEOUT)
                failure.elapsed_ms = int(timeout_s * 1000)
            except asyncio.CancelledError:
                permit.abandoned()
                current = asyncio.current_task()
                if key not in self._cancelled or (current is not None and current.cancelling()):
                    raise                   # this worker is stopping, not the caller
                log.info("call_cancelled request_id=%s tenant=%s deployment=%s", r.request_id,
                         r.tenant, dep_id)
                failure = GatewayError(f"{dep_id}: the caller went away; the call was stopped",
                                       errors.CANCELLED)
                return _Hop(None, failure, attempts, provider_ms + self.clock() - started)
            except BaseException:
                permit.abandoned()
                raise
            else:
                permit.succeeded(completion.prompt_tokens + completion.completion_tokens)
                return _Hop(completion, None, attempts, provider_ms + completion.provider_ms)
            finally:
                self._forget_call(key, call)
            permit.failed(failure.code)
            provider_ms += failure.elapsed_ms
            log.info("provider_call_failed request_id=%s tenant=%s deployment=%s attempt=%d code=%s",
                     r.request_id, r.tenant, dep_id, attempts, failure.code)
            if stream is not None and stream.started:
                break                       # the caller has text: no silent second attempt
            nxt = self.retry.after(attempts, self.rng, retryable=failure.retryable,
                                   retry_after_s=failure.retry_after_s, max_attempts=budget,
                                   remaining_s=self._remaining_s(routed))
            if nxt.stop == DEADLINE:
                log.info("retry_skipped_deadline request_id=%s deployment=%s delay_s=%.1f",
                         r.request_id, dep_id, nxt.delay_s)
                return _Hop(None, failure, attempts, provider_ms, deadline_cut=True)
            if not nxt.retry:
                break
            await self.sleep(nxt.delay_s)
        return _Hop(None, failure, attempts, provider_ms)

    def _forget_call(self, key: tuple[str, str], call: asyncio.Future) -> None:
        calls = self._calls.get(key)
        if calls is not None:
            calls.discard(call)
            if not calls:
                del self._calls[key]

    def _demote(self, routed: RoutedRequest, guard: DeploymentGuard) -> Out | None:
        """A re-route to a healthy deployment of the same model when this one is degraded
        (slow or failing but not open: an open breaker fails over on the normal path).
        At most once per request, so two degraded regions never bounce a request."""
        route, by_id = routed.route, self.deployments.by_id
        if any(t.error_code == DEGRADED for t in routed.tried):
            return None
        same = [d for d in routed.fallbacks if d in by_id and by_id[d].model == route.model]
        if not same or not guard.admits_calls() or not guard.degraded():
            return None
        healthy = [d for d in same if self._looks_healthy(d)]
        if not healthy:
            return None
        nxt = self._best_region(healthy, routed.fallbacks)
        rest = [d for d in routed.fallbacks if d != nxt]
        # still worth trying, after the other deployments of its model
        after = max((i for i, d in enumerate(rest) if d in same), default=-1)
        rest.insert(after + 1, route.deployment)
        snap = guard.health
        p95 = snap.p95() or 0.0
        reason = (f"{route.deployment} degraded (p95 {p95:.0f} ms, error rate "
                  f"{snap.error_rate():.1%}): moved to {nxt}")
        log.info("deployment_demoted request_id=%s deployment=%s to=%s", routed.request.request_id,
                 route.deployment, nxt)
        tried = routed.tried + [AttemptRecord(route.deployment, DEGRADED, 0)]
        return self._reroute(routed, nxt, rest, tried, DEMOTED_RULE, reason)

    # --- outcomes --------------------------------------------------------------------

    def _succeeded(self, routed: RoutedRequest, c: Completion, attempts: int, provider_ms: int,
                   extra_cost_nanos: int = 0, first_token_at_ms: int = 0) -> list[Out]:
        """``extra_cost_nanos``: a hedge's losing call, billed with the request."""
        return outcomes.answered(routed, c, catalog=self.catalog, at=self.clock(),
                                 attempts=attempts, provider_ms=provider_ms,
                                 routed_model=self._first_model(routed), topics=self.topics,
                                 extra_cost_nanos=extra_cost_nanos,
                                 first_token_at_ms=first_token_at_ms)

    def _failed(self, routed: RoutedRequest, hop: _Hop) -> list[Out]:
        """Fail over to the next deployment of the chain, or end the request with one
        terminal error naming every deployment tried and why."""
        route, by_id = routed.route, self.deployments.by_id
        failure = hop.failure
        assert failure is not None
        tried = routed.tried + [AttemptRecord(route.deployment, failure.code, hop.attempts)]
        if failure.code == errors.CANCELLED and hop.attempts:
            return self._billed_failure(routed, failure, tried, hop, "", f"{failure.message}; "
                                        "billed the estimated prompt a started call costs")
        if failure.code in NO_FAILOVER:
            return self._terminal(routed, failure, tried, hop.provider_ms)
        if self._remaining_s(routed) <= 0:
            return self._terminal(routed, self._deadline_error(failure), tried, hop.provider_ms)
        candidates = [d for d in routed.fallbacks if d in by_id]
        note = ""
        if failure.code == errors.CONTEXT_LENGTH_EXCEEDED:
            window = self.catalog.models[route.model].context_window
            larger = [d for d in candidates if self.catalog.models[by_id[d].model].context_window > window]
            skipped = [d for d in candidates if d not in larger]
            if skipped:
                note = f"; skipped {', '.join(skipped)} (context window not above {window:,})"
            candidates = larger
        if not candidates:
            if hop.deadline_cut:
                failure = self._deadline_error(failure)
            return self._terminal(routed, failure, tried, hop.provider_ms, note)
        nxt = self._next(candidates, route.model)
        rest = [d for d in candidates if d != nxt]
        reason = f"failover from {route.deployment} after {failure.code}{note}"
        return [self._reroute(routed, nxt, rest, tried, FAILOVER_RULE, reason)]

    def _terminal(self, routed: RoutedRequest, failure: GatewayError, tried: list[AttemptRecord],
                  provider_ms: int, note: str = "") -> list[Out]:
        names = ", ".join(f"{t.deployment} ({t.error_code})" for t in tried)
        return outcomes.routed_failed(
            routed, failure.code, f"{failure.message}; tried {names}{note}", failure.retryable,
            at=self.clock(), tried=tried, provider_ms=provider_ms,
            routed_model=self._first_model(routed), topics=self.topics,
            retry_after_s=failure.retry_after_s)

    def _reroute(self, routed: RoutedRequest, dep_id: str, fallbacks: list[str],
                 tried: list[AttemptRecord], rule: str, reason: str) -> Out:
        route = routed.route
        nxt = self.deployments.by_id[dep_id]
        decision = RouteDecision(
            deployment=nxt.id, model=nxt.model, provider=nxt.provider, rule=rule,
            region=nxt.region, task_class=route.task_class, complexity=route.complexity,
            candidates=route.candidates, reason=reason)
        max_tokens = min(routed.max_tokens, self.catalog.models[nxt.model].max_output_tokens)
        rerouted = routed.replace(route=decision, fallbacks=fallbacks, tried=tried,
                                  max_tokens=max_tokens, routed_at_ms=self.clock())
        return Out(self.topics.routed, nxt.id, rerouted)

    # --- choosing and timing -----------------------------------------------------------

    def _next(self, candidates: list[str], model: str) -> str:
        """The next deployment: a healthy one serving ``model`` if there is one (best region
        priority first), otherwise the chain's next entry."""
        by_id = self.deployments.by_id
        same = [d for d in candidates if by_id[d].model == model and self._looks_healthy(d)]
        return self._best_region(same, candidates) if same else candidates[0]

    def _best_region(self, ids: list[str], order: list[str]) -> str:
        by_id = self.deployments.by_id
        return min(ids, key=lambda d: (by_id[d].priority, order.index(d)))

    def _looks_healthy(self, dep_id: str) -> bool:
        """Healthy as far as this worker knows: a deployment it has never called is."""
        guard = self.guards.peek(dep_id)
        return guard is None or guard.healthy()

    def _remaining_s(self, routed: RoutedRequest) -> float:
        deadline_ms = routed.received_at_ms + self.calls.deadline_s * 1000
        return (deadline_ms - self.clock()) / 1000

    def _deadline_error(self, last: GatewayError | None) -> GatewayError:
        detail = f" (last error {last.code}: {last.message})" if last is not None else ""
        error = GatewayError(f"request deadline of {self.calls.deadline_s:g}s exceeded{detail}",
                             errors.TIMEOUT)
        error.elapsed_ms = last.elapsed_ms if last is not None else 0
        return error

    # --- usage -------------------------------------------------------------------------

    def _first_model(self, routed: RoutedRequest) -> str:
        return outcomes.first_model(routed, self._model_of)

    def _model_of(self, deployment_id: str) -> str | None:
        dep = self.deployments.by_id.get(deployment_id)
        return dep.model if dep else None
