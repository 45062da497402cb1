"""Every SQL block of docs/analytics.md runs against chDB and gives the known answer.

Each block starts with ``-- name: X``; the expected answers come from the report functions
(pipeline/analytics/queries.py) over the same data, so the doc and `llmpipe report` agree.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.analytics import queries as q
from pipeline.analytics.clickhouse import ClickHouse
from pipeline.analytics.rows import insert_usage
from pipeline.analytics.migrate import apply_migrations, split_statements
from pipeline.analytics.reprice import reprice
from pipeline.catalog import Catalog, load_catalog
from tests.unit.test_analytics_reports import DAY_MS, at, mixed, today_ms

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "analytics.md"
_BLOCK = re.compile(r"^```sql\n(.*?)^```", re.M | re.S)
_NAME = re.compile(r"^-- name: (\w+)\n")

EXPECTED = {"cost_by_tenant", "cost_by_team_model_day", "cost_by_model_rollup", "savings",
            "latency_by_provider_model", "latency_rollup", "error_rates", "routing_mix",
            "top_users", "reconcile_daily", "rebuild_daily", "reprice_inputs"}


def doc_queries() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for body in _BLOCK.findall(DOC.read_text()):
        match = _NAME.match(body)
        assert match, f"every ```sql block in {DOC.name} starts with '-- name: X':\n{body}"
        assert match.group(1) not in blocks, f"duplicate name {match.group(1)}"
        blocks[match.group(1)] = body
    return blocks


def test_the_doc_has_a_query_for_every_question() -> None:
    assert set(doc_queries()) == EXPECTED


@pytest.fixture
def loaded(chdb_client: ClickHouse) -> tuple[ClickHouse, Catalog, dict[str, Any]]:
    apply_migrations(chdb_client, REPO / "schemas" / "clickhouse")
    catalog = load_catalog()
    base = today_ms() - 2 * DAY_MS + 3_600_000
    rows = mixed(catalog, base)
    insert_usage(chdb_client, rows, dedup_token="doc:0")
    insert_usage(chdb_client, rows[:3], dedup_token="doc:redelivered")   # FINAL absorbs it
    day_start = base - base % DAY_MS
    params = {"since": at(day_start), "until": at(day_start + DAY_MS),
              "day": at(day_start).date()}
    return chdb_client, catalog, params


def run(client: ClickHouse, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in client.query(sql, params).result_rows]


def test_every_doc_query_runs_and_gives_the_known_answer(
        loaded: tuple[ClickHouse, Catalog, dict[str, Any]]) -> None:
    client, catalog, params = loaded
    sql = doc_queries()
    period: dict[str, datetime] = {"since": params["since"], "until": params["until"]}

    expected_cost = q.cost_by(client, "tenant", **period)
    assert len(expected_cost) == 2
    assert run(client, sql["cost_by_tenant"], params) == [
        (r.key, r.requests, r.prompt_tokens, r.completion_tokens, r.cost_usd,
         r.baseline_cost_usd) for r in expected_cost]

    detail = run(client, sql["cost_by_team_model_day"], params)
    assert sum(r[4] for r in detail) == 12
    assert sum((r[7] for r in detail), Decimal(0)) == sum(r.cost_usd for r in expected_cost)

    # The 3 re-delivered rows are counted again by the rollup (documented), so compare the
    # rollup query with the raw rows inserted: 12 + the 3 redelivered.
    rolled = {r[0]: r for r in run(client, sql["cost_by_model_rollup"], params)}
    assert sum(r[1] for r in rolled.values()) == 15
    models = {r.key: r for r in q.cost_by(client, "model", **period, source="rollup")}
    assert {k: (r[1], r[2], r[3]) for k, r in rolled.items()} == {
        k: (m.requests, m.completion_tokens, m.cost_usd) for k, m in models.items()}

    (saving,) = run(client, sql["savings"], params)
    (report,) = q.savings(client, catalog, **period)
    assert saving[:6] == (report.requests, report.cache_hits, report.batched_requests,
                          report.cost_usd, report.baseline_cost_usd, report.saved_usd)
    assert saving[6] == report.saved_by_cache_usd > 0
    assert saving[7] == report.saved_by_batching_usd > 0   # the batch ran on the baseline model
    assert saving[6] + saving[7] + saving[8] == report.saved_usd
    assert saving[7] + saving[8] == report.saved_by_batching_usd + report.saved_by_routing_usd

    def ttft(values: list[float]) -> list[float | None]:     # the SQL's nan: no TTFT known
        return [None if math.isnan(v) else v for v in values]

    lat = run(client, sql["latency_by_provider_model"], params)
    reported = q.latency(client, **period)
    assert [(p, m, n, *e, *pv, sn, *ttft(t)) for p, m, n, e, pv, sn, t in lat] == [
        (r.provider, r.model, r.samples, r.e2e_p50_ms, r.e2e_p95_ms, r.e2e_p99_ms,
         r.provider_p50_ms, r.provider_p95_ms, r.provider_p99_ms, r.streamed, r.ttft_p50_ms,
         r.ttft_p95_ms, r.ttft_p99_ms) for r in reported]
    assert sum(r.streamed for r in reported) == 3      # the broken stream is not ok
    lat_rollup = run(client, sql["latency_rollup"], params)
    assert [(p, m, n, sn, *ttft(t)) for p, m, n, _, _, sn, t in lat_rollup] == [
        (r.provider, r.model, r.samples, r.streamed, r.ttft_p50_ms, r.ttft_p95_ms,
         r.ttft_p99_ms) for r in q.latency(client, **period, source="rollup")]

    errors = run(client, sql["error_rates"], params)
    assert errors == [(e.code, e.errors, e.requests, pytest.approx(e.rate))
                      for e in q.error_rates(client, **period)]
    assert errors[0][:3] == ("rate_limited", 2, 12)

    mix = run(client, sql["routing_mix"], params)
    assert mix == [(r.route_rule, r.model, r.requests, pytest.approx(r.share), r.cost_usd)
                   for r in q.routing_mix(client, **period)]

    top = run(client, sql["top_users"], params)
    assert [(k, n, c) for k, n, c, _ in top] == [
        (t.key, t.requests, t.cost_usd) for t in q.top_spenders(client, "user", **period)]
    assert top[0][0] == "globex/u9"

    inputs = {r[0]: r for r in run(client, sql["reprice_inputs"], params)}
    priced = reprice(client, catalog, **period)
    assert {line.model: line.old_cost_usd for line in priced.lines} == {
        k: r[6] for k, r in inputs.items()}
    assert {r[5] for r in inputs.values()} == {catalog.price_version}
    # Re-priced under the prices it was billed with, unbatched rows cost the same again.
    assert priced.lines and all(
        line.new_cost_usd == line.old_cost_usd for line in priced.lines
        if line.model in ("deepseek-v3.2", "claude-sonnet-4.5", "gemini-2.5-flash"))


def test_reconcile_finds_the_double_counted_day_and_rebuild_fixes_it(
        loaded: tuple[ClickHouse, Catalog, dict[str, Any]]) -> None:
    client, _, params = loaded
    sql = doc_queries()
    (bad,) = run(client, sql["reconcile_daily"], params)
    assert bad[0] == params["day"] and (bad[1], bad[2]) == (12, 15)
    for _ in range(2):   # re-runnable: the second rebuild must not be dropped as a duplicate
        for statement in split_statements(sql["rebuild_daily"]):
            client.command(statement, params)
        assert run(client, sql["reconcile_daily"], params) == []
    assert client.query("SELECT sum(requests) FROM usage_daily").result_rows[0][0] == 12
    # The rebuild carries every rollup column, TTFT included: the day's rollup = raw again.
    period = {"since": params["since"], "until": params["until"]}
    assert [(r.model, r.streamed, r.ttft_p50_ms, r.ttft_p99_ms)
            for r in q.latency(client, **period, source="rollup")] == [
        (r.model, r.streamed, r.ttft_p50_ms, r.ttft_p99_ms) for r in q.latency(client, **period)]
