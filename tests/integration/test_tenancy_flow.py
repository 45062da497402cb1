"""Tenant policy, budgets, idempotency and routing savings on the embedded stack: policies
published to llm.tenants apply without a restart, budgets hold across a kill -9, duplicates
are answered but never billed, and a documented traffic mix costs less than gpt-4.1."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from pipeline import errors
from pipeline.client import DuplicateRequest, GatewayClient, make_request
from pipeline.events.codec import Codec
from pipeline.events.models import Alert, Budget, CanaryRule, TenantPolicy
from pipeline.bench.savings import replay
from pipeline.tenancy.directory import put_policy
from tests.integration.conftest import worker_stack

codec = Codec()


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    with worker_stack(broker, tmp_path_factory, "tenancy", seed=5) as s:
        yield s


def publish(stack, policy: TenantPolicy) -> None:
    asyncio.run(put_policy(stack.bootstrap, stack.topics.tenants, codec, policy))


def month_spend(worker, tenant: str) -> dict:
    rows = [r for r in worker.spend(tenant)["rows"] if r["team"] == "*" and r["period"] == "month"]
    return rows[0] if rows else {"settled_nanos": 0, "reserved_nanos": 0}


async def wait_for_policy(worker, tenant: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if (await asyncio.to_thread(worker.spend, tenant))["policy"]:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"policy of {tenant} never reached the worker")


async def alerts_for(stack, tenant: str, timeout: float = 10.0) -> list[Alert]:
    consumer = AIOKafkaConsumer(stack.topics.alerts, bootstrap_servers=stack.bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: list[Alert] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for rec in records:
                    alert = codec.decode(rec.value, Alert)
                    if alert.tenant == tenant:
                        found.append(alert)
            if found and not batch:
                break
    finally:
        await consumer.stop()
    return found


def test_hard_budget_applies_live_and_spend_is_exact(stack):
    worker = stack.ledger_worker()
    tenant = f"budget-{uuid.uuid4().hex[:6]}"
    publish(stack, TenantPolicy(tenant, budgets=[Budget("month", hard_usd=Decimal("0.002"))]))

    async def go():
        await wait_for_policy(worker, tenant)
        async with GatewayClient(stack.bootstrap, stack.topics) as gw:
            return [await gw.request(make_request(tenant, f"list three colours #{i}", max_tokens=64,
                                                  model="gpt-4"), timeout=60)
                    for i in range(40)]

    responses = asyncio.run(go())
    ok = [r for r in responses if r.status == "ok"]
    refused = [r for r in responses if r.error and r.error.code == errors.BUDGET_EXCEEDED]
    assert ok and refused and len(ok) + len(refused) == 40
    assert responses.index(refused[0]) == len(ok)        # refusals start once the limit is near
    ids = [r.request_id for r in responses]
    worker.wait_for_usage(ids)
    rows = worker.usage_rows(ids)
    billed = sum(Decimal(r["cost_usd"]) for r in rows)
    assert billed <= Decimal("0.002")
    spend = month_spend(worker, tenant)
    assert spend["reserved_nanos"] == 0
    assert Decimal(spend["settled_nanos"]) / 10**9 == billed
    (alert,) = [a for a in asyncio.run(alerts_for(stack, tenant)) if a.rule == "budget_hard"]
    assert alert.threshold == "0.002000" and alert.state == "firing"


def test_a_duplicate_request_id_is_answered_but_billed_once(stack):
    worker = stack.ledger_worker()
    tenant = f"dup-{uuid.uuid4().hex[:6]}"
    req = make_request(tenant, "what is the capital of France?", max_tokens=32)

    async def go():
        async with GatewayClient(stack.bootstrap, stack.topics) as gw:
            first = await gw.request(req, timeout=60)
            with pytest.raises(DuplicateRequest) as refused:
                await gw.request(req, timeout=30)        # the same id again, after it completed
            return first, refused.value.response

    first, duplicate = asyncio.run(go())
    assert first.status == "ok"
    assert duplicate.error.code == errors.DUPLICATE and "will not be billed" in duplicate.error.message
    assert worker.wait_for_usage([req.request_id]) == {req.request_id: 1}
    (row,) = worker.usage_rows([req.request_id])
    assert Decimal(row["cost_usd"]) == Decimal(first.cost_nanos) / 10**9


def test_traffic_mix_costs_less_than_gpt_4_1_without_breaking_the_complex_floor(stack):
    report = asyncio.run(replay(stack, stack.ledger_worker(), n=120, concurrency=24))
    print("\n" + report.text())
    assert report.ok == report.requests == 120
    assert report.below_floor == []
    assert report.models["gpt-4.1"] >= 1 and report.models["deepseek-v3.2"] >= 1
    assert report.cost < report.baseline


def test_a_failing_canary_rolls_back_and_says_so(stack):
    """Last in this module: it breaks gemini for a while (its breaker may stay open)."""
    worker = stack.ledger_worker()
    tenant = f"canary-{uuid.uuid4().hex[:6]}"
    rule = CanaryRule("flash-trial", 100, "gemini-2.5-flash", min_samples=5, window=20)
    publish(stack, TenantPolicy(tenant, canary=rule))
    httpx.put(f"{stack.simulator_url}/_sim/faults",
              json={"gemini-2.5-flash": {"kind": "server_error", "rate": 1.0, "status": 503}},
              timeout=10).raise_for_status()
    try:
        async def go():
            await wait_for_policy(worker, tenant)
            async with GatewayClient(stack.bootstrap, stack.topics) as gw:
                before = [await gw.request(make_request(tenant, "list three colours", max_tokens=32,
                                                        end_user=f"u{i}"), timeout=60)
                          for i in range(5)]
                rolled = []
                for _ in range(50):                      # until the settle agent has judged
                    rolled = [a for a in await alerts_for(stack, tenant, timeout=1)
                              if a.rule == "canary_rollback"]
                    if rolled:
                        break
                after = await gw.request(make_request(tenant, "list three colours", max_tokens=32,
                                                      end_user="u0"), timeout=60)
                return before, rolled, after

        before, rolled, after = asyncio.run(go())
    finally:
        httpx.delete(f"{stack.simulator_url}/_sim/faults", timeout=10)
    assert all(r.status == "ok" and r.model != "gemini-2.5-flash" for r in before)  # failed over
    (alert,) = rolled
    assert "success rate 0.00%" in alert.message and alert.subject.startswith("canary flash-trial")
    worker.wait_for_usage([after.request_id])
    (row,) = worker.usage_rows([after.request_id])
    assert row["route_rule"] != "canary" and row["canary"] == ""
