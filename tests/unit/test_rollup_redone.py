"""A provider call re-done after a crash bills its request once in the rollups too (case 9).

After a crash a request's provider call may be made again: a second Usage for the same
(tenant, request id) with another completion time and cost, stored in a later, separate
flush (another batch, another insert token). ``usage FINAL`` keeps one row per request;
the minute and daily rollups (materialised views, schemas/clickhouse/005) must agree with
it: one request and one cost, whichever of the two costs the ledger keeps.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.analytics.clickhouse import ClickHouse
from pipeline.analytics.writer import LedgerWriter
from pipeline.analytics.migrate import apply_migrations
from pipeline.events.models import Usage

MIGRATIONS = Path(__file__).resolve().parents[2] / "schemas" / "clickhouse"
TENANT = "acme"
REQUEST = "0b6f8e4e-3c1d-4f55-9a57-2f0a3c7d9e11"


@pytest.fixture
def ledger(chdb_client: ClickHouse) -> ClickHouse:
    apply_migrations(chdb_client, MIGRATIONS)
    return chdb_client


def usage(created_ms: int, completed_ms: int, cost_nanos: int, provider_ms: int) -> Usage:
    return Usage(request_id=REQUEST, tenant=TENANT, team="t", created_at_ms=created_ms,
                 routed_at_ms=created_ms + 5, completed_at_ms=completed_ms, status="ok",
                 requested_model="gpt-4.1", routed_model="gpt-4.1", served_model="gpt-4.1",
                 provider="openai", deployment="openai-gpt-4.1", route_rule="default",
                 attempts=1, prompt_tokens=100, completion_tokens=50, cost_nanos=cost_nanos,
                 baseline_cost_nanos=cost_nanos, price_version="test", provider_ms=provider_ms,
                 pipeline_ms=20)


def totals(client: ClickHouse, sql: str) -> tuple[int, Decimal]:
    count, cost = client.query(sql, parameters={"tenant": TENANT}).result_rows[0]
    return int(count or 0), Decimal(cost or 0)


def final_totals(client: ClickHouse) -> tuple[int, Decimal]:
    return totals(client, "SELECT count(), sum(cost_usd) FROM usage FINAL "
                          f"WHERE tenant = {{tenant:String}} AND request_id = '{REQUEST}'")


def rollup_totals(client: ClickHouse, table: str) -> tuple[int, Decimal]:
    # Only REQUEST is stored (a fresh database per test), so the tenant's rollup is REQUEST's.
    return totals(client, f"SELECT sum(requests), sum(cost_usd) FROM {table} "
                          "WHERE tenant = {tenant:String}")


@pytest.mark.asyncio
async def test_a_redone_call_is_counted_once_by_the_minute_and_daily_rollups(
        ledger: ClickHouse) -> None:
    created = int(time.time() * 1000) - 3_600_000        # inside the minute rollup's TTL
    first = usage(created, created + 300, cost_nanos=600_000, provider_ms=250)
    redone = usage(created, created + 7_000, cost_nanos=900_000, provider_ms=6_800)

    before_crash = LedgerWriter(ledger, max_rows=10)
    before_crash.add(first, 0, 41)
    await before_crash.flush()
    one = final_totals(ledger)
    assert one == (1, Decimal("0.0006"))
    for table in ("usage_minute", "usage_daily"):
        assert rollup_totals(ledger, table) == one, table

    after_restart = LedgerWriter(ledger, max_rows=10)    # a new worker: a later, separate flush
    after_restart.add(redone, 0, 97)                     # the re-done call's Usage, a new offset
    await after_restart.flush()
    assert after_restart.pending == 0

    count, cost = final_totals(ledger)
    assert count == 1 and cost in (Decimal("0.0006"), Decimal("0.0009")), (count, cost)
    minute = rollup_totals(ledger, "usage_minute")
    daily = rollup_totals(ledger, "usage_daily")
    assert (minute, daily) == ((count, cost), (count, cost)), (
        f"usage FINAL bills {count} request for {cost} USD; the minute rollup counts "
        f"{minute[0]} for {minute[1]} USD, the daily rollup {daily[0]} for {daily[1]} USD")
