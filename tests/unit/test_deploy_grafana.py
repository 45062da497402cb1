"""deploy/grafana/: every dashboard loads, points only at provisioned data sources, asks
Prometheus only for the metrics the workers and gateway export (names and labels as
specified in issue 20), and every ClickHouse panel's SQL runs against a chDB ledger with
the migrations applied, on rows that make each panel show something."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from pipeline import metrics
from pipeline.analytics.clickhouse import ClickHouse
from pipeline.analytics.migrate import apply_migrations
from pipeline.analytics.rows import insert_alerts, insert_usage
from pipeline.events.models import Alert, Usage

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
MIGRATIONS = REPO / "schemas" / "clickhouse"

# name -> labels; histograms also export _bucket (with le), _sum and _count.
# what the worker and the gateway really serve (pipeline/metrics.py)
METRICS: dict[str, frozenset[str]] = metrics.LABELS
HISTOGRAMS = metrics.HISTOGRAMS
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def provisioned() -> dict[str, str]:
    """uid -> type of every provisioned data source."""
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "llmpipe.yaml").read_text())
    return {d["uid"]: d["type"] for d in doc["datasources"]}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield from panel.get("panels", [])
        if panel["type"] != "row":
            yield panel


def targets(kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            for target in panel["targets"]:
                if target["datasource"]["type"] == kind:
                    yield f"{path.stem}: {panel['title']}", target


PROM_TARGETS = dict(targets("prometheus"))
CH_TARGETS = dict(targets("grafana-clickhouse-datasource"))


def test_provisioning_names_the_two_sources_and_no_secret() -> None:
    assert provisioned() == {"prometheus": "prometheus", "clickhouse": "grafana-clickhouse-datasource"}
    text = (GRAFANA / "provisioning" / "datasources" / "llmpipe.yaml").read_text()
    doc = yaml.safe_load(text)
    [ch] = [d for d in doc["datasources"] if d["uid"] == "clickhouse"]
    assert ch["secureJsonData"]["password"] == "${CLICKHOUSE_PASSWORD}"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "llmpipe.yaml").read_text())
    assert [p["type"] for p in providers["providers"]] == ["file"]


def test_dashboards_load_and_reference_only_provisioned_sources() -> None:
    sources = provisioned()
    assert [p.name for p in DASHBOARDS] == ["llmpipe-cost.json", "llmpipe-health.json"]
    uids = set()
    for path in DASHBOARDS:
        dashboard = load(path)
        uids.add(dashboard["uid"])
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), path.name
        refs = [v["datasource"] for v in dashboard["templating"]["list"] if "datasource" in v]
        for panel in panels(dashboard):
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            refs += [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]
        for ref in refs:
            assert sources.get(ref["uid"]) == ref["type"], f"{path.name}: {ref}"
    assert len(uids) == len(DASHBOARDS)
    assert len(PROM_TARGETS) >= 20 and len(CH_TARGETS) >= 12


@pytest.mark.parametrize("name", sorted(PROM_TARGETS))
def test_prometheus_queries_ask_for_exported_metrics_and_labels(name: str) -> None:
    expr = PROM_TARGETS[name]["expr"]
    assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
    metrics = set()
    for found in re.findall(r"\bllmpipe_[a-z_]+", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", found)
        if base != found:
            assert base in HISTOGRAMS, f"{found}: {base} is not a histogram"
        assert base in METRICS, f"{name}: unknown metric {found}"
        metrics.add(base)
        if base in HISTOGRAMS:
            assert found != base, f"{name}: a histogram is read through _bucket/_sum/_count"
    assert metrics
    labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {l.strip() for l in group.split(",") if l.strip()}
    allowed = set().union(*(METRICS[m] for m in metrics)) | {"le"}
    assert labels - allowed - PROMQL_WORDS == set(), name
    legend = set(re.findall(r"\{\{(\w+)\}\}", PROM_TARGETS[name].get("legendFormat", "")))
    assert legend <= labels, f"{name}: legend names labels the query drops"


# --- ClickHouse panels on a chDB ledger -------------------------------------------------------

NOW = datetime.now(timezone.utc).replace(microsecond=0)
FROM, TO = NOW - timedelta(hours=6), NOW + timedelta(minutes=1)
INTERVAL_S = 60


def expand_macros(sql: str) -> str:
    """The ClickHouse plugin's macros (grafana-clickhouse-datasource 4.x) with a fixed period."""
    start, end = int(FROM.timestamp()), int(TO.timestamp())
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 rf"\1 >= toDateTime({start}) AND \1 <= toDateTime({end})", sql)
    sql = re.sub(r"\$__timeInterval\((\w+)\)",
                 rf"toStartOfInterval(toDateTime(\1), INTERVAL {INTERVAL_S} second)", sql)
    sql = sql.replace("$__fromTime", f"toDateTime({start})").replace("$__toTime", f"toDateTime({end})")
    sql = sql.replace("$__interval_s", str(INTERVAL_S))
    assert "$" not in sql, f"a macro or variable this test does not know: {sql}"
    return sql


def ms(minutes_ago: int) -> int:
    return int((NOW - timedelta(minutes=minutes_ago)).timestamp() * 1000)


USD = 1_000_000_000     # nano-dollars


def seed_rows() -> tuple[list[Usage], list[Alert]]:
    def usage(rid: str, minutes_ago: int, **fields: Any) -> Usage:
        base = dict(request_id=rid, tenant="acme", team="search", end_user="u1",
                    created_at_ms=ms(minutes_ago), completed_at_ms=ms(minutes_ago) + 800,
                    status="ok", served_model="gpt-4o-mini", routed_model="gpt-4o-mini",
                    provider="openai", deployment="gpt-4o-mini-eu", route_rule="default",
                    prompt_tokens=1000, completion_tokens=200, cost_nanos=2 * USD,
                    baseline_cost_nanos=10 * USD, price_version="test")
        return Usage(**{**base, **fields})

    rows = [
        usage("r1", 30),
        usage("r2", 20, tenant="globex", team="ops", end_user="u9", served_model="claude-sonnet-4.5",
              provider="anthropic", cost_nanos=8 * USD, baseline_cost_nanos=8 * USD),
        usage("r3", 10, cache="hit", cache_kind="exact", cost_nanos=0, cache_saved_nanos=2 * USD),
        usage("r4", 5, batch_id="b1", batch_size=4, cost_nanos=1 * USD),
        usage("r5", 3, context_tokens_before=5000, context_tokens_after=1000,
              context_saved_nanos=USD // 2),
        usage("r5-summary", 3, for_request_id="r5", cost_nanos=USD // 10, baseline_cost_nanos=USD // 10),
        usage("r6", 60 * 24 * 2),                                # outside the period
        usage("r1", 30),                                         # re-delivered: counts once (FINAL)
    ]
    alerts = [Alert(alert_id="a1", rule="cost_spike", state="firing", value="12.5", threshold="10",
                    at_ms=ms(15), severity="warning", tenant="acme", subject="acme", window="1h",
                    message="spend above threshold"),
              Alert(alert_id="a2", rule="cost_spike", state="resolved", value="3", threshold="10",
                    at_ms=ms(2), severity="warning", tenant="acme", subject="acme", window="1h")]
    return rows, alerts


@pytest.fixture
def ledger(chdb_client: ClickHouse) -> ClickHouse:
    apply_migrations(chdb_client, MIGRATIONS)
    rows, alerts = seed_rows()
    insert_usage(chdb_client, rows[:-1], dedup_token="grafana:0")
    insert_usage(chdb_client, rows[-1:], dedup_token="grafana:1")
    insert_alerts(chdb_client, alerts, dedup_token="grafana:alerts")
    return chdb_client


def test_clickhouse_panels_read_deduplicated_tables() -> None:
    for name, target in CH_TARGETS.items():
        sql = target["rawSql"]
        for table in re.findall(r"\bFROM\s+(\w+)(?!\s+FINAL)\b", sql):
            assert table not in ("usage", "alerts"), f"{name}: read {table} with FINAL"
        assert target["editorType"] == "sql" and target["queryType"] in ("table", "timeseries")


def test_every_clickhouse_panel_runs_on_the_ledger(ledger: ClickHouse) -> None:
    empty = []
    for name, target in sorted(CH_TARGETS.items()):
        try:
            result = ledger.query(expand_macros(target["rawSql"]))
        except Exception as exc:             # name the panel, not only the SQL error
            raise AssertionError(f"{name}: {exc}") from exc
        if not result.result_rows:
            empty.append(name)
    assert empty == []


def panel_rows(ledger: ClickHouse, title: str) -> list[dict[str, Any]]:
    [target] = [t for n, t in CH_TARGETS.items() if n.endswith(f": {title}")]
    result = ledger.query(expand_macros(target["rawSql"]))
    return [dict(zip(result.column_names, row)) for row in result.result_rows]


def test_panels_show_the_ledger_figures(ledger: ClickHouse) -> None:
    [spend] = panel_rows(ledger, "Spend, baseline and saved")
    # r1 2 + r2 8 + r3 0 + r4 1 + r5 2 + summary 0.1; the re-delivered r1 and the old r6 do not count
    assert (spend["cost_usd"], spend["baseline_cost_usd"], spend["saved_usd"]) == (
        Decimal("13.1"), Decimal("48.1"), Decimal("35"))
    by_tenant = {r["tenant"]: r for r in panel_rows(ledger, "Cost by tenant")}
    assert by_tenant["acme"]["requests"] == 5 and by_tenant["globex"]["cost_usd"] == 8
    [cache] = [r for r in panel_rows(ledger, "Response cache by tenant") if r["tenant"] == "acme"]
    assert (cache["exact_hits"], cache["saved_usd"]) == (1, 2)
    [context] = panel_rows(ledger, "Context tokens saved by tenant")
    assert (context["tokens_saved"], context["summaries"]) == (4000, 1)
    [rule] = panel_rows(ledger, "Alert firings by rule")
    assert (rule["firings"], rule["resolutions"]) == (1, 1)
    top = panel_rows(ledger, "Top spenders (end users)")
    assert top[0]["user"] == "globex/u9"
