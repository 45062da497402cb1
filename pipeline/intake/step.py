"""Intake: decode, validate, normalise and route each request on llm.requests.

A valid request becomes a RoutedRequest on llm.routed (or, at a priority without a
micro-batch window, a Batch of one on llm.batches: pipeline/batching/alone.py); a request
intake refuses gets a
terminal error Response (and a Usage row, so errors are counted); bytes that are not a
request become a DeadLetter with the raw bytes and the reason. Nothing here raises.
"""

from __future__ import annotations

import json
from typing import Callable

from pipeline import errors
import pipeline.intake.validation as validation
from pipeline.batching.alone import QuietDeployments, batch_of_one
from pipeline.batching.window import FILL_AGE, FILL_QUIET
from pipeline.batching.config import BatchingConfig
from pipeline.catalog import Catalog
from pipeline.clock import now_ms
from pipeline.errors import Rejected
from pipeline.events.codec import Codec, DecodeError, is_json
from pipeline.kafka.topics import invalid_topic_name
from pipeline.events.models import ERROR, ErrorInfo, Request, Response, RoutedRequest, TenantPolicy
from pipeline.events.text import scrub
from pipeline.outputs import AVRO, JSON, Origin, Out, dead_letter, outcomes
from pipeline.routing.policy import Router, RoutingPolicy, TenantRules
from pipeline.tenancy.admissions import DUPLICATE, REDELIVERY, REFUSED, Admission
from pipeline.tenancy.canary import CANARY, arm_for, arm_label
from pipeline.tenancy.state import TenantState, budget_alert
from pipeline.routing.tokens import estimate_request_tokens
from pipeline.settings import Topics
from pipeline.cache.store import ResponseCache, key_of, scope_of
from pipeline.intake.features import check_embedding_reply
from pipeline.intake.bounds import RequestBounds
from pipeline.intake.context import Prepared, compressed, context_policy, plan
from pipeline.intake.summaries import Summariser


NOTHING_PREPARED = Prepared()

class Intake:
    agent = "intake"

    def __init__(self, codec: Codec, catalog: Catalog, router: Router, policy: RoutingPolicy,
                 topics: Topics, clock: Callable[[], int] = now_ms,
                 policies: Callable[[str], TenantPolicy | None] = lambda tenant: None,
                 state: TenantState | None = None, bounds: RequestBounds = RequestBounds(),
                 partitions: int | None = None, windows: BatchingConfig | None = None,
                 cache: ResponseCache | None = None, summariser: Summariser | None = None):
        """``partitions``: llm.requests' partition count, to check that a record sits on its
        tenant's partition (None: not checked). ``windows``: the micro-batch windows; a
        request at a priority without one goes straight to llm.batches (None: every
        request goes to llm.routed). ``cache``: the tenant partitions' response cache
        (None: no cache). ``summariser``: makes history summaries for context policies
        that ask for them (None: such requests keep their whole history)."""
        self.codec, self.catalog, self.router, self.policy = codec, catalog, router, policy
        self.topics, self.clock, self.policies = topics, clock, policies
        self.bounds, self.partitions, self.windows = bounds, partitions, windows
        self.state = state if state is not None else TenantState({})
        self.cache, self.summariser = cache, summariser
        self.quiet = QuietDeployments()

    async def prepare(self, value: bytes | None, origin: Origin | None = None) -> Prepared:
        """Before :meth:`handle`, the calls its record may need (they cannot run inside
        handle): with a provider's embedder, the embedding of the last turn for the
        semantic lookup; with a context policy that summarises, the summary of the turns
        the window drops. What they made and cost, for ``handle`` to bill. ``origin``: the
        record's place, to pay nothing for a duplicate copy (handle answers it) and no
        embedding for a redelivery (handle skips its lookup)."""
        remote = self.cache is not None and self.cache.remote
        if not remote and self.summariser is None:
            return NOTHING_PREPARED
        try:
            request = self.codec.decode(value, Request)
        except DecodeError:
            return NOTHING_PREPARED     # handle dead-letters it
        policy = self.policies(request.tenant)
        try:
            context = context_policy(request, policy)
            summarise = self.summariser is not None and context.summarise
            if not remote and not summarise:
                return Prepared(request=request)          # nothing to pay for
            validation.check_request(request, self.clock(), self.bounds)
        except Rejected:
            return Prepared(request=request)   # handle refuses it; nothing paid for it
        if origin is not None:
            kind, _ = self.state.admissions.classify(request.tenant, request.request_id,
                                                     origin.partition, origin.offset)
            if kind == DUPLICATE:
                return Prepared(request=request)
            remote = remote and kind != REDELIVERY
        cost = await self.cache.prepare(request, policy) if remote and self.cache else 0
        summary = None
        if summarise and self.summariser is not None and not self._hits(request, policy):
            decision = plan(request, context)
            if decision is not None and decision.to_summarise:
                summary = await self.summariser.summary(
                    request, list(decision.to_summarise), decision.summary_key, policy)
        return Prepared(cost, summary, request)

    def _hits(self, request: Request, policy: TenantPolicy | None) -> bool:
        """Whether the cache would answer ``request`` now (then nothing is summarised)."""
        if self.cache is None or not self.cache.decide(request, policy)[0]:
            return False
        return self.cache.peek(request, key_of(request), self.clock(), policy) is not None

    def handle(self, value: bytes | None, origin: Origin,
               prepared: Prepared = NOTHING_PREPARED) -> list[Out]:
        """``prepared``: what :meth:`prepare` made and paid for this record, billed with
        it; a summary call's own usage row goes out whatever becomes of the request."""
        outs = self._handle(value, origin, prepared)
        summary = prepared.summary
        if summary is not None and summary.usage is not None:
            outs.append(Out(self.topics.usage, summary.usage.tenant, summary.usage,
                            partition=origin.partition))
        return outs

    def _handle(self, value: bytes | None, origin: Origin, prepared: Prepared) -> list[Out]:
        lookup_cost = prepared.lookup_cost
        received = self.clock()
        fmt = JSON if is_json(value) else AVRO
        try:                # decoded once: by prepare when it looked at the record
            request = prepared.request or self.codec.decode(value, Request)
        except DecodeError as exc:
            return self._rejected_bytes(value, origin, exc.code, exc.reason, received)
        policy = self.policies(request.tenant)
        try:
            validation.check_request(request, received, self.bounds)
            validation.check_record(len(value or b""), origin.key, origin.partition,
                                    request.tenant, self.partitions, self.bounds, origin.topic)
            validation.check_reply_topics(request, self.topics, policy)
            context = context_policy(request, policy)
        except Rejected as exc:
            return self._refused(request, fmt, exc, received, origin, lookup_cost)
        self.state.prepare(origin.partition)
        kind, seen = self.state.admissions.classify(request.tenant, request.request_id,
                                                    origin.partition, origin.offset)
        if kind == DUPLICATE:
            return [self._duplicate(request, fmt, seen, received)]
        outs: list[Out] = []
        read, keep = self.cache.decide(request, policy) if self.cache else (False, False)
        key = key_of(request) if read or keep else ""
        scope = scope_of(request) if key and self.cache and self.cache.semantic(
            request, policy) else ""
        try:
            if read and kind != REDELIVERY:     # a redelivery holds its first reservation
                assert self.cache is not None          # read is only ever True with one
                found = self.cache.lookup(request, key, received, policy, scope)
                if found is not None:
                    return self._cached(request, fmt, origin, received, policy, *found,
                                        lookup_cost=lookup_cost)
            # the cache took the request as received; reservation and routing see what is sent
            shrunk = compressed(request, context, prepared.summary)
            sent = shrunk.request if shrunk is not None else request
            if kind == REDELIVERY and seen.state != REFUSED:
                # Admitted before but never acknowledged: route again, reserve nothing new.
                routed, _ = self._route(sent, fmt, origin, received, policy, economise=False)
            else:
                routed, alerts = self._admit(sent, fmt, origin, received, policy)
                outs += alerts
            if shrunk is not None:
                routed = routed.replace(context_tokens_before=shrunk.tokens_before,
                                        context_tokens_after=shrunk.tokens_after,
                                        context_note=shrunk.note)
            if keep and policy is not None and self.cache is not None:
                routed = routed.replace(cache_key=key, cache_ttl_s=policy.cache_ttl_s,
                                        cache_scope=scope)
            if lookup_cost:
                routed = routed.replace(cache_cost_nanos=lookup_cost)
        except Rejected as exc:
            self.state.refuse(request.tenant, request.request_id, origin.partition, origin.offset,
                              received)
            alerts = exc.alerts if isinstance(exc, _BudgetRefusal) else []
            return alerts + self._refused(request, fmt, exc, received, origin, lookup_cost)
        finally:
            self.state.sweep(origin.partition, received)
        return outs + [self._onward(routed)]

    def _cached(self, request: Request, fmt: str, origin: Origin, received: int,
                policy: TenantPolicy | None, cached: Response, kind: str,
                similarity: float | None, lookup_cost: int = 0) -> list[Out]:
        """A cache hit: the request ends here, with its Response and one Usage (cost 0),
        admitted like any request so a repeat of its id is a duplicate."""
        assert self.cache is not None
        response, usage = self.cache.answer(request, cached, received, self.clock(), kind,
                                            similarity,
                                            baseline_model=policy and policy.baseline_model,
                                            lookup_cost=lookup_cost)
        self.state.admit(request.tenant, request.team, request.request_id, origin.partition,
                         origin.offset, received, 0)
        return [Out(request.reply_topic or self.topics.responses, request.request_id,
                    response, fmt),
                Out(self.topics.usage, request.tenant, usage, partition=origin.partition)]

    def _onward(self, routed: RoutedRequest) -> Out:
        """To the batcher (llm.routed), or as a Batch of one to llm.batches when the
        priority has no window or the window would not fill (batching/alone.py)."""
        if self.windows is not None:
            priority = self.windows.priority_of(routed.request.hints.priority)
            wait, now = self.windows.limits(priority).max_wait_ms, self.clock()
            deployment = routed.route.deployment
            if wait == 0:
                return Out(self.topics.batches, deployment,
                           batch_of_one(routed, priority, now, FILL_AGE))
            if priority in self.windows.skip_quiet and self.quiet.alone(deployment, priority,
                                                                         now, wait):
                return Out(self.topics.batches, deployment,
                           batch_of_one(routed, priority, now, FILL_QUIET))
        return Out(self.topics.routed, routed.route.deployment, routed)

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
        prompt_tokens = estimate_request_tokens(request)
        if prompt_tokens > self.policy.max_prompt_tokens:
            raise Rejected(f"prompt of ~{prompt_tokens} tokens exceeds the gateway limit of "
                           f"{self.policy.max_prompt_tokens}", errors.CONTEXT_LENGTH_EXCEEDED)
        rules, canary = tenant_rules(policy, request, self.state, economise)
        route = self.router.route(request, prompt_tokens, rules)
        if request.embedding is not None:
            check_embedding_reply(request.embedding, self.catalog.models[route.decision.model],
                                  fmt, self.bounds)
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

    # --- refusals ------------------------------------------------------------------

    def _refused(self, r: Request, fmt: str, exc: Rejected, received: int, origin: Origin,
                 lookup_cost: int = 0) -> list[Out]:
        """One error Response (on the request's reply topic only if that is acceptable) and
        one Usage row, built from what of the request can be echoed safely; the row bills
        ``lookup_cost`` (an embedding prepare paid before the refusal)."""
        r = scrub(r)
        b = self.bounds
        created = next((t for t in (r.created_at_ms, origin.timestamp_ms)
                        if t is not None and validation.created_within(t, received, b)), None)
        reply = r.reply_topic
        if reply is not None and (invalid_topic_name(reply) or not validation.reply_topic_allowed(
                reply, self.topics.responses, self.policies(r.tenant), self.topics)):
            reply = None
        try:
            validation.check_metadata(r.metadata, b)
            metadata = r.metadata
        except Rejected:
            metadata = {}
        cut = 2 * b.max_name_length
        echo = r.replace(
            tenant=r.tenant[:cut], team=r.team and r.team[:cut],
            end_user=r.end_user and r.end_user[:cut], model=r.model and r.model[:cut],
            created_at_ms=created, metadata=metadata)
        return outcomes.refused(echo, exc.code, exc.message, at=self.clock(), received=received,
                                fmt=fmt, topics=self.topics, reply_topic=reply,
                                usage_partition=origin.partition, lookup_cost=lookup_cost)

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
