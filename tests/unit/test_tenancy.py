"""Tenant policy, budgets, idempotency and canary at intake, with state in plain dicts
(the worker keeps the same rows in Faust tables). No Kafka: intake and settlement are fed
events by hand, including re-deliveries, duplicates and interleavings."""

from __future__ import annotations

import copy

import json
import random
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings, strategies as st

from pipeline import errors
from pipeline.catalog import load_catalog
from pipeline.providers.deployments import load_deployments
from pipeline.events.codec import Codec
from pipeline.events.models import (Alert, Budget, CanaryRule, ChatMessage, Request, Response,
                                    RoutedRequest, TenantPolicy, Usage)
from pipeline.errors import DUPLICATE_STATE
from pipeline.intake import Intake
from pipeline.outputs import Origin
from pipeline.routing.classifier import RuleClassifier
from pipeline.routing.policy import Router, TenantRules, load_routing
from pipeline.settings import Topics
from pipeline.tenancy.budgets import ALL_TEAMS, period_start, spend_key
from pipeline.tenancy.canary import CANARY, arm_for
from pipeline.tenancy.state import TenancyConfig, TenantState

catalog = load_catalog()
deployments = load_deployments(catalog, env={})
routing = load_routing(catalog)
codec = Codec()
topics = Topics()
NOW = 1_763_900_000_000          # 2025-11-23T12:13:20Z
COMPLEX = ("Analyse the architecture of this service step by step and prove the algorithm "
           "is correct:\n```python\ndef f(x):\n    return x * 2\n```")


class World:
    """An intake with dict-backed tenant state, a policy table and a clock."""

    def __init__(self, *policies: TenantPolicy, config: TenancyConfig = TenancyConfig()):
        self.policies = {p.tenant: p for p in policies}
        self.now = NOW
        self.state = TenantState({}, config)
        self.offset = 0
        self.intake = Intake(codec, catalog, Router(catalog, deployments, routing, random.Random(7),
                                                    RuleClassifier()),
                             routing, topics, clock=lambda: self.now,
                             policies=self.policies.get, state=self.state)

    def send(self, tenant: str = "acme", request_id: str | None = None, offset: int | None = None,
             partition: int = 0, **fields):
        data = {"request_id": request_id or str(uuid.uuid4()), "tenant": tenant,
                "messages": [{"role": "user", "content": "hello"}]}
        data.update(fields)
        if offset is None:
            self.offset += 1
            offset = self.offset
        return self.intake.handle(json.dumps(data).encode(),
                                  Origin("llm.requests", partition, offset, tenant.encode(), NOW))

    def settle(self, routed: RoutedRequest, cost_nanos: int, status: str = "ok",
               served: str | None = None, latency_ms: int = 100):
        r = routed.request
        usage = Usage(request_id=r.request_id, tenant=r.tenant, team=r.team or "",
                      created_at_ms=self.now, completed_at_ms=self.now + latency_ms, status=status,
                      cost_nanos=cost_nanos, served_model=served or routed.route.model,
                      canary=routed.canary)
        return self.state.settle(usage, routed.tenant_partition, self.now,
                                 self.policies.get(r.tenant))

    def spend(self, period: str = "month", tenant: str = "acme", team: str = ALL_TEAMS):
        return self.state.spend.get(spend_key(tenant, team, period, self.now))


def routed_of(outs) -> RoutedRequest:
    (routed,) = [o.event for o in outs if isinstance(o.event, RoutedRequest)]
    return routed


def response_of(outs) -> Response:
    (response,) = [o.event for o in outs if isinstance(o.event, Response)]
    return response


def alerts_of(outs) -> list[Alert]:
    return [o.event for o in outs if isinstance(o.event, Alert)]


def budget(period="month", soft=None, hard=None, team=None) -> Budget:
    return Budget(period, team, Decimal(soft) if soft else None, Decimal(hard) if hard else None)


# --- budgets ---------------------------------------------------------------------------------

def test_reservation_is_the_worst_case_estimate_and_settlement_replaces_it_exactly():
    w = World(TenantPolicy("acme"))
    routed = routed_of(w.send(params={"max_tokens": 100}))
    estimate = catalog.cost_nanos(routed.route.model, routed.estimated_prompt_tokens, 100)
    assert w.spend().reserved_nanos == estimate and w.spend().settled_nanos == 0
    w.settle(routed, 12_345)
    assert (w.spend().reserved_nanos, w.spend().settled_nanos) == (0, 12_345)
    for period in ("day", "week"):
        assert w.spend(period).settled_nanos == 12_345


def test_redelivered_usage_and_redelivered_request_are_counted_once():
    w = World(TenantPolicy("acme"))
    outs = w.send(request_id=(rid := str(uuid.uuid4())), offset=40)
    again = w.send(request_id=rid, offset=40)       # not acknowledged before a crash
    assert routed_of(again).request.request_id == rid
    routed = routed_of(outs)
    assert w.spend().reserved_nanos == catalog.cost_nanos(
        routed.route.model, routed.estimated_prompt_tokens, routed.max_tokens)  # reserved once
    w.settle(routed, 500)
    w.settle(routed, 500)                           # Usage re-delivered
    w.settle(routed_of(again), 500)                 # the re-run's own Usage (same request id)
    assert (w.spend().reserved_nanos, w.spend().settled_nanos) == (0, 500)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000_000), st.booleans(), st.booleans()),
                min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_any_interleaving_of_reserve_settle_and_redelivery_keeps_spend_exact(items, rnd):
    """Requests in flight concurrently, settled in any order, some Usage re-delivered, some
    requests re-delivered: settled spend is the sum of billed costs, nothing stays reserved."""
    w = World(TenantPolicy("acme", budgets=[budget(hard="1000000")]))
    pending = []
    for cost, redeliver_request, redeliver_usage in items:
        rid = str(uuid.uuid4())
        offset = w.offset = w.offset + 1
        routed = routed_of(w.send(request_id=rid, offset=offset))
        if redeliver_request:
            w.send(request_id=rid, offset=offset)
        pending += [(routed, cost)] * (2 if redeliver_usage else 1)
    rnd.shuffle(pending)
    for routed, cost in pending:
        w.settle(routed, cost)
    assert w.spend().settled_nanos == sum(cost for cost, _, _ in items)
    assert w.spend().reserved_nanos == 0


def test_hard_limit_refuses_with_budget_exceeded_and_alerts_once():
    w = World(TenantPolicy("acme", budgets=[budget("day", hard="0.001")]))
    w.settle(routed_of(w.send()), 999_000)           # $0.000999 spent today
    first = w.send()
    assert response_of(first).error.code == errors.BUDGET_EXCEEDED
    assert "day hard budget for tenant" in response_of(first).error.message
    usage = [o for o in first if isinstance(o.event, Usage)]
    assert usage and usage[0].event.error_code == errors.BUDGET_EXCEEDED and usage[0].event.cost_nanos == 0
    (alert,) = alerts_of(first)
    assert (alert.rule, alert.state, alert.severity, alert.tenant) == ("budget_hard", "firing", "critical", "acme")
    assert alert.threshold == "0.001000"
    second = w.send()
    assert response_of(second).error.code == errors.BUDGET_EXCEEDED and alerts_of(second) == []
    assert w.spend("day").reserved_nanos == 0


def test_soft_limit_downgrades_to_the_cheapest_model_meeting_the_floor_and_alerts_once():
    w = World(TenantPolicy("acme", budgets=[budget("month", soft="0.01", hard="100")]))
    normal = routed_of(w.send(messages=[{"role": "user", "content": "What is the capital of France? Answer briefly and explain."}],
                              hints={"max_latency_ms": 400}))
    assert normal.route.model == "gemini-2.5-flash"
    w.settle(normal, 9_000_000)                        # $0.009 of $0.01: the next one crosses
    outs = w.send(messages=[{"role": "user", "content": "What is the capital of France? Answer briefly and explain."}],
                  hints={"max_latency_ms": 400})
    routed = routed_of(outs)
    assert routed.route.model == "deepseek-v3.2" and routed.route.rule == "latency+budget"
    assert "soft budget crossed" in routed.route.reason
    (alert,) = alerts_of(outs)
    assert alert.rule == "budget_soft" and alert.severity == "warning"
    assert alerts_of(w.send()) == []                 # still over: no second alert this period


def test_soft_limit_never_downgrades_a_complex_request_below_its_floor():
    w = World(TenantPolicy("acme", budgets=[budget("month", soft="0.000000001")]))
    w.settle(routed_of(w.send()), 10)
    routed = routed_of(w.send(messages=[{"role": "user", "content": COMPLEX}]))
    assert routed.route.task_class == "complex"
    assert catalog.models[routed.route.model].quality >= routing.quality_floors["complex"]


def test_team_budget_applies_only_to_that_team():
    w = World(TenantPolicy("acme", budgets=[budget("day", hard="0.01", team="search")]))
    w.settle(routed_of(w.send(team="search")), 9_999_000)
    assert response_of(w.send(team="search")).error.code == errors.BUDGET_EXCEEDED
    assert isinstance(routed_of(w.send(team="ads")), RoutedRequest)
    assert w.spend("day", team="search").settled_nanos == 9_999_000


def test_periods_are_utc_days_iso_weeks_and_months():
    at = 1_764_028_800_000 - 1          # 2025-11-24T23:59:59.999Z, a Monday
    assert period_start("day", at) == "2025-11-24"
    assert period_start("week", at) == "2025-11-24"
    assert period_start("month", at) == "2025-11-01"
    assert period_start("week", at - 86_400_000) == "2025-11-17"


def test_a_reservation_whose_usage_never_comes_is_released_after_the_timeout():
    w = World(TenantPolicy("acme"), config=TenancyConfig(idempotency_window_s=60,
                                                        reservation_timeout_s=120, sweep_interval_s=1))
    lost = routed_of(w.send())
    assert w.spend().reserved_nanos > 0
    w.now += 121_000
    w.send(tenant="other")                           # any event on the partition sweeps it
    assert w.spend().reserved_nanos == 0
    w.settle(lost, 777)                              # its Usage arrives after all
    assert w.spend().settled_nanos == 777 and w.spend().reserved_nanos == 0


# --- idempotency -------------------------------------------------------------------------------

def test_a_duplicate_request_id_is_not_processed_or_billed_again():
    w = World()
    rid = str(uuid.uuid4())
    routed = routed_of(w.send(request_id=rid))
    dup = w.send(request_id=rid)
    (out,) = dup
    assert isinstance(out.event, Response) and out.key == rid
    assert out.event.error.code == errors.DUPLICATE and not out.event.error.retryable
    assert out.event.metadata[DUPLICATE_STATE] == "in_flight"
    w.settle(routed, 10)
    (out,) = w.send(request_id=rid)
    assert out.event.metadata[DUPLICATE_STATE] == "completed"
    assert "completed with status ok" in out.event.error.message


def test_the_same_request_id_from_another_tenant_is_not_a_duplicate():
    w = World()
    rid = str(uuid.uuid4())
    routed_of(w.send(request_id=rid))
    assert routed_of(w.send(tenant="globex", request_id=rid)).request.tenant == "globex"


def test_request_ids_are_forgotten_after_the_window():
    w = World(config=TenancyConfig(idempotency_window_s=60, sweep_interval_s=1))
    rid = str(uuid.uuid4())
    w.settle(routed_of(w.send(request_id=rid)), 1)
    w.now += 61_000
    w.send()                                         # sweep
    assert isinstance(routed_of(w.send(request_id=rid)), RoutedRequest)


class CountingRows(dict):
    """A dict that counts the rows read (get, [], and every row an iteration goes past)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.reads += 1
        return super().get(key, default)

    def __iter__(self):
        for key in super().__iter__():
            self.reads += 1
            yield key

    def items(self):
        return [(key, super(CountingRows, self).__getitem__(key)) for key in self]


def test_a_sweep_reads_the_old_admissions_only_not_the_whole_window():
    """An hour of admissions at a few hundred requests a second is ~10^6 rows; reading them
    all every sweep blocked the worker's loop ~2 s per partition. After one full read per
    partition (at start or after a rebalance), a sweep reads only what is due."""
    rows = CountingRows()
    state = TenantState(rows, TenancyConfig(idempotency_window_s=60, reservation_timeout_s=60,
                                            sweep_interval_s=1))
    for i in range(2_000):                       # one admission every 30 ms, on partition 0
        state.refuse("acme", f"r{i}", 0, i, NOW + i * 30)
    state.sweep(0, NOW + 60_000)                 # the first sweep of the partition reads it all
    rows.reads = 0
    assert state.sweep(0, NOW + 61_010) == 34    # 60 s later than r0 .. r33
    assert rows.reads < 3 * 34 + 10, rows.reads
    def held(rid: str) -> bool:
        return chr(31).join(("a", "acme", rid)) in rows
    assert not held("r33") and held("r34")
    state.forget_partitions()                    # a rebalance: indexed afresh from the rows
    assert state.sweep(0, NOW + 62_010) == 33
    assert not held("r66") and held("r67")


def test_the_budget_gauges_read_the_spend_rows_only_not_every_admission():
    rows = CountingRows()
    w = World(TenantPolicy("acme"))
    w.state = w.intake.state = TenantState(rows)
    for _ in range(300):
        w.settle(routed_of(w.send()), 10)
    assert sum(1 for _ in w.state.spend.periods()) == 3     # the first read: every row
    rows.reads = 0
    periods = {(p, s.settled_nanos) for *_, p, _, s in w.state.spend.periods()}
    assert periods == {("day", 3_000), ("week", 3_000), ("month", 3_000)}
    assert rows.reads <= 3, rows.reads                     # one sheet, not 300 admissions
    w.settle(routed_of(w.send(team="search")), 5)          # a new sheet is known at once
    assert {(t, p) for _, t, p, *_ in w.state.spend.periods()} >= {("search", "day")}


def test_an_admission_in_flight_is_released_at_the_timeout_then_forgotten_after_the_window():
    w = World(TenantPolicy("acme"), config=TenancyConfig(idempotency_window_s=300,
                                                        reservation_timeout_s=120, sweep_interval_s=1))
    rid = str(uuid.uuid4())
    routed_of(w.send(request_id=rid))
    w.now += 121_000
    w.send(tenant="other")                           # sweeps: released, kept (window 300 s)
    assert w.spend().reserved_nanos == 0
    assert w.state.admissions.get("acme", rid).state == "expired"
    w.now += 180_000
    w.send(tenant="other")                           # past the window: forgotten
    assert w.state.admissions.get("acme", rid) is None


# --- tenant policy in routing ----------------------------------------------------------------

def test_a_denied_pinned_model_falls_through_to_the_policy():
    w = World(TenantPolicy("acme", denied_models=["claude-sonnet-4.5"]))
    routed = routed_of(w.send(model="claude-3"))
    assert routed.route.model != "claude-sonnet-4.5"
    assert "pinned model claude-sonnet-4.5 is not allowed" in routed.route.reason
    assert not any(d.startswith("anthropic") for d in routed.fallbacks)


def test_allowed_models_constrain_every_choice_and_the_fallback_chain():
    w = World(TenantPolicy("acme", allowed_models=["deepseek-v3.2", "gpt-4o-mini"]))
    for hints in ({"required_quality": 0.97}, {"max_latency_ms": 100}, {}):
        routed = routed_of(w.send(hints=hints))
        assert routed.route.model in {"deepseek-v3.2", "gpt-4o-mini"}
        assert all(deployments.by_id[d].model in {"deepseek-v3.2", "gpt-4o-mini"}
                   for d in routed.fallbacks)


def test_tenant_default_quality_stands_in_for_the_hint():
    w = World(TenantPolicy("acme", default_quality=0.95))
    assert routed_of(w.send()).route.rule == "quality"
    assert routed_of(w.send(hints={"required_quality": 0.5})).route.rule != "quality"


def test_baseline_model_of_the_tenant_travels_with_the_request():
    w = World(TenantPolicy("acme", baseline_model="claude-sonnet-4.5"))
    assert routed_of(w.send()).baseline_model == "claude-sonnet-4.5"
    assert routed_of(World().send()).baseline_model == ""


def test_a_prompt_too_large_moves_to_a_larger_window_or_is_truncated_when_allowed():
    history = [{"role": "system", "content": "be brief"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 4000}
        for i in range(40)]                           # ~150k tokens: more than gpt-4o-mini's window
    pinned_small = {"model": "gpt-4o-mini", "messages": history}
    refused = World(TenantPolicy("acme")).send(**pinned_small)
    moved = routed_of(refused)
    assert moved.route.model != "gpt-4o-mini" and "+context" in moved.route.rule
    truncated = routed_of(World(TenantPolicy("acme", truncation_allowed=True)).send(**pinned_small))
    assert truncated.route.model == "gpt-4o-mini" and truncated.route.rule == "pinned+truncated"
    msgs = truncated.request.messages
    assert msgs[0].content == "be brief" and msgs[1].role == "system"
    assert "earlier message(s) of this conversation were removed" in msgs[1].content
    assert msgs[-1].content == history[-1]["content"]
    window = catalog.models["gpt-4o-mini"].context_window
    assert truncated.estimated_prompt_tokens + truncated.max_tokens <= window


def test_a_tenant_allowed_no_model_gets_a_clear_error():
    w = World(TenantPolicy("acme", allowed_models=["gpt-4o"], denied_models=[]))
    assert routed_of(w.send()).route.model == "gpt-4o"
    router = Router(catalog, deployments, routing, random.Random(1))
    with pytest.raises(errors.Rejected, match="allows no model"):
        router.route(Request(str(uuid.uuid4()), "acme", messages=[ChatMessage("user", "hi")]), 10,
                     TenantRules(allowed=frozenset({"nope"})))


# --- canary ----------------------------------------------------------------------------------

RULE = CanaryRule("flash-trial", 20, "gemini-2.5-flash", min_success_rate=0.995, max_p95_ms=500,
                  min_samples=20, window=50)


def test_the_same_user_always_lands_in_the_same_arm_and_the_share_matches():
    arms = {u: arm_for("acme", RULE, u) for u in (f"user-{i}" for i in range(5000))}
    assert all(arm_for("acme", RULE, u) == a for u, a in arms.items())
    share = sum(a == CANARY for a in arms.values()) / len(arms)
    assert 0.18 < share < 0.22


def test_canary_arm_routes_to_the_canary_model_and_is_labelled():
    w = World(TenantPolicy("acme", canary=RULE))
    users = [f"user-{i}" for i in range(200)]
    for u in users:
        routed = routed_of(w.send(end_user=u, messages=[{"role": "user", "content": "list three colours"}]))
        arm = arm_for("acme", RULE, u)
        assert routed.canary == f"flash-trial:{arm}"
        assert (routed.route.rule == "canary") == (arm == CANARY)
        if arm == CANARY:
            assert routed.route.model == "gemini-2.5-flash"
        else:
            assert routed.route.model == "deepseek-v3.2"        # simple task: its normal route


def test_canary_rolls_back_on_degradation_and_says_so():
    w = World(TenantPolicy("acme", canary=RULE))
    canary_users = [u for u in (f"user-{i}" for i in range(400)) if arm_for("acme", RULE, u) == CANARY]
    alerts = []
    for i, u in enumerate(canary_users[:40]):
        routed = routed_of(w.send(end_user=u))
        assert routed.route.rule == "canary"
        failed = i % 10 == 0                            # 10% errors: far below 99.5% success
        alerts += w.settle(routed, 5, status="error" if failed else "ok")
        if alerts:
            break
    (alert,) = alerts
    assert alert.rule == "canary_rollback" and "success rate" in alert.message
    assert i + 1 == RULE.min_samples                  # judged as soon as there are enough samples
    after = routed_of(w.send(end_user=canary_users[0]))
    assert after.route.rule != "canary" and after.canary == ""


def test_canary_rolls_back_on_slow_p95_but_not_before_min_samples():
    w = World(TenantPolicy("acme", canary=RULE))
    user = next(u for u in (f"user-{i}" for i in range(400)) if arm_for("acme", RULE, u) == CANARY)
    for i in range(RULE.min_samples - 1):
        assert w.settle(routed_of(w.send(end_user=user)), 1, latency_ms=900) == []
    (alert,) = w.settle(routed_of(w.send(end_user=user)), 1, latency_ms=900)
    assert "P95 latency" in alert.message


def test_a_changed_canary_rule_starts_afresh_after_a_rollback():
    w = World(TenantPolicy("acme", canary=RULE))
    user = next(u for u in (f"user-{i}" for i in range(400)) if arm_for("acme", RULE, u) == CANARY)
    for _ in range(RULE.min_samples):
        w.settle(routed_of(w.send(end_user=user)), 1, status="error")
    assert routed_of(w.send(end_user=user)).route.rule != "canary"
    w.policies["acme"] = TenantPolicy("acme", canary=CanaryRule(**{**RULE.to_dict(), "percent": 100}))
    assert routed_of(w.send(end_user=user)).route.rule == "canary"
    assert arm_for("acme", w.policies["acme"].canary, "anyone") == CANARY


def test_a_provider_call_redone_after_a_crash_is_settled_at_its_first_cost_like_the_ledger():
    w = World(TenantPolicy("acme"))
    routed = routed_of(w.send())
    w.settle(routed, 1_000)
    w.settle(routed, 1_300)           # the call was made again before the first Usage was acked
    w.settle(routed, 1_300)           # and that Usage re-delivered
    assert (w.spend().settled_nanos, w.spend().reserved_nanos) == (1_000, 0)


class WriteLog(dict):
    """A dict that records every write, in order, like a table's changelog."""

    def __init__(self):
        super().__init__()
        self.log: list[tuple[str, dict | None]] = []

    def __setitem__(self, key, value):
        self.log.append((key, value))
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.log.append((key, None))
        super().__delitem__(key)


def restored(log: list[tuple[str, dict | None]]) -> dict:
    rows: dict = {}
    for key, value in log:
        if value is None:
            rows.pop(key, None)
        else:
            rows[key] = value
    return rows


@pytest.mark.parametrize("costs", [[700, 1_100, 2_500], [5, 5, 5, 5]])
def test_a_crash_at_any_point_of_the_changelog_then_replay_keeps_spend_exact(costs):
    """The changelog of a crashed worker holds a prefix of its writes. Whatever the prefix,
    re-delivering every request and every Usage converges on exact spend."""
    log = WriteLog()
    w = World(TenantPolicy("acme"))
    w.state = w.intake.state = TenantState(log)
    rids = [str(uuid.uuid4()) for _ in costs]
    routed = [routed_of(w.send(request_id=rid, offset=i)) for i, rid in enumerate(rids)]
    for r, cost in zip(routed, costs):
        w.settle(r, cost)
    assert w.spend().settled_nanos == sum(costs)
    for cut in range(len(log.log) + 1):
        again = World(TenantPolicy("acme"))
        again.state = again.intake.state = TenantState(restored(log.log[:cut]))
        for i, rid in enumerate(rids):                   # everything re-delivered
            again.send(request_id=rid, offset=i)
        for r, cost in zip(routed, costs):
            again.settle(r, cost)
        spend = again.spend()
        assert (spend.settled_nanos, spend.reserved_nanos) == (sum(costs), 0), cut


class CoalescedLog(dict):
    """A dict whose writes reach ``log`` the way the write-behind sends them
    (pipeline/kafka/write_behind.py): at each flush, every written key once, with its value
    at the flush, in the order of the keys' last writes. A flush runs between steps (the
    worker's flushes run in other tasks, or soon after the step that filled the buffer;
    never between the writes of one change, which has no await inside), every ``every``
    steps; what is not flushed when the worker dies is lost."""

    def __init__(self, every: int):
        super().__init__()
        self.every, self.steps = every, 0
        self.log: list[tuple[str, dict | None]] = []
        self.flushes: list[tuple[int, int]] = []     # (where in the log it ends, steps in it)
        self._pending: dict[str, dict | None] = {}

    def _wrote(self, key, value):
        self._pending.pop(key, None)
        self._pending[key] = value

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._wrote(key, value)

    def __delitem__(self, key):
        super().__delitem__(key)
        self._wrote(key, None)

    def stepped(self):
        self.steps += 1
        if self.steps % self.every == 0:
            self.flush()

    def waited(self):
        """Time passed (over a second): Faust has committed, so flushed, meanwhile."""
        if self._pending:
            self.flush()

    def flush(self):
        self.log += [(k, copy.deepcopy(v)) for k, v in self._pending.items()]
        self.flushes.append((len(self.log), self.steps))
        self._pending.clear()

    def committed_steps(self, cut: int) -> int:
        """Steps whose offsets may have been committed when the worker died ``cut``
        records into the log: Faust commits once a flush is on the broker, so at most the
        steps flushed by the last flush the cut left whole."""
        return max((steps for end, steps in self.flushes if end <= cut), default=0)


MIDNIGHT = NOW // 86_400_000 * 86_400_000 + 86_400_000
MONDAY_1ST = 1_764_547_200_000                 # 2025-12-01T00:00Z: a day, an ISO week, a month
# When each step happens: 0 two seconds before midnight, 1 two seconds after, 2 two hours
# before (its admission is forgotten, past the idempotency window, by the next step).
SCRIPTS = {
    "in_order": [("send", 0, 0), ("send", 1, 0), ("send", 2, 0),
                 ("settle", 0, 0), ("settle", 1, 0), ("settle", 2, 0)],
    "interleaved": [("send", 0, 0), ("send", 1, 0), ("settle", 0, 0), ("send", 2, 0),
                    ("settle", 2, 0), ("settle", 1, 0)],
    # request 1 is admitted just before midnight and settled just after, once the next day's
    # first request has closed the day
    "over_midnight": [("send", 0, 0), ("send", 1, 0), ("settle", 0, 0),
                      ("send", 2, 1), ("settle", 2, 1), ("settle", 1, 1)],
    # the same at the end of a month, on a Monday: the late settlement finds day, week and
    # month closed; request 0's admission is gone, so only the closed rows hold its spend
    "over_a_month_end": [("send", 0, 2), ("settle", 0, 2), ("send", 1, 0),
                         ("send", 2, 1), ("settle", 2, 1), ("settle", 1, 1)],
}
COSTS = [700, 1_100, 2_500]


def times(script: str) -> list[int]:
    midnight = MONDAY_1ST if script == "over_a_month_end" else MIDNIGHT
    return [midnight - 2_000, midnight + 2_000, midnight - 7_200_000]


def play(w: World, steps, rids, routed: dict, at: list[int],
         log: CoalescedLog | None = None) -> None:
    for kind, i, when in steps:
        if log is not None and at[when] - w.now > 1_000:
            log.waited()
        w.now = at[when]
        if kind == "send":
            outs = w.send(request_id=rids[i], offset=i)
            routed.setdefault(i, routed_of(outs))
        else:
            w.settle(routed[i], COSTS[i])
        if log is not None:
            log.stepped()


@pytest.mark.parametrize("every", [1, 2, 3, 4, 10_000])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_crash_at_any_point_of_a_coalesced_changelog_then_replay_keeps_spend_exact(script, every):
    """With the write-behind the changelog no longer holds a prefix of the writes: each
    flush sends every written row's latest value, in the order of their last writes. Crash
    anywhere in that (the unflushed writes lost), re-deliver what was not committed (at
    the latest, Faust committed after the last flush the crash left whole): spend of every
    period comes out exact."""
    log = CoalescedLog(every)
    w = World(TenantPolicy("acme"))
    w.state = w.intake.state = TenantState(log)
    rids = [str(uuid.uuid4()) for _ in COSTS]
    routed: dict = {}
    at = times(script)
    play(w, SCRIPTS[script], rids, routed, at, log)
    log.flush()

    def spends(world: World) -> dict:
        out = {}
        for day in (0, 1):
            world.now = at[day]
            for period in ("day", "week", "month"):
                spend = world.spend(period)
                out[day, period] = (spend.settled_nanos, spend.reserved_nanos)
        return out

    expected = spends(w)
    by_day = [sum(COSTS[i] for kind, i, when in SCRIPTS[script]
                  if kind == "send" and (when == 1) == (day == 1)) for day in (0, 1)]
    assert expected[0, "day"] == (by_day[0], 0) and expected[1, "day"] == (by_day[1], 0)
    for cut in range(len(log.log) + 1):
        again = World(TenantPolicy("acme"))
        again.state = again.intake.state = TenantState(restored(log.log[:cut]))
        play(again, SCRIPTS[script][log.committed_steps(cut):], rids, dict(routed), at)
        assert spends(again) == expected, (cut, log.log[:cut])


def test_a_spend_key_splits_back_into_its_parts_and_other_keys_do_not():
    from pipeline.tenancy.budgets import spend_key, split_spend_key
    key = spend_key("acme", "search", "week", 1_765_000_000_000)
    assert split_spend_key(key) == ("acme", "search", "week", "2025-12-01")
    assert split_spend_key("acme") is None


# --- spend sheets: one write per change, closed periods kept as rows -------------------------

DAY_MS = 86_400_000


def test_a_change_is_one_table_write_per_team_scope_not_one_per_period():
    log = WriteLog()
    w = World(TenantPolicy("acme"))
    w.state = w.intake.state = TenantState(log)
    routed = routed_of(w.send(team="search"))
    written = [key for key, _ in log.log]
    # the admission, then one sheet for the whole tenant and one for the team
    assert len(written) == 3 and written[0].startswith("a"), written
    before = len(log.log)
    w.settle(routed, 1_000)
    assert len(log.log) - before == 3
    for period in ("day", "week", "month"):
        assert w.spend(period).settled_nanos == 1_000
        assert w.spend(period, team="search").settled_nanos == 1_000


def test_a_period_that_closes_keeps_its_spend_in_a_row_of_its_own():
    w = World(TenantPolicy("acme"))
    late = routed_of(w.send())                       # admitted on day D ...
    w.settle(routed_of(w.send()), 300)
    day_d = w.spend("day")
    w.now += DAY_MS                                  # ... D+1 opens with another request
    w.settle(routed_of(w.send()), 50)
    w.settle(late, 700)                              # ... and the first settles on D+1
    assert w.spend("day").settled_nanos == 50 and w.spend("day").reserved_nanos == 0
    w.now -= DAY_MS
    assert (w.spend("day").settled_nanos, w.spend("day").reserved_nanos) == (1_000, 0)
    assert day_d.settled_nanos == 300
    w.now += DAY_MS
    if period_start("month", w.now) == period_start("month", w.now - DAY_MS):
        assert w.spend("month").settled_nanos == 1_050
    periods = {(period, start): spend.settled_nanos
               for tenant, team, period, start, spend in w.state.spend.periods()}
    assert periods[("day", period_start("day", NOW))] == 1_000
    assert periods[("day", period_start("day", w.now))] == 50


def test_spend_rows_written_before_sheets_still_count():
    from dataclasses import asdict
    from pipeline.tenancy.budgets import SEP, Spend
    w = World(TenantPolicy("acme"))
    old = spend_key("acme", ALL_TEAMS, "month", NOW)
    w.state.rows["s" + SEP + old] = asdict(Spend(settled_nanos=5_000, partition=0, seq=0))
    assert w.spend().settled_nanos == 5_000
    w.settle(routed_of(w.send()), 1_000)
    assert w.spend().settled_nanos == 6_000
    months = [s.settled_nanos for *_, period, _, s in w.state.spend.periods() if period == "month"]
    assert months == [6_000]                         # the old row is not shown twice


def test_old_sheets_and_rows_are_swept_by_their_newest_period():
    w = World(TenantPolicy("acme"), config=TenancyConfig(keep_spend_days=32))
    w.settle(routed_of(w.send()), 100)
    w.now += 20 * DAY_MS
    w.settle(routed_of(w.send()), 100)               # closes the first day and week
    assert w.state.spend.expired(0, w.now, 32) == []
    w.now += 20 * DAY_MS                             # the first day is 40 days old
    expired = w.state.spend.expired(0, w.now, 32)
    assert spend_key("acme", ALL_TEAMS, "day", NOW) in expired
    assert all(len(key.split(chr(31))) == 4 for key in expired)      # the sheet stays
    w.now += 20 * DAY_MS
    assert "acme" + chr(31) + ALL_TEAMS in w.state.spend.expired(0, w.now, 32)


def test_a_table_row_is_the_dataclass_with_nothing_shared():
    """``row()`` replaces ``dataclasses.asdict`` on the request path: same dict, every list
    a copy (a later change to the object must never reach the stored row unwritten)."""
    from dataclasses import asdict
    from pipeline.tenancy.admissions import Admission
    from pipeline.tenancy.budgets import Spend
    admission = Admission(3, 41, 1_700_000_000_000, reserved_nanos=900, spend_keys=["a", "b"],
                          settled_at_ms=5, status="ok", cost_nanos=7, change=[2, -900, 850],
                          earlier=[[1, 900, 0]])
    row = admission.row()
    assert row == asdict(admission) and Admission(**row) == admission
    admission.spend_keys.append("c")
    admission.change.append(1)
    admission.earlier[0].append(1)
    assert (row["spend_keys"], row["change"], row["earlier"]) == (["a", "b"], [2, -900, 850],
                                                                   [[1, 900, 0]])
    spend = Spend(settled_nanos=5, reserved_nanos=6, partition=2, seq=9, soft_alerted=True)
    assert spend.row() == asdict(spend)
