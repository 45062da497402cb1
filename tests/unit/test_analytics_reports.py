"""Analyst reports, rollups, re-pricing and the `report`/`reprice` commands against chDB.

Data sets are generated relative to "now" (whole UTC days/minutes) so the rollups' TTLs
(minute 35 days, day 5 years) never drop a part in the middle of a test.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from pipeline.analytics import queries as q
from pipeline.analytics.clickhouse import ClickHouse
from pipeline.analytics.rows import USAGE_COLUMNS, insert_settings, insert_usage, usage_row
from pipeline.analytics.migrate import apply_migrations
from pipeline.analytics.render import render_rows
from pipeline.analytics.report import analyst_report
from pipeline.analytics.reprice import reprice
from pipeline.catalog import Catalog, load_catalog
from pipeline.cli import main
from pipeline.config import config_path
from pipeline.events.models import Usage


REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "schemas" / "clickhouse"
DAY_MS = 86_400_000

#: DOMAIN.md §8: 50M output tokens a day for 30 days.
REFERENCE_MONTH_USD = {"gpt-4.1": Decimal(12000), "claude-sonnet-4.5": Decimal(22500),
                       "gemini-2.5-flash": Decimal(3750), "deepseek-v3.2": Decimal(630)}


@pytest.fixture
def ledger(chdb_client: ClickHouse) -> ClickHouse:
    apply_migrations(chdb_client, MIGRATIONS)
    return chdb_client


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def today_ms() -> int:
    now = datetime.now(timezone.utc)
    return int(datetime(now.year, now.month, now.day, tzinfo=timezone.utc).timestamp()) * 1000


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def usage(catalog: Catalog, request_id: str, created_at_ms: int, model: str, *,
          prompt: int = 0, completion: int = 0, cached: int = 0, batch: bool = False,
          status: str = "ok", error_code: str = "", cache: str = "miss", e2e_ms: int = 500,
          provider_ms: int = 400, ttft: int | None = None, **fields: Any) -> Usage:
    """One Usage; ``ttft`` (ms after created_at) makes it a streamed request."""
    ok = status == "ok"
    cost = catalog.cost_nanos(model, prompt, completion, cached, batch=batch) if ok else 0
    baseline = catalog.cost_nanos("gpt-4.1", prompt, completion, cached) if ok else 0
    if cache == "hit":
        cost = 0
    values: dict[str, Any] = dict(
        request_id=request_id, tenant="acme", team="search", end_user="u1",
        created_at_ms=created_at_ms, completed_at_ms=created_at_ms + e2e_ms, status=status,
        error_code=error_code, served_model=model if ok else "", routed_model=model,
        provider=model.split("-")[0], deployment=f"{model}-eu", route_rule="default",
        batch_id="b1" if batch else "", batch_size=8 if batch else 0, cache=cache,
        prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached,
        cost_nanos=cost, baseline_cost_nanos=baseline, price_version=catalog.price_version,
        provider_ms=provider_ms if cache != "hit" else 0,
        first_token_at_ms=0 if ttft is None else created_at_ms + ttft)
    values.update(fields)
    return Usage(**values)


# --- DOMAIN.md §8 reference figures ---------------------------------------------------------

def reference_month(catalog: Catalog) -> tuple[list[Usage], datetime, datetime]:
    """30 whole days ending yesterday: per model and day, 50 requests of 1M output tokens."""
    start = today_ms() - 30 * DAY_MS
    rows = []
    for day in range(30):
        for model in REFERENCE_MONTH_USD:
            for i in range(50):
                rows.append(usage(catalog, f"{model}-{day}-{i}", start + day * DAY_MS + i * 1000,
                                  model, completion=1_000_000, tenant=f"t-{model}",
                                  team=("red", "blue")[i % 2]))
    return rows, at(start), at(start + 30 * DAY_MS)


def test_reference_figures_of_domain_8(ledger: ClickHouse, catalog: Catalog,
                                       capsys: pytest.CaptureFixture[str],
                                       chdb_database: str) -> None:
    rows, since, until = reference_month(catalog)
    insert_usage(ledger, rows, dedup_token="ref:0")
    for source in ("raw", "rollup"):
        by_model = {r.key: r for r in q.cost_by(ledger, "model", since=since, until=until,
                                                source=source)}  # type: ignore[arg-type]
        assert {m: r.cost_usd for m, r in by_model.items()} == REFERENCE_MONTH_USD, source
        assert all(r.completion_tokens == 1_500_000_000 for r in by_model.values())
        days = q.cost_by(ledger, "day", since=since, until=until, source=source)  # type: ignore[arg-type]
        assert len(days) == 30 and {d.cost_usd for d in days} == {Decimal(1296)}
        teams = q.cost_by(ledger, "team", since=since, until=until, tenant="t-gpt-4.1",
                          source=source)  # type: ignore[arg-type]
        assert [(t.key, t.cost_usd) for t in teams] == [("t-gpt-4.1/blue", Decimal(6000)),
                                                        ("t-gpt-4.1/red", Decimal(6000))]
    top = q.top_spenders(ledger, limit=2, since=since, until=until)
    assert [(t.rank, t.key, t.cost_usd) for t in top] == [
        (1, "t-claude-sonnet-4.5", Decimal(22500)), (2, "t-gpt-4.1", Decimal(12000))]
    # A period that is not whole days still answers exactly (raw, or the minute rollup).
    half = q.cost_by(ledger, "model", since=since, until=since + timedelta(hours=12))
    assert {r.key: r.cost_usd for r in half}["gpt-4.1"] == Decimal(400)

    assert main(["report", "cost", "--by", "model", "--from", since.isoformat(),
                 "--to", until.isoformat(), "--dsn", chdb_database]) == 0
    out = capsys.readouterr().out
    assert "$12,000.000000" in out and "$22,500.000000" in out and "$630.000000" in out
    assert main(["report", "cost", "--by", "model", "--format", "json", "--source", "rollup",
                 "--dsn", chdb_database]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {d["key"]: d["cost_usd"] for d in doc} == {
        "claude-sonnet-4.5": "22500.000000000", "gpt-4.1": "12000.000000000",
        "gemini-2.5-flash": "3750.000000000", "deepseek-v3.2": "630.000000000"}
    assert main(["report", "cost", "--by", "day", "--format", "csv", "--dsn",
                 chdb_database]) == 0
    csv_lines = capsys.readouterr().out.splitlines()
    assert csv_lines[0].startswith("key,requests,") and len(csv_lines) == 31
    assert csv_lines[1].split(",")[5] == "1296.000000000"


# --- a mixed data set: every report, redelivery, rollups ------------------------------------

def mixed(catalog: Catalog, base_ms: int) -> list[Usage]:
    """Two tenants, several models, errors, cache hits and a batch, within 10 minutes; four
    requests streamed (two ok gpt-4.1, one deepseek, one that broke: status error)."""
    rows: list[Usage] = []
    spec = [  # (tenant, team, model, prompt, completion, cached, extra)
        ("acme", "search", "gpt-4.1", 1200, 300, 0, {"ttft": 70}),
        ("acme", "search", "gpt-4.1", 800, 200, 200, {"ttft": 90}),
        ("acme", "ads", "deepseek-v3.2", 1500, 600, 0, {"route_rule": "simple->cheap",
                                                        "ttft": 60}),
        ("acme", "ads", "gemini-2.5-flash", 2000, 700, 0, {"route_rule": "simple->cheap"}),
        ("acme", "ads", "gpt-4.1", 2000, 700, 0, {"cache": "hit"}),
        ("acme", "search", "gpt-4.1", 4000, 1000, 0, {"batch": True}),
        ("globex", "ops", "claude-sonnet-4.5", 3000, 900, 0, {"end_user": "u9"}),
        ("globex", "ops", "deepseek-v3.2", 100, 50, 0, {"route_rule": "simple->cheap"}),
        ("globex", "ops", "gpt-4.1", 0, 0, 0, {"status": "error",
                                               "error_code": "rate_limited"}),
        ("globex", "ops", "gpt-4.1", 0, 0, 0, {"status": "error",
                                               "error_code": "rate_limited"}),
        ("acme", "search", "gpt-4.1", 0, 0, 0, {"status": "rejected",
                                                "error_code": "budget_exceeded"}),
        ("acme", "search", "gpt-4.1", 0, 0, 0, {"status": "error", "error_code": "",
                                                "ttft": 30}),   # a stream that broke
    ]
    for i, (tenant, team, model, p, c, cached, extra) in enumerate(spec):
        rows.append(usage(catalog, f"m{i:02d}", base_ms + i * 45_000, model, prompt=p,
                          completion=c, cached=cached, tenant=tenant, team=team,
                          e2e_ms=100 + 97 * i, provider_ms=80 + 90 * i, **extra))
    return rows


RAW_REPORTS: list[tuple[str, dict[str, Any]]] = [
    ("cost", {"by": b}) for b in ("tenant", "team", "user", "model", "provider", "deployment",
                                  "rule", "day")
] + [("savings", {}), ("savings", {"by": "tenant"}), ("latency", {}),
     ("latency", {"by": "tenant"}), ("errors", {}), ("errors", {"by": "tenant"}),
     ("routing", {}), ("routing", {"by": "tenant"}), ("top", {}), ("top", {"by": "user"})]
ROLLUP_REPORTS: list[tuple[str, dict[str, Any]]] = [
    ("cost", {"by": b}) for b in ("tenant", "team", "model", "provider", "deployment", "rule",
                                  "day")
] + [("latency", {}), ("errors", {"by": "tenant"}), ("routing", {}), ("top", {"by": "team"})]


def snapshot(client: ClickHouse, catalog: Catalog, source: str,
             periods: list[tuple[datetime | None, datetime | None]]) -> dict[str, Any]:
    out = {}
    for since, until in periods:
        for name, kw in RAW_REPORTS if source == "raw" else ROLLUP_REPORTS:
            rows = analyst_report(client, name, since=since, until=until, source=source,
                                  catalog=catalog, **kw)
            out[f"{name} {kw} {since} {until}"] = [asdict(r) for r in rows]
    return out


def rollup_totals(client: ClickHouse) -> list[tuple[Any, ...]]:
    return [client.query(f"SELECT sum(requests), sum(cost_usd) FROM {t}").result_rows[0]
            for t in ("usage_minute", "usage_daily")]


def test_redelivery_leaves_every_report_unchanged(ledger: ClickHouse, catalog: Catalog) -> None:
    base = today_ms() - DAY_MS + 3_600_000           # yesterday 01:00 UTC: whole minutes
    rows = mixed(catalog, base)
    insert_usage(ledger, rows[:7], dedup_token="usage:0:0-6:a")
    insert_usage(ledger, rows[7:], dedup_token="usage:0:7-11:b")
    periods: list[tuple[datetime | None, datetime | None]] = [
        (None, None), (at(base - 3_600_000), at(base + 3 * 60_000)),
        (at(base - base % DAY_MS), at(base - base % DAY_MS + DAY_MS))]
    raw_before = snapshot(ledger, catalog, "raw", periods)
    rollup_before = snapshot(ledger, catalog, "rollup", periods)
    totals_before = rollup_totals(ledger)
    assert totals_before[0] == totals_before[1] == (12, sum(
        (Decimal(u.cost_nanos).scaleb(-9) for u in rows), Decimal(0)))

    # 1. The ledger retries a batch: same rows, same token -> dropped by usage AND rollups.
    insert_usage(ledger, rows[:7], dedup_token="usage:0:0-6:a")
    insert_usage(ledger, rows[7:], dedup_token="usage:0:7-11:b")
    assert ledger.query("SELECT count() FROM usage").result_rows[0][0] == 12
    assert rollup_totals(ledger) == totals_before
    assert snapshot(ledger, catalog, "raw", periods) == raw_before
    assert snapshot(ledger, catalog, "rollup", periods) == rollup_before

    # 2. Re-delivered after a crash, cut into other batches (new tokens): usage FINAL still
    #    counts each request once, so every (default, raw) report is unchanged.
    insert_usage(ledger, rows[:4], dedup_token="usage:0:0-3:c")
    insert_usage(ledger, rows[4:], dedup_token="usage:0:4-11:d")
    assert ledger.query("SELECT count() FROM usage").result_rows[0][0] == 24
    assert snapshot(ledger, catalog, "raw", periods) == raw_before
    ledger.command("OPTIMIZE TABLE usage FINAL")
    assert snapshot(ledger, catalog, "raw", periods) == raw_before
    # ... while the rollups count inserted rows (documented in 005 and docs/analytics.md).
    assert [t[0] for t in rollup_totals(ledger)] == [24, 24]


def test_rollup_target_without_its_own_window_double_counts_a_retry(
        ledger: ClickHouse, catalog: Catalog) -> None:
    """The control for the test above: it is the rollup's window that makes it pass."""
    ledger.command("CREATE TABLE bare_rollup (tenant String, requests SimpleAggregateFunction("
                   "sum, UInt64)) ENGINE = AggregatingMergeTree ORDER BY tenant")
    ledger.command("CREATE MATERIALIZED VIEW bare_rollup_mv TO bare_rollup AS SELECT tenant, "
                   "toUInt64(count()) AS requests FROM usage GROUP BY tenant")
    rows = mixed(catalog, today_ms() - DAY_MS)
    insert_usage(ledger, rows, dedup_token="t1")
    insert_usage(ledger, rows, dedup_token="t1")
    assert ledger.query("SELECT count() FROM usage").result_rows[0][0] == 12
    assert ledger.query("SELECT sum(requests) FROM bare_rollup").result_rows[0][0] == 24
    assert ledger.query("SELECT sum(requests) FROM usage_daily").result_rows[0][0] == 12


def test_rollups_agree_with_raw(ledger: ClickHouse, catalog: Catalog) -> None:
    base = today_ms() - DAY_MS + 7_200_000
    insert_usage(ledger, mixed(catalog, base), dedup_token="x")
    day = (at(base - base % DAY_MS), at(base - base % DAY_MS + DAY_MS))
    minutes = (at(base), at(base + 5 * 60_000))
    for since, until in (day, minutes, (None, None)):
        for name, kw in ROLLUP_REPORTS:
            raw = analyst_report(ledger, name, since=since, until=until, **kw)
            rolled = analyst_report(ledger, name, since=since, until=until, source="rollup",
                                    **kw)
            if name == "latency":
                assert [(r.provider, r.model, r.samples, r.streamed) for r in raw] == [
                    (r.provider, r.model, r.samples, r.streamed) for r in rolled]
                assert [(r.ttft_p50_ms, r.ttft_p95_ms, r.ttft_p99_ms) for r in raw] == [
                    (r.ttft_p50_ms, r.ttft_p95_ms, r.ttft_p99_ms) for r in rolled]
                # Under 8,192 samples the rollup's state holds every value: same answer.
                for a, b in zip(raw, rolled):
                    assert (a.e2e_p50_ms, a.e2e_p95_ms, a.e2e_p99_ms, a.provider_p99_ms) == \
                        pytest.approx((b.e2e_p50_ms, b.e2e_p95_ms, b.e2e_p99_ms,
                                       b.provider_p99_ms))
            else:
                assert raw == rolled, (name, kw, since)


def test_report_contents_on_the_mixed_set(ledger: ClickHouse, catalog: Catalog) -> None:
    base = today_ms() - DAY_MS
    rows = mixed(catalog, base)
    insert_usage(ledger, rows, dedup_token="x")

    errors = q.error_rates(ledger)
    assert [(e.code, e.errors, e.requests) for e in errors] == [
        ("rate_limited", 2, 12), ("(error)", 1, 12), ("budget_exceeded", 1, 12)]
    assert errors[0].rate == pytest.approx(2 / 12)
    by_tenant = {(e.key, e.code): e.rate for e in q.error_rates(ledger, "tenant")}
    assert by_tenant[("globex", "rate_limited")] == pytest.approx(2 / 4)

    mix = {(r.route_rule, r.model): r for r in q.routing_mix(ledger)}
    assert mix[("simple->cheap", "deepseek-v3.2")].requests == 2
    assert mix[("simple->cheap", "deepseek-v3.2")].share == pytest.approx(2 / 12)
    assert sum(r.share for r in mix.values()) == pytest.approx(1.0)

    lat = {(r.provider, r.model): r for r in q.latency(ledger)}
    gpt = lat[("gpt", "gpt-4.1")]
    assert gpt.samples == 4              # rows 0, 1, 4 (cache hit) and 5; errors excluded
    e2e = sorted(100 + 97 * i for i in (0, 1, 4, 5))
    assert gpt.e2e_p50_ms == pytest.approx((e2e[1] + e2e[2]) / 2)
    # provider ms 80, 170, 0 (the hit), 530: h = 3 * 0.99 between 170 and 530.
    assert gpt.provider_p99_ms == pytest.approx(170 + 0.97 * (530 - 170))
    # TTFT over the streamed ok rows only (70 and 90 ms; the broken stream is an error).
    assert gpt.streamed == 2
    assert (gpt.ttft_p50_ms, gpt.ttft_p95_ms, gpt.ttft_p99_ms) == pytest.approx((80, 89, 89.8))
    deepseek = lat[("deepseek", "deepseek-v3.2")]
    assert (deepseek.samples, deepseek.streamed, deepseek.ttft_p99_ms) == (2, 1, 60.0)
    claude = lat[("claude", "claude-sonnet-4.5")]
    assert (claude.streamed, claude.ttft_p50_ms, claude.ttft_p99_ms) == (0, None, None)

    top = q.top_spenders(ledger, "user", limit=1)
    assert top[0].key == "globex/u9"
    assert top[0].cost_usd == Decimal(catalog.cost_nanos("claude-sonnet-4.5", 3000, 900)
                                      ).scaleb(-9)


def test_savings_split_into_routing_batching_and_cache(ledger: ClickHouse,
                                                       catalog: Catalog) -> None:
    base = today_ms() - DAY_MS
    rows = [
        usage(catalog, "routed", base, "deepseek-v3.2", prompt=10_000, completion=2_000),
        usage(catalog, "cached", base + 1, "gpt-4.1", prompt=10_000, completion=2_000,
              cache="hit"),
        usage(catalog, "batched", base + 2, "gpt-4.1", prompt=10_000, completion=2_000,
              batch=True),
        usage(catalog, "plain", base + 3, "gpt-4.1", prompt=10_000, completion=2_000),
    ]
    insert_usage(ledger, rows, dedup_token="s")
    full = Decimal(catalog.cost_nanos("gpt-4.1", 10_000, 2_000)).scaleb(-9)   # $0.036
    cheap = Decimal(catalog.cost_nanos("deepseek-v3.2", 10_000, 2_000)).scaleb(-9)
    (row,) = q.savings(ledger, catalog)
    assert (row.requests, row.cache_hits, row.batched_requests) == (4, 1, 1)
    assert row.saved_by_cache_usd == full
    assert row.saved_by_batching_usd == full / 2
    assert row.saved_by_routing_usd == full - cheap
    assert row.saved_usd == row.saved_by_cache_usd + row.saved_by_batching_usd + \
        row.saved_by_routing_usd == row.baseline_cost_usd - row.cost_usd
    assert full == Decimal("0.036")
    text = render_rows([row], "table", "savings")
    assert "$0.036000" in text and "$0.018000" in text


def test_report_command_errors_are_clean(ledger: ClickHouse, chdb_database: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "cost", "--from", "yesterday", "--dsn", chdb_database]) == 2
    assert "ISO 8601" in capsys.readouterr().err
    assert main(["report", "cost", "--by", "user", "--source", "rollup",
                 "--dsn", chdb_database]) == 2
    assert "no 'user' dimension" in capsys.readouterr().err
    assert main(["report", "savings", "--source", "rollup", "--dsn", chdb_database]) == 2
    assert main(["report", "cost", "--source", "rollup", "--from", "2026-11-01T00:00:30Z",
                 "--dsn", chdb_database]) == 2
    assert "whole minutes" in capsys.readouterr().err
    assert main(["report", "top", "--dsn", chdb_database]) == 0
    assert "(no rows)" in capsys.readouterr().out


# --- time to first token (007) ---------------------------------------------------------------

def test_ttft_is_known_only_for_streamed_rows_with_sane_times(
        ledger: ClickHouse, catalog: Catalog, chdb_database: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    base = today_ms() - DAY_MS + 600_000
    rows = [usage(catalog, f"s{i}", base + i, "gpt-4.1", ttft=t, e2e_ms=900)
            for i, t in enumerate((100, 200, 300, 400, 0))]             # 0: first delta at once
    rows += [
        usage(catalog, "plain", base, "gpt-4.1"),                       # not streamed
        usage(catalog, "skewed", base, "gpt-4.1", ttft=-50),            # before created_at
        usage(catalog, "late", base, "gpt-4.1", ttft=950, e2e_ms=900),  # after completed_at
        usage(catalog, "moved", 1_000, "gpt-4.1", completed_at_ms=base + 900,
              first_token_at_ms=base + 100),                            # created_at moved (006)
        usage(catalog, "broken", base, "gpt-4.1", ttft=10, status="error"),
        usage(catalog, "claude-plain", base, "claude-sonnet-4.5"),
    ]
    insert_usage(ledger, rows, dedup_token="ttft")
    stored = dict(ledger.query("SELECT request_id, ttft_ms FROM usage FINAL").result_rows)
    assert stored == {"s0": 100, "s1": 200, "s2": 300, "s3": 400, "s4": 0, "plain": None,
                      "skewed": None, "late": None, "moved": None, "broken": 10,
                      "claude-plain": None}
    (kind, typ), = ledger.query(
        "SELECT default_kind, type FROM system.columns WHERE database = currentDatabase() "
        "AND table = 'usage' AND name = 'ttft_ms'").result_rows
    assert (kind, typ) == ("MATERIALIZED", "Nullable(UInt32)")

    for source in ("raw", "rollup"):
        claude, gpt = q.latency(ledger, source=source)  # type: ignore[arg-type]
        assert (gpt.samples, gpt.streamed) == (9, 5), source
        # 0, 100, 200, 300, 400: h = 4p, linear between closest ranks
        assert (gpt.ttft_p50_ms, gpt.ttft_p95_ms, gpt.ttft_p99_ms) == pytest.approx(
            (200, 380, 396)), source
        assert (claude.model, claude.streamed, claude.ttft_p50_ms) == (
            "claude-sonnet-4.5", 0, None), source

    assert main(["report", "latency", "--dsn", chdb_database]) == 0
    table = capsys.readouterr().out.splitlines()
    header = table[2].split()
    assert header[-4:] == ["streamed", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms"]
    assert table[3].split()[-4:] == ["0", "-", "-", "-"]                 # claude
    assert table[4].split()[-4:] == ["5", "200.0", "380.0", "396.0"]     # gpt-4.1
    assert "streamed: ok requests with a known time to first token" in table[-1]
    assert main(["report", "latency", "--format", "json", "--source", "rollup",
                 "--dsn", chdb_database]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(d["model"], d["streamed"], d["ttft_p50_ms"]) for d in doc] == [
        ("claude-sonnet-4.5", 0, None), ("gpt-4.1", 5, 200.0)]
    assert main(["report", "latency", "--format", "csv", "--dsn", chdb_database]) == 0
    csv_lines = capsys.readouterr().out.splitlines()
    assert csv_lines[0].endswith(",streamed,ttft_p50_ms,ttft_p95_ms,ttft_p99_ms")
    assert csv_lines[1].endswith(",0,,,")


def test_ttft_migration_on_a_ledger_that_has_rows(chdb_client: ClickHouse, catalog: Catalog,
                                                  tmp_path: Path) -> None:
    """007 over existing rows: usage computes their ttft_ms on read; the rollups' new
    columns count only what is inserted after it (documented); re-running 007 changes
    nothing, and the views still write every measure once."""
    from pipeline.analytics.migrate import load_migrations
    early = tmp_path / "early"
    early.mkdir()
    # (with 008 to 010 too: today's writer inserts the columns they add, independent of 007)
    for path in sorted(MIGRATIONS.glob("00[1-6]_*.sql")) + [
            MIGRATIONS / "008_usage_cache.sql", MIGRATIONS / "009_usage_cache_cost.sql",
            MIGRATIONS / "010_usage_context.sql"]:
        (early / path.name).write_bytes(path.read_bytes())
    apply_migrations(chdb_client, early)
    base = today_ms() - DAY_MS + 600_000
    insert_usage(chdb_client, [usage(catalog, "old", base, "gpt-4.1", ttft=120)], "before-007")
    assert apply_migrations(chdb_client, MIGRATIONS) == ["007_usage_ttft"]
    (ttft,) = [m for m in load_migrations(MIGRATIONS) if m.name == "007_usage_ttft"]
    for statement in ttft.statements:                     # as after a half-failed first run
        chdb_client.command(statement)
    insert_usage(chdb_client, [usage(catalog, "new", base, "gpt-4.1", ttft=80)], "after-007")
    assert dict(chdb_client.query("SELECT request_id, ttft_ms FROM usage FINAL").result_rows
                ) == {"old": 120, "new": 80}
    (raw,) = q.latency(chdb_client)
    assert (raw.samples, raw.streamed, raw.ttft_p50_ms) == (2, 2, 100.0)
    for table in ("usage_minute", "usage_daily"):
        assert chdb_client.query(
            f"SELECT sum(requests), sum(streamed_requests), "
            f"quantilesMerge(0.5, 0.95, 0.99)(ttft_ms) FROM {table}").result_rows[0] == (
            2, 1, [80.0, 80.0, 80.0]), table
    (rolled,) = q.latency(chdb_client, source="rollup")
    assert (rolled.samples, rolled.streamed, rolled.ttft_p50_ms) == (2, 1, 80.0)


# --- re-pricing ------------------------------------------------------------------------------

def write_prices(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    doc = yaml.safe_load(config_path("catalog.yaml").read_text())
    change(doc)
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_reprice_a_period_under_new_prices(ledger: ClickHouse, catalog: Catalog, tmp_path: Path,
                                           chdb_database: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rows, since, until = reference_month(catalog)
    rows.append(usage(catalog, "mystery", int(since.timestamp() * 1000) + 5, "gpt-4.1",
                      completion=1000, served_model="legacy-model", cost_nanos=123))
    insert_usage(ledger, rows, dedup_token="ref:0")
    insert_usage(ledger, rows[:100], dedup_token="ref:redelivered")  # counted once (FINAL)

    def cut(doc: dict[str, Any]) -> None:
        doc["price_version"] = "2027-01-01"
        doc["models"]["gpt-4.1"]["output_per_mtok"] = "6.40"          # -20%
        doc["models"]["deepseek-v3.2"]["output_per_mtok"] = "0.50"
    prices = write_prices(tmp_path, cut)
    result = reprice(ledger, load_catalog(prices), since=since, until=until)
    lines = {line.model: line for line in result.lines}
    assert lines["gpt-4.1"].old_cost_usd == Decimal(12000)
    assert lines["gpt-4.1"].new_cost_usd == Decimal(9600)
    assert lines["gpt-4.1"].difference_usd == Decimal(-2400)
    assert lines["gpt-4.1"].old_price_versions == catalog.price_version
    assert lines["deepseek-v3.2"].new_cost_usd == Decimal(750)
    assert lines["claude-sonnet-4.5"].difference_usd == 0
    assert not lines["legacy-model"].priced
    assert lines["legacy-model"].new_cost_usd == lines["legacy-model"].old_cost_usd == \
        Decimal("0.000000123")
    assert result.old_cost_usd == Decimal("38880.000000123")
    assert result.difference_usd == Decimal(-2400 + 120)
    # Nothing was written: the ledger still bills the old prices.
    assert q.cost_by(ledger, "model", since=since, until=until)[0].cost_usd == Decimal(22500)

    assert main(["reprice", "--from", since.date().isoformat(), "--to",
                 until.date().isoformat(), "--prices", str(prices),
                 "--dsn", chdb_database]) == 0
    out = capsys.readouterr().out
    assert "reprice under 2027-01-01" in out and "difference -$2,280.000000" in out
    assert "kept at old cost (not in the price file): legacy-model" in out
    assert main(["reprice", "--prices", str(prices), "--format", "json",
                 "--dsn", chdb_database]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["difference_usd"] == "-2280.000000000" and doc["price_version"] == "2027-01-01"
    assert main(["reprice", "--prices", str(tmp_path / "missing.yaml"),
                 "--dsn", chdb_database]) == 2


def test_different_batches_with_identical_rollup_rows_are_all_counted(
        ledger: ClickHouse, catalog: Catalog) -> None:
    """The rollups' dedup window must not eat a NEW batch whose rollup block happens to equal
    an earlier one (same minute, dimensions, tokens and cost; other request ids)."""
    minute = today_ms() - DAY_MS + 600_000
    twins = [usage(catalog, f"twin-{i}", minute, "gpt-4.1", prompt=100, completion=10)
             for i in range(4)]
    insert_usage(ledger, twins[:1], dedup_token="a")
    insert_usage(ledger, twins[1:2], dedup_token="b")
    insert_usage(ledger, twins[2:3], dedup_token=None)
    insert_usage(ledger, twins[3:4], dedup_token=None)
    for table in ("usage_minute", "usage_daily"):
        assert ledger.query(f"SELECT sum(requests) FROM {table}").result_rows[0][0] == 4, table
    assert [r.requests for r in q.cost_by(ledger, source="rollup")] == [4]


# --- migrations 004/005 --------------------------------------------------------------------

def test_retention_and_rollup_dedup_windows_are_in_the_schema(ledger: ClickHouse) -> None:
    def create(table: str) -> str:
        return str(ledger.command(f"SHOW CREATE TABLE {table}"))
    assert "TTL toDateTime(inserted_at) + toIntervalDay(400)" in create("usage")
    for table in ("usage_minute", "usage_daily"):
        assert "non_replicated_deduplication_window = 1000" in create(table), table
    assert "TTL minute + toIntervalDay(35)" in create("usage_minute")
    assert "TTL day + toIntervalYear(5)" in create("usage_daily")


def test_rollup_migration_backfills_existing_rows_once(chdb_client: ClickHouse,
                                                       catalog: Catalog,
                                                       tmp_path: Path) -> None:
    from pipeline.analytics.migrate import load_migrations
    early = tmp_path / "early"
    early.mkdir()
    for path in sorted(MIGRATIONS.glob("00[1-4]_*.sql")):
        (early / path.name).write_bytes(path.read_bytes())
    apply_migrations(chdb_client, early)
    rows = mixed(catalog, today_ms() - DAY_MS)

    later = {"claimed_created_at_ms", "cache_kind", "cache_saved_usd",      # 006, 008
             "cache_cost_usd",                                            # 009
             "context_tokens_before", "context_tokens_after",             # 010
             "context_saved_usd", "for_request_id"}
    keep = [i for i, c in enumerate(USAGE_COLUMNS) if c not in later]

    def insert_before_006(usages, token):        # the columns of that time
        chdb_client.insert("usage", [[usage_row(u)[i] for i in keep] for u in usages],
                           column_names=[USAGE_COLUMNS[i] for i in keep],
                           settings=insert_settings(token))

    insert_before_006(rows, "before-005")
    insert_before_006(rows[:5], "redelivered-before-005")  # FINAL: once
    (rollups,) = [m for m in load_migrations(MIGRATIONS) if m.name == "005_usage_rollups"]
    (early / rollups.path.name).write_bytes(rollups.path.read_bytes())
    assert apply_migrations(chdb_client, early) == ["005_usage_rollups"]
    expected = (12, sum((Decimal(u.cost_nanos).scaleb(-9) for u in rows), Decimal(0)))
    assert rollup_totals(chdb_client) == [expected, expected]
    # A re-run of 005 (as after a half-failed first run, so before any later migration:
    # its backfill is a positional INSERT of the rollups' 005 columns) must not backfill
    # again.
    for statement in rollups.statements:
        chdb_client.command(statement)
    assert rollup_totals(chdb_client) == [expected, expected]
    later = apply_migrations(chdb_client, MIGRATIONS)
    assert later[0] == "006_usage_claimed_created_at" and "007_usage_ttft" in later
    assert rollup_totals(chdb_client) == [expected, expected]
    assert [r.cost_usd for r in q.cost_by(chdb_client, source="rollup")] == [
        r.cost_usd for r in q.cost_by(chdb_client)]


def test_cache_report_counts_hits_by_kind_and_money_saved(ledger: ClickHouse,
                                                          catalog: Catalog) -> None:
    base = today_ms() - DAY_MS + 600_000
    saved = catalog.cost_nanos("gpt-4o-mini", 100, 50)
    rows = [usage(catalog, "m1", base, "gpt-4o-mini", prompt=100, completion=50),
            usage(catalog, "h1", base + 1, "gpt-4o-mini", prompt=100, completion=50,
                  cache="hit", cache_kind="exact", cache_saved_nanos=saved),
            usage(catalog, "h2", base + 2, "gpt-4o-mini", prompt=100, completion=50,
                  cache="hit", cache_kind="semantic", cache_saved_nanos=saved,
                  cache_cost_nanos=140),                  # a provider embedding
            usage(catalog, "b1", base + 3, "gpt-4o-mini", prompt=100, completion=50,
                  cache="bypass"),
            usage(catalog, "g1", base + 4, "gpt-4o-mini", prompt=100, completion=50,
                  tenant="globex")]
    insert_usage(ledger, rows, "cache-report")
    by_tenant = {r.key: r for r in q.cache(ledger)}
    acme = by_tenant["acme"]
    assert (acme.requests, acme.exact_hits, acme.semantic_hits, acme.bypassed) == (4, 1, 1, 1)
    assert acme.hit_rate == 0.5 and acme.saved_usd == Decimal(2 * saved).scaleb(-9)
    assert acme.lookup_usd == Decimal(140).scaleb(-9)
    assert by_tenant["globex"].exact_hits == 0 and by_tenant["globex"].saved_usd == 0
    assert analyst_report(ledger, "cache") == q.cache(ledger)


def test_context_report_sums_tokens_and_money_saved_and_the_summaries_cost(
        ledger: ClickHouse, catalog: Catalog) -> None:
    base = today_ms() - DAY_MS + 700_000
    saved = catalog.cost_nanos("gpt-4.1", 500, 0)
    rows = [usage(catalog, "c1", base, "gpt-4.1", prompt=400, completion=50,
                  tenant="ctx", context_tokens_before=900, context_tokens_after=400,
                  context_saved_nanos=saved),
            usage(catalog, "c1:summary", base, "gpt-4o-mini", prompt=600, completion=80,
                  tenant="ctx", route_rule="context-summary", for_request_id="c1"),
            usage(catalog, "c2", base + 1, "gpt-4.1", prompt=300, completion=50, tenant="ctx"),
            usage(catalog, "p1", base + 2, "gpt-4.1", prompt=300, completion=50, tenant="other")]
    insert_usage(ledger, rows, "context-report")
    (row,) = q.context(ledger, tenant="ctx")
    assert (row.key, row.compressed, row.tokens_before, row.tokens_after) == ("ctx", 1, 900, 400)
    assert row.saved_usd == Decimal(saved).scaleb(-9) and row.summaries == 1
    assert row.summary_cost_usd == Decimal(rows[1].cost_nanos).scaleb(-9)
    assert round(row.cut, 4) == round(1 - 400 / 900, 4)
    assert [r.key for r in q.context(ledger)] == ["ctx"]     # tenants without it: no row
    assert analyst_report(ledger, "context", tenant="ctx") == [row]
