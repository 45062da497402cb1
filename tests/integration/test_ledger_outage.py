"""ClickHouse down under load on the embedded stack: requests keep being answered, the
ledger sinks back off and stop reading (backpressure) instead of dropping, and once
ClickHouse is back every request is in the ledger exactly once, with the cost the usage
topic carries. Redelivering the same usage events afterwards changes no total.

The outage is the fault switch of pipeline/analytics/clickhouse.py: the worker inherits
LLMPIPE_CLICKHOUSE_FAULT_FILE, and every INSERT fails while that file exists.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal
from typing import Any, Callable

import httpx

from pipeline.analytics.clickhouse import FAULT_FILE_ENV
from pipeline.catalog import nanos_to_usd
from pipeline.client import GatewayClient, make_request
from pipeline.events.codec import Codec
from pipeline.events.models import Alert, Usage
from tests.integration.conftest import make_stack

BEFORE, DURING = 40, 200         # requests before the outage and while ClickHouse is down
FLUSH_ROWS = 10                   # so the usage sink's buffer (10 batches = 100 rows) fills
codec = Codec()


def until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    last = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
        last = check()
    return last


async def test_clickhouse_outage_under_load_then_redelivery_bills_each_request_once(
        broker, tmp_path_factory, monkeypatch):
    stack = make_stack(broker, tmp_path_factory, "chdown",
                       ["--latency-scale", "0.05", "--no-base-errors", "--seed", "23"])
    fault = stack.data_dir / "clickhouse-down"
    monkeypatch.setenv(FAULT_FILE_ENV, str(fault))    # the worker inherits the switch, not yet tripped
    try:
        # Retries back off 0.5, 1, 2, 2, ... s: the catch-up shows within seconds of the restore.
        worker = stack.start_worker(ledger_flush_rows=FLUSH_ROWS, ledger_flush_s=0.2,
                                    ledger_retry_cap_s=2.0)

        totals = worker.usage_totals

        def count(table: str, column: str, values: list[str]) -> dict[str, int]:
            resp = httpx.post(f"{worker.url}/llmpipe/ledger/table-count/",
                              json={"table": table, "column": column, "values": values}, timeout=60)
            resp.raise_for_status()
            return resp.json()["counts"]

        def ask(prefix: str, n: int) -> list:
            return [make_request(f"{prefix}-{i % 4}", f"{prefix} request {i}", max_tokens=24)
                    for i in range(n)]

        before, during = ask("calm", BEFORE), ask("storm", DURING)
        alert = Alert(alert_id=str(uuid.uuid4()), rule="outage_test", state="firing", value="2",
                      threshold="1", at_ms=int(time.time() * 1000), tenant="calm-0")
        poison = b"\x00\x00\x00\x00\x01 not a usage event"
        async with GatewayClient(stack.bootstrap, stack.topics) as gw:
            answered = list(await asyncio.gather(*(gw.request(r, timeout=60) for r in before)))
            worker.wait_for_usage([r.request_id for r in before], timeout=30)

            fault.touch()                                 # ClickHouse "down"
            t_down = time.monotonic()
            await stack.publish_raw([
                (stack.topics.usage, b"calm-0", poison),
                (stack.topics.alerts, b"calm-0", codec.encode(alert, stack.topics.alerts))])
            # Traffic keeps flowing: every request is answered while nothing can be billed.
            answered += await asyncio.gather(*(gw.request(r, timeout=60) for r in during))
        assert all(r.status == "ok" for r in answered), [r.error for r in answered if r.status != "ok"]
        ids = [r.request_id for r in before + during]

        # The usage sink is backing off and has stopped reading with a full buffer.
        state = until("the usage sink to retry and hit backpressure", lambda: (
            (s := totals(ids)["sinks"]["usage"])["failures"] >= 2 and s["backpressure_waits"] >= 1
            and s), timeout=30)
        assert state["pending"] <= state["max_buffer"] == 10 * FLUSH_ROWS
        stored_while_down = totals(ids)["final"]["distinct"]
        assert stored_while_down < len(ids), "inserts went through with the fault file present"
        assert count("alerts", "alert_id", [alert.alert_id]) == {alert.alert_id: 0}

        fault.unlink()                                    # ClickHouse back
        outage_s = time.monotonic() - t_down
        t_up = time.monotonic()
        done = until("every request to reach the ledger",
                     lambda: (t := totals(ids))["final"]["distinct"] == len(ids) and t, timeout=40)
        catch_up_s = time.monotonic() - t_up

        # Exactly once: as stored, not merely after FINAL; and the cost the usage topic says.
        usage = {u.request_id: u for u in stack.read_events(stack.topics.usage, Usage)
                 if u.request_id in set(ids)}
        assert set(usage) == set(ids)
        expected_cost = sum((nanos_to_usd(u.cost_nanos) for u in usage.values()), Decimal(0))
        assert expected_cost == sum((nanos_to_usd(r.cost_nanos) for r in answered), Decimal(0))
        assert done["final"] == done["raw"] == {"rows": len(ids), "distinct": len(ids),
                                                "cost_usd": done["final"]["cost_usd"]}
        assert Decimal(done["final"]["cost_usd"]) == expected_cost > 0
        sinks = done["sinks"]
        assert sinks["usage"]["failures"] == 0 and sinks["usage"]["total_failures"] >= 2
        # The alert and the ledger's own dead letter (the poison usage event) caught up too.
        until("the alert and the dead letter to be stored", lambda: (
            count("alerts", "alert_id", [alert.alert_id]) == {alert.alert_id: 1}
            and count("dead_letters", "agent", ["ledger"]) == {"ledger": 1}), timeout=20)

        # Redelivery: publish every usage event of these requests again (new offsets, new
        # batches). The sink inserts them all; no total moves.
        inserted_before = sinks["usage"]["inserted"]
        await stack.publish_raw([(stack.topics.usage, u.tenant.encode(),
                                  codec.encode(u, stack.topics.usage)) for u in usage.values()])
        until("the redelivered usage to be inserted", lambda: totals(ids)["sinks"]["usage"]["inserted"]
              >= inserted_before + len(ids), timeout=30)
        again = totals(ids)
        assert again["final"] == done["final"]
        assert again["raw"]["rows"] >= len(ids)   # the repeats landed (unless merged away already)
        assert worker.alive()
        print(f"outage {outage_s:.1f}s with {DURING} requests answered; stored while down: "
              f"{stored_while_down}/{len(ids)}; caught up {catch_up_s:.1f}s after restore; "
              f"usage sink: {state['total_failures']} failed flushes, "
              f"{state['backpressure_waits']} backpressure waits; raw rows after redelivery: "
              f"{again['raw']['rows']}")
    finally:
        stack.stop()
