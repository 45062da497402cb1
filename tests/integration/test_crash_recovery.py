"""A worker killed with SIGKILL mid-traffic and started again: every request still ends
with a terminal response and exactly one usage row, and each tenant's budget spend (Faust
tables restored from their changelogs) equals what the ledger billed. There are no Kafka transactions on
the embedded broker; this rests on acking only finished work and idempotent consumers."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

from pipeline.client import GatewayClient
from pipeline.demo import demo_requests
from tests.integration.conftest import make_stack

N = 150


def settled_month(worker, tenant: str, timeout: float = 30.0) -> dict:
    """The tenant's month spend once nothing is reserved (settlement trails the ledger)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in worker.spend(tenant)["rows"] if r["team"] == "*" and r["period"] == "month"]
        month = rows[0] if rows else {"settled_nanos": 0, "reserved_nanos": -1}
        if month["reserved_nanos"] == 0 or time.monotonic() > deadline:
            return month
        time.sleep(0.3)


async def test_sigkill_mid_demo_loses_nothing_and_bills_once(broker, tmp_path_factory):
    # Provider latency long enough that many calls are in flight when the worker dies.
    stack = make_stack(broker, tmp_path_factory, "crash",
                       ["--latency-scale", "1.0", "--no-base-errors", "--seed", "5"])
    try:
        first = stack.start_worker("worker-1")
        requests = demo_requests(N, seed=99)
        async with GatewayClient(stack.bootstrap, stack.topics) as gw:
            futures = {r.request_id: gw.expect(r.request_id) for r in requests}
            for r in requests:
                await gw.send(r)
            # Wait until the pipeline is mid-way: some answered, many not.
            deadline = time.monotonic() + 60
            while sum(f.done() for f in futures.values()) < N // 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            answered_before = sum(f.done() for f in futures.values())
            assert 0 < answered_before < N, answered_before
            stack.kill_worker(first)
            second = stack.start_worker("worker-2")
            results = {rid: await gw.wait(rid, fut, 120) for rid, fut in futures.items()}
            duplicates = gw.duplicates_dropped

        assert len(results) == N
        assert all(r.status in ("ok", "error") for r in results.values())
        ids = list(results)
        counts = second.wait_for_usage(ids, timeout=90)
        assert counts == {rid: 1 for rid in ids}, {k: v for k, v in counts.items() if v != 1}
        assert second.usage_counts(ids) == counts
        # Budgets: every re-delivered request and Usage counted once, nothing left reserved.
        rows = second.usage_rows(ids)
        for tenant in {r.tenant for r in requests}:
            billed = sum(Decimal(row["cost_usd"]) for row in rows if row["tenant"] == tenant)
            month = settled_month(second, tenant)
            if month["reserved_nanos"] != 0 or Decimal(month["settled_nanos"]) / 10**9 != billed:
                admissions = second.spend(tenant, detail=True)["admissions"]
                ledger = {row["request_id"]: int(Decimal(row["cost_usd"]) * 10**9)
                          for row in rows if row["tenant"] == tenant}
                odd = {rid: (a, ledger.get(rid)) for rid, a in admissions.items()
                       if a["state"] != "settled" or a["cost_nanos"] != ledger.get(rid)}
                raise AssertionError(f"{tenant}: spend {month} vs billed {billed}; "
                                     f"admissions that differ from the ledger: {odd}")
        print(f"answered before kill: {answered_before}/{N}; repeated responses dropped "
              f"by the SDK: {duplicates}")
    finally:
        stack.stop()
