"""Intake's context step (issue 15): a request's messages compressed by its tenant's context
policy (``TenantPolicy.context``) changed by its own override (metadata
``x-llmpipe-context``), with pipeline/context/'s pure transforms.

**Where.** After validation and the cache lookup — the cache key and scope are the request
as received, so compression never changes what hits — and before budget reservation and
routing, which see the compressed size. A cache hit is never compressed. An embedding
request is never compressed.

**What it records.** The RoutedRequest carries the estimated prompt tokens before and
after and the decision's one-line explanation; the Response carries the explanation
(HTTP header ``x-llmpipe-context``), and the usage row the two token counts and what the
removed tokens would have cost at the served model's input price.

**Summaries** are made before the step (``Intake.prepare``, summaries.py). Without one
(the call failed) the window is not applied and the history is sent whole."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipeline.context import (OVERRIDE_KEY, ContextPolicy, ContextPolicyError, Decision, compress,
                              splice_summary)
from pipeline.errors import Rejected
from pipeline.events.models import Request, TenantPolicy
from pipeline.intake.summaries import Summary
from pipeline.routing.tokens import estimate_messages_tokens


@dataclass(frozen=True)
class Prepared:
    """What ``Intake.prepare`` did for a record before the step, for the step to bill."""
    lookup_cost: int = 0                # a provider embedding for the cache lookup
    summary: Summary | None = None      # the history summary, if the policy asked for one
    request: Request | None = None      # the record, decoded (so handle decodes it once)


@dataclass(frozen=True)
class Compressed:
    request: Request                    # with the messages to send
    tokens_before: int                  # estimated prompt tokens, as received
    tokens_after: int                   # ... as sent
    note: str                           # the decision, in one line


def context_policy(request: Request, tenant: TenantPolicy | None) -> ContextPolicy:
    """The request's context policy: its tenant's, changed by its override. A bad
    override (or a bad stored policy) refuses the request with the reason."""
    try:
        base = ContextPolicy.parse(tenant.context) if tenant and tenant.context else ContextPolicy()
        override = request.metadata.get(OVERRIDE_KEY)
        return base.with_override(override) if override is not None else base
    except ContextPolicyError as exc:
        raise Rejected(f"context policy: {exc}") from None


def plan(request: Request, policy: ContextPolicy) -> Decision | None:
    """The transforms' decision for ``request`` (None: nothing to do)."""
    if request.embedding is not None or not policy.enabled or not request.messages:
        return None
    return compress(request.messages, policy)[1]


def compressed(request: Request, policy: ContextPolicy, summary: Summary | None
               ) -> Compressed | None:
    """``request`` with its messages compressed (None: the policy does nothing to it)."""
    if request.embedding is not None or not policy.enabled or not request.messages:
        return None
    messages, decision = compress(request.messages, policy)
    note = decision.explain()
    if decision.to_summarise:
        if summary is not None:
            messages = splice_summary(messages, summary.text)
            after = estimate_messages_tokens(messages)
            note = (dataclasses.replace(decision, to_summarise=(), tokens_after=after).explain()
                    + f"; summary of {len(decision.to_summarise)} message(s) spliced in "
                    f"(+{after - decision.tokens_after})"
                    + (", made before" if summary.usage is None else ""))
        else:
            kept = dataclasses.replace(policy, window_turns=0, window_tokens=0, summarise=False)
            messages, decision = compress(request.messages, kept)
            note = (decision.explain() if kept.enabled else "context: nothing removed") + \
                "; summary unavailable: history kept whole"
    if messages is request.messages:
        return None
    return Compressed(request.replace(messages=messages), decision.tokens_before,
                      estimate_messages_tokens(messages), note)
