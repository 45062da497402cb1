"""The usage ledger against the real ClickHouse engine (chDB): schema, exact money,
idempotent inserts, the batched writer and the dev report.

All tests share one chDB path (``tests/chdb_fixture.py``) and get a fresh database each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import fields
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Awaitable, Callable, Sequence

import pytest

from pipeline.agents.ledger import USAGE_VIEW_COLUMNS, SinkConsumer, count_by, usage_rows
from pipeline.analytics.clickhouse import (
    FAULT_FILE_ENV,
    ClickHouse,
    ClickHouseError,
    connect,
    redact_dsn,
)
from pipeline.analytics.rows import ALERT_COLUMNS, ALERTS_SINK, DEAD_LETTER_COLUMNS, DEAD_LETTERS_SINK, USAGE_COLUMNS, USAGE_SINK, insert_alerts, insert_dead_letters, insert_usage, usage_row
from pipeline.analytics.writer import InsertRetry, LedgerBufferFull, LedgerFlushError, LedgerWriter
from pipeline.catalog import nanos_to_usd
from pipeline.analytics.migrate import (
    ENV_DIRECTORY,
    MigrationError,
    apply_migrations,
    default_directory,
    split_statements,
)
from pipeline.analytics.devreport import count_usage, dev_report
from pipeline.analytics.render import format_usd
from pipeline.events.codec import DecodeError
from pipeline.events.models import Alert, DeadLetter, Usage
from pipeline.resilience.retry import RetryPolicy

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "schemas" / "clickhouse"
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z, epoch ms
RECENT_MS = 4_102_444_800_000 - 1  # 2099-12-31T23:59:59.999Z: never past the 90-day TTL


@pytest.fixture
def ledger(chdb_client: ClickHouse) -> ClickHouse:
    apply_migrations(chdb_client, MIGRATIONS)
    return chdb_client


def make_usage(request_id: str, **overrides: Any) -> Usage:
    values: dict[str, Any] = dict(
        request_id=request_id, tenant="acme", created_at_ms=T0, completed_at_ms=T0 + 300,
        status="ok", served_model="gpt-4.1", provider="openai", deployment="openai-eu",
        prompt_tokens=100, completion_tokens=50, cost_nanos=600_000, provider_ms=250,
        pipeline_ms=40)
    values.update(overrides)
    return Usage(**values)


def raw_count(client: ClickHouse, table: str = "usage") -> int:
    return client.query(f"SELECT count() FROM {table}").result_rows[0][0]


def percentile_linear(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks, h = (n - 1) * p (numpy 'linear')."""
    ordered = sorted(values)
    h = (len(ordered) - 1) * p
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


# --- chDB engine rules (documented in pipeline/analytics/clickhouse.py) ----------------------

PATH_RULES_SCRIPT = textwrap.dedent("""
    import json, subprocess, sys
    import clickhouse_connect
    from pipeline.analytics.clickhouse import ClickHouseError, connect
    base = sys.argv[1]
    out = {}
    a = connect(f"chdb://{base}/a")
    a.command("CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x")
    a.insert("t", [[7]], ["x"])
    a2 = connect(f"chdb://{base}/a")
    out["same_path_twice"] = a2.query("SELECT x FROM t").result_rows[0][0]
    try:
        connect(f"chdb://{base}/b")
        out["two_paths_at_once"] = "opened"
    except ClickHouseError as exc:
        out["two_paths_at_once"] = str(exc)
    try:
        clickhouse_connect.get_client(dsn=f"chdb://{base}/b")
        out["engine_two_paths_at_once"] = "opened"
    except Exception as exc:
        out["engine_two_paths_at_once"] = str(exc)
    probe = ("from pipeline.analytics.clickhouse import connect\\n"
             f"connect('chdb://{base}/a').query('SELECT 1')")
    other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    out["other_process_same_path"] = [other.returncode, other.stderr[-400:]]
    a.close()
    a2.close()
    b = connect(f"chdb://{base}/b")
    out["sequential"] = b.query("SELECT count() FROM system.tables WHERE "
                                "database = currentDatabase() AND name = 't'").result_rows[0][0]
    b.close()
    a = connect(f"chdb://{base}/a")
    out["reopened_keeps_data"] = a.query("SELECT x FROM t").result_rows[0][0]
    a.close()
    print(json.dumps(out))
""")


def test_chdb_path_rules(tmp_path: Path) -> None:
    """One path per process at a time; paths in sequence work; same path shared; one owner."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", PATH_RULES_SCRIPT, str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["same_path_twice"] == 7
    assert os.path.realpath(tmp_path / "a") in found["two_paths_at_once"]
    assert "one engine path per process" in found["two_paths_at_once"]
    assert "already initialized" in found["engine_two_paths_at_once"]
    returncode, stderr = found["other_process_same_path"]
    assert returncode != 0 and "ClickHouseError" in stderr
    assert found["sequential"] == 0          # a fresh engine on b, without a's table
    assert found["reopened_keeps_data"] == 7


def test_connect_rejects_other_schemes_and_bad_chdb_dsns() -> None:
    with pytest.raises(ClickHouseError, match="unsupported ClickHouse DSN scheme 'postgres'"):
        connect("postgres://u:hunter2@db/x")
    with pytest.raises(ClickHouseError, match="three slashes"):
        connect("chdb://relative/dir")
    try:
        connect("postgres://u:hunter2@db/x")
    except ClickHouseError as exc:
        assert "hunter2" not in str(exc)


def test_redact_dsn_masks_passwords_only() -> None:
    assert redact_dsn("http://ledger:s3cr%40t@ch:8123/llm") == "http://ledger:***@ch:8123/llm"
    assert redact_dsn("https://ch:8443/llm?user=x&password=s3cret") == \
        "https://ch:8443/llm?user=x&password=***"
    assert redact_dsn("chdb:///var/lib/llmpipe/ch?database=dev") == \
        "chdb:///var/lib/llmpipe/ch?database=dev"
    assert redact_dsn("http://ch:8123/llm") == "http://ch:8123/llm"


def test_failed_http_connect_never_shows_the_password() -> None:
    with pytest.raises(ClickHouseError) as caught:
        connect("http://ledger:s3cr3t-pw@127.0.0.1:1/llm")   # nothing listens on port 1
    assert "s3cr3t-pw" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert "ledger:***@127.0.0.1:1" in str(caught.value)


def test_connect_creates_the_chdb_directory(chdb_dsn: str) -> None:
    path = Path(chdb_dsn.removeprefix("chdb://"))
    assert path.is_dir() and any(path.iterdir())


# --- migrations -----------------------------------------------------------------------------

def test_migrations_apply_in_order_and_reapply_is_a_no_op(chdb_client: ClickHouse) -> None:
    files = sorted(MIGRATIONS.glob("*.sql"))
    names = [f.stem for f in files]
    assert names[:5] == ["001_usage", "002_dead_letters_alerts", "003_usage_canary",
                         "004_usage_retention", "005_usage_rollups"]
    assert apply_migrations(chdb_client, MIGRATIONS) == names
    assert apply_migrations(chdb_client, MIGRATIONS) == []
    tables = {r[0] for r in chdb_client.query("SHOW TABLES").result_rows}
    assert {"usage", "dead_letters", "alerts", "schema_migrations", "usage_minute",
            "usage_daily", "usage_minute_mv", "usage_daily_mv"} <= tables
    recorded = chdb_client.query(
        "SELECT version, name, checksum FROM schema_migrations FINAL ORDER BY version").result_rows
    assert recorded == [(int(f.name[:3]), f.stem, hashlib.sha256(f.read_bytes()).hexdigest())
                        for f in files]


def test_default_directory_is_the_repo_schemas_unless_overridden(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_DIRECTORY, raising=False)
    assert default_directory() == MIGRATIONS
    monkeypatch.setenv(ENV_DIRECTORY, str(tmp_path))
    assert default_directory() == tmp_path


def test_changed_checksum_of_an_applied_migration_is_refused(
        chdb_client: ClickHouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory)
    monkeypatch.setenv(ENV_DIRECTORY, str(directory))
    assert apply_migrations(chdb_client) == sorted(p.stem for p in MIGRATIONS.glob("*.sql"))

    (directory / "900_extra.sql").write_text(
        "-- a later migration\nCREATE TABLE IF NOT EXISTS extra (x UInt8)\n"
        "ENGINE = MergeTree ORDER BY x;\n")
    assert apply_migrations(chdb_client) == ["900_extra"]

    with (directory / "001_usage.sql").open("a") as f:
        f.write("-- edited after release\n")
    with pytest.raises(MigrationError, match="001_usage.sql: changed after it was applied"):
        apply_migrations(chdb_client)


def test_a_failing_migration_names_its_file_and_is_not_recorded(
        chdb_client: ClickHouse, tmp_path: Path) -> None:
    (tmp_path / "001_ok.sql").write_text(
        "CREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = MergeTree ORDER BY x;\n")
    broken = tmp_path / "002_broken.sql"
    broken.write_text("CREATE TABLE IF NOT EXISTS b (x UInt8) ENGINE = MergeTree ORDER BY x;\n"
                      "CREATE TABLE c (x NoSuchType) ENGINE = MergeTree ORDER BY x;\n")
    with pytest.raises(MigrationError, match=r"002_broken.sql: statement 2 of 2 failed"):
        apply_migrations(chdb_client, tmp_path)
    # Not recorded, so fixing the file is allowed and the re-run redoes it from the top.
    broken.write_text(broken.read_text().replace("NoSuchType", "UInt8"))
    assert apply_migrations(chdb_client, tmp_path) == ["002_broken"]


def test_split_statements_ends_statements_only_at_line_end_semicolons() -> None:
    sql = ("-- header; with a semicolon in a comment;\n"
           "CREATE TABLE t (s String DEFAULT 'a;b') ENGINE = Memory;\n"
           "\n"
           "-- second\n"
           "INSERT INTO t VALUES ('x;'), ('y');  \n"
           "SELECT 1\n")
    statements = split_statements(sql)
    assert len(statements) == 3
    assert statements[0].endswith("CREATE TABLE t (s String DEFAULT 'a;b') ENGINE = Memory")
    assert statements[1].endswith("INSERT INTO t VALUES ('x;'), ('y')")
    assert statements[2] == "SELECT 1"


def test_migration_file_names_are_checked(chdb_client: ClickHouse, tmp_path: Path) -> None:
    (tmp_path / "usage.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match="usage.sql: migration files must be named"):
        apply_migrations(chdb_client, tmp_path)


# --- schema ---------------------------------------------------------------------------------

def test_usage_table_has_a_column_for_every_usage_field(ledger: ClickHouse) -> None:
    columns = dict(ledger.query(
        "SELECT name, type FROM system.columns WHERE database = currentDatabase() "
        "AND table = 'usage' ORDER BY position").result_rows)

    def column_for(name: str) -> str:
        if name.endswith("_at_ms"):
            return name.removesuffix("_ms")
        renames = {"cost_nanos": "cost_usd", "baseline_cost_nanos": "baseline_cost_usd",
                   "cache_saved_nanos": "cache_saved_usd",
                   "cache_cost_nanos": "cache_cost_usd",
                   "context_saved_nanos": "context_saved_usd"}
        return renames.get(name, name)

    ledger_only = ["claimed_created_at_ms"]      # what the ledger adds (006)
    assert sorted([column_for(f.name) for f in fields(Usage)] + ledger_only) == sorted(USAGE_COLUMNS)
    assert len(USAGE_COLUMNS) == len(fields(Usage)) + len(ledger_only)
    # ttft_ms (007) is MATERIALIZED from the stored times: never inserted, so not a USAGE_COLUMN.
    assert list(columns) == [*USAGE_COLUMNS, "ttft_ms", "inserted_at"]
    assert columns["claimed_created_at_ms"] == "Int64"
    assert columns["ttft_ms"] == "Nullable(UInt32)"
    assert columns["cost_usd"] == columns["baseline_cost_usd"] == "Decimal(18, 9)"
    for name in ("created_at", "routed_at", "first_token_at", "completed_at"):
        assert columns[name] == "DateTime64(3, 'UTC')"
    for name in ("prompt_tokens", "completion_tokens", "cached_tokens",
                 "queue_ms", "pipeline_ms", "provider_ms"):
        assert columns[name] == "UInt32"
    for name in ("tenant", "team", "served_model", "provider", "deployment", "region", "status",
                 "error_code", "route_rule", "task_class", "cache", "price_version"):
        assert columns[name] == "LowCardinality(String)", name
    engine = ledger.query("SELECT engine_full FROM system.tables WHERE database = currentDatabase()"
                          " AND name = 'usage'").result_rows[0][0]
    assert engine.startswith("ReplacingMergeTree(inserted_at) PARTITION BY toYYYYMM(created_at) "
                             "ORDER BY (tenant, request_id)")
    assert "non_replicated_deduplication_window = 1000" in engine


def test_dead_letter_and_alert_tables_mirror_their_events(ledger: ClickHouse) -> None:
    def columns(table: str) -> list[str]:
        return [r[0] for r in ledger.query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() "
            f"AND table = '{table}' ORDER BY position").result_rows]

    def renamed(name: str) -> str:
        return name.removesuffix("_ms") if name == "at_ms" else name

    assert set(DEAD_LETTER_COLUMNS) == {renamed(f.name) for f in fields(DeadLetter)}
    assert set(ALERT_COLUMNS) == {renamed(f.name) for f in fields(Alert)}
    assert columns("dead_letters") == [*DEAD_LETTER_COLUMNS, "inserted_at"]
    assert columns("alerts") == [*ALERT_COLUMNS, "inserted_at"]
    engine = ledger.query("SELECT engine_full FROM system.tables WHERE database = currentDatabase()"
                          " AND name = 'dead_letters'").result_rows[0][0]
    assert "TTL toDateTime(at) + toIntervalDay(90)" in engine


# --- exact round trip -----------------------------------------------------------------------

def test_usage_round_trip_is_exact(ledger: ClickHouse) -> None:
    # GPT-4.1 output: $8 per million tokens = 8000 nano-dollars a token (DOMAIN.md section 8).
    big = make_usage("req-big", team="search", end_user="u-1", created_at_ms=T0 + 123,
                     routed_at_ms=T0 + 130, first_token_at_ms=T0 + 480, completed_at_ms=T0 + 999,
                     requested_model="gpt-4.1", routed_model="gpt-4.1", region="eu-west",
                     route_rule="pinned", task_class="chat", attempts=2, fallbacks=1,
                     batch_id="b-1", batch_size=8, cache="hit", cache_kind="exact",
                     cache_saved_nanos=3_000_000_001, cache_cost_nanos=7,
                     context_tokens_before=900, context_tokens_after=400,
                     context_saved_nanos=1_000_000, for_request_id="req-0", prompt_tokens=0,
                     completion_tokens=1_500_000_000, cached_tokens=0,
                     cost_nanos=1_500_000_000 * 8000, baseline_cost_nanos=1,
                     price_version="2025-01", queue_ms=5, pipeline_ms=45, provider_ms=820)
    insert_usage(ledger, [big], dedup_token=None)

    row = ledger.query(
        "SELECT request_id, tenant, team, end_user, toUnixTimestamp64Milli(created_at), "
        "toUnixTimestamp64Milli(routed_at), toUnixTimestamp64Milli(first_token_at), "
        "toUnixTimestamp64Milli(completed_at), status, error_code, requested_model, routed_model,"
        " served_model, provider, deployment, region, route_rule, task_class, attempts, fallbacks,"
        " batch_id, batch_size, cache, cache_kind, cache_saved_usd, cache_cost_usd, "
        "context_tokens_before, context_tokens_after, context_saved_usd, for_request_id, "
        "prompt_tokens, "
        "completion_tokens, cached_tokens, cost_usd,"
        " baseline_cost_usd, price_version, queue_ms, pipeline_ms, provider_ms, canary, "
        "claimed_created_at_ms FROM usage FINAL").result_rows
    assert row == [tuple(usage_row(big))]
    cost, baseline = row[0][33], row[0][34]
    assert row[0][24] == Decimal("3.000000001")                       # cache_saved_usd
    assert row[0][25] == Decimal("0.000000007")                       # cache_cost_usd
    assert row[0][26:30] == (900, 400, Decimal("0.001"), "req-0")    # context (010)
    assert cost == Decimal("12000.000000000") and str(cost) == "12000.000000000"
    assert baseline == Decimal("0.000000001")
    assert format_usd(cost) == "$12,000.000000"


def test_ttft_ms_is_first_token_minus_created_and_null_when_not_streamed(
        ledger: ClickHouse) -> None:
    streamed = make_usage("streamed", created_at_ms=T0 + 20, first_token_at_ms=T0 + 270)
    plain = make_usage("plain")                                  # first_token_at_ms 0
    skewed = make_usage("skewed", first_token_at_ms=T0 - 1)      # before created_at
    insert_usage(ledger, [streamed, plain, skewed], dedup_token=None)
    assert dict(ledger.query("SELECT request_id, ttft_ms FROM usage FINAL").result_rows) == {
        "streamed": 250, "plain": None, "skewed": None}
    assert ledger.query("SELECT count() FROM usage WHERE ttft_ms < 0").result_rows[0][0] == 0

    # The worker's /llmpipe/ledger/usage/ view: an int, or JSON null (never the text "None").
    rows = {r["request_id"]: r for r in usage_rows(ledger, ("streamed", "plain", "skewed"))}
    assert "ttft_ms" in USAGE_VIEW_COLUMNS
    assert (rows["streamed"]["ttft_ms"], rows["plain"]["ttft_ms"]) == (250, None)
    doc = json.loads(json.dumps(rows))
    assert doc["plain"]["ttft_ms"] is None and doc["skewed"]["ttft_ms"] is None
    assert doc["streamed"]["cost_usd"] == "0.000600000"              # decimals stay text
    assert doc["streamed"]["attempts"] == 0 and doc["streamed"]["error_code"] == ""


def test_money_sums_stay_exact_where_floats_would_drift(ledger: ClickHouse) -> None:
    nanos = [1, 100_000_000, 200_000_000, 999_999_999_999_999, 3, 333_333_333]
    insert_usage(ledger, [make_usage(f"r{i}", cost_nanos=n) for i, n in enumerate(nanos)], None)
    total = ledger.query("SELECT sum(cost_usd) FROM usage FINAL").result_rows[0][0]
    assert total == Decimal(sum(nanos)).scaleb(-9) == Decimal("1000000.633333336")
    assert nanos_to_usd(sum(nanos)) == total


def test_usage_row_rejects_what_the_columns_cannot_hold() -> None:
    with pytest.raises(ValueError, match="'r1'.*prompt_tokens=-1"):
        usage_row(make_usage("r1", prompt_tokens=-1))
    with pytest.raises(ValueError, match="completion_tokens"):
        usage_row(make_usage("r1", completion_tokens=2**32))
    with pytest.raises(ValueError, match="cost_nanos"):
        usage_row(make_usage("r1", cost_nanos=10**18))
    # Latency splits come from skewed clocks: clamped, not refused.
    row = usage_row(make_usage("r1", queue_ms=-7))
    assert row[USAGE_COLUMNS.index("queue_ms")] == 0


# --- idempotency ----------------------------------------------------------------------------

def test_same_batch_with_same_token_is_stored_once(ledger: ClickHouse) -> None:
    batch = [make_usage(f"r{i}", cost_nanos=1_000_000_001 * (i + 1)) for i in range(3)]
    insert_usage(ledger, batch, dedup_token="usage:llm.usage:0:10-12")
    before = dev_report(ledger)
    insert_usage(ledger, batch, dedup_token="usage:llm.usage:0:10-12")   # the retry
    assert raw_count(ledger) == 3          # dropped at insert time, not merely hidden by FINAL
    after = dev_report(ledger)
    assert after == before
    assert after.requests == 3 and after.raw_rows == 3
    assert after.cost_usd == Decimal("6.000000006")


def test_without_a_dedup_window_the_token_is_ignored(ledger: ClickHouse) -> None:
    """The DESIGN.md sharp edge this schema avoids: window 0 keeps the retried batch."""
    ledger.command("CREATE TABLE usage_no_window AS usage ENGINE = ReplacingMergeTree(inserted_at)"
                   " ORDER BY (tenant, request_id)")
    rows = [usage_row(make_usage("r1"))]
    for _ in range(2):
        ledger.insert("usage_no_window", rows, USAGE_COLUMNS,
                      settings={"insert_deduplication_token": "t1", "async_insert": 0})
    assert raw_count(ledger, "usage_no_window") == 2


def test_a_request_billed_twice_counts_once_under_final(ledger: ClickHouse) -> None:
    insert_usage(ledger, [make_usage("dup"), make_usage("other")], dedup_token="usage:x:0:0-1")
    # Re-delivered after a crash and cut into a different batch: another token, same request.
    insert_usage(ledger, [make_usage("dup")], dedup_token="usage:x:0:0-0")
    assert raw_count(ledger) == 3
    assert count_usage(ledger, ["dup", "other", "missing"]) == {"dup": 1, "other": 1, "missing": 0}
    report = dev_report(ledger)
    assert (report.requests, report.distinct_request_ids, report.raw_rows) == (2, 2, 3)
    assert report.cost_usd == nanos_to_usd(2 * 600_000)


def test_dead_letters_keep_raw_bytes_and_dedupe(ledger: ClickHouse) -> None:
    raw = b"\x00\xff\xfe not avro \x80"
    letter = DeadLetter(source_topic="llm.requests", source_partition=3, source_offset=41,
                        reason_code="undecodable", reason="unknown magic byte 0x00",
                        agent="intake", at_ms=RECENT_MS, key=b"acme", value=raw)
    no_bytes = DeadLetter(source_topic="llm.requests", source_partition=3, source_offset=42,
                          reason_code="schema_violation", reason="missing tenant",
                          agent="intake", at_ms=RECENT_MS, request_id="r9", tenant="acme")
    for _ in range(2):
        insert_dead_letters(ledger, [letter, no_bytes], dedup_token="dead:llm.requests:3:41-42")
    assert raw_count(ledger, "dead_letters") == 2
    rows = ledger.query("SELECT source_offset, hex(key), hex(value), value IS NULL, request_id, "
                        "tenant, toUnixTimestamp64Milli(at) FROM dead_letters FINAL "
                        "ORDER BY source_offset").result_rows
    assert rows == [(41, b"acme".hex().upper(), raw.hex().upper(), 0, None, None, RECENT_MS),
                    (42, None, None, 1, "r9", "acme", RECENT_MS)]


def test_alerts_round_trip_and_dedupe(ledger: ClickHouse) -> None:
    alert = Alert(alert_id="a-1", rule="monthly_cost", state="firing", value="10000.000000001",
                  threshold="10000", at_ms=T0, severity="warning", tenant="acme",
                  window="30d", message="monthly cost over $10,000", labels={"team": "search"})
    for _ in range(2):
        insert_alerts(ledger, [alert], dedup_token="alerts:0:5-5")
    assert ledger.query("SELECT alert_id, rule, state, value, threshold, `window`, labels, "
                        "toUnixTimestamp64Milli(at) FROM alerts").result_rows == [
        ("a-1", "monthly_cost", "firing", "10000.000000001", "10000", "30d",
         {"team": "search"}, T0)]


# --- LedgerWriter ---------------------------------------------------------------------------

class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingClient:
    """Wraps the real client; records insert tokens and fails on demand.

    ``fail_after_insert`` simulates the worst case: the rows landed but the caller saw an
    error (a timeout on the acknowledgement), so the retry must be dropped as a duplicate.
    """

    def __init__(self, inner: ClickHouse):
        self.inner = inner
        self.tokens: list[str] = []
        self.fail_before_insert: set[int] = set()   # partitions whose inserts fail outright
        self.fail_after_insert = 0                  # how many successful inserts report failure

    def query(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.query(*args, **kwargs)

    def insert(self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str],
               settings: dict[str, Any] | None = None) -> int:
        token = (settings or {}).get("insert_deduplication_token", "")
        self.tokens.append(token)
        spans = token.split(":", 2)[2].rsplit(":", 1)[0]          # "0:1-3,1:2-2"
        partitions = {int(span.split(":")[0]) for span in spans.split(",")}
        if partitions & self.fail_before_insert:
            raise ClickHouseError("insert into usage failed: Code: 210. connection refused", 210)
        written = self.inner.insert(table, rows, column_names, settings)
        if self.fail_after_insert:
            self.fail_after_insert -= 1
            raise ClickHouseError("insert into usage failed: timed out waiting for the reply")
        return written


@pytest.mark.asyncio
async def test_writer_is_due_on_size(ledger: ClickHouse) -> None:
    clock = FakeClock()
    writer = LedgerWriter(ledger, max_rows=3, max_age_s=60, clock=clock)
    assert not writer.due()
    writer.add(make_usage("a"), partition=0, offset=10)
    writer.add(make_usage("b"), partition=0, offset=11)
    assert not writer.due()
    writer.add(make_usage("c"), partition=0, offset=12)
    assert writer.due()
    assert await writer.flush() == [(0, 12)]
    assert writer.pending == 0 and not writer.due()
    assert count_usage(ledger, ["a", "b", "c"]) == {"a": 1, "b": 1, "c": 1}


@pytest.mark.asyncio
async def test_writer_is_due_on_age_of_the_oldest_row(ledger: ClickHouse) -> None:
    clock = FakeClock(1000.0)
    writer = LedgerWriter(ledger, max_rows=100, max_age_s=2.0, clock=clock)
    writer.add(make_usage("a"), 0, 1)
    clock.now = 1001.5
    writer.add(make_usage("b"), 0, 2)
    assert not writer.due()
    assert not writer.due(1001.999)
    assert writer.due(1002.0)
    clock.now = 1002.0
    assert writer.due()
    assert await writer.flush() == [(0, 2)]
    assert not writer.due(9999.0)


@pytest.mark.asyncio
async def test_writer_sends_every_partition_in_one_insert_with_offset_tokens(
        ledger: ClickHouse) -> None:
    """An INSERT costs about the same for 20 rows as for 1,000, so the partitions' batches
    go together (up to max_rows rows), the token naming each partition's offsets."""
    client = RecordingClient(ledger)
    writer = LedgerWriter(client, max_rows=10, clock=FakeClock())  # type: ignore[arg-type]
    for offset, (partition, rid) in enumerate([(1, "p1-a"), (0, "p0-a"), (1, "p1-b"), (0, "p0-b")]):
        writer.add(make_usage(rid), partition, 100 + offset)
    assert await writer.flush() == [(0, 103), (1, 102)]
    assert [t.rsplit(":", 1)[0] for t in client.tokens] == [
        "usage:llm.usage:0:101-103,1:100-102"]
    assert raw_count(ledger) == 4 and writer.inserts == 1
    # Past max_rows, the next partitions go in the next INSERT.
    for partition in range(3):
        for offset in range(4):
            writer.add(make_usage(f"q{partition}-{offset}"), partition, 200 + offset)
    assert await writer.flush() == [(0, 203), (1, 203), (2, 203)]
    assert [t.rsplit(":", 1)[0] for t in client.tokens[1:]] == [
        "usage:llm.usage:0:200-203,1:200-203", "usage:llm.usage:2:200-203"]
    assert raw_count(ledger) == 16 and writer.inserts == 3


@pytest.mark.asyncio
async def test_writer_keeps_rows_after_a_failed_insert_and_resends_the_same_batch(
        ledger: ClickHouse) -> None:
    client = RecordingClient(ledger)
    client.fail_after_insert = 1           # landed, but we were told it failed
    # Without the stored-row filter (next test), so the token alone must drop the retry.
    writer = LedgerWriter(client, max_rows=10, clock=FakeClock(),  # type: ignore[arg-type]
                          sink=dataclasses.replace(USAGE_SINK, unstored=None))
    writer.add(make_usage("a"), 0, 1)
    writer.add(make_usage("b"), 0, 2)
    with pytest.raises(LedgerFlushError) as caught:
        await writer.flush()
    assert caught.value.committed == [] and caught.value.failed == [0]
    assert writer.pending == 2             # nothing lost, nothing committed

    writer.add(make_usage("c"), 0, 3)      # arrives while we back off: goes in a later batch
    assert await writer.flush() == [(0, 3)]
    assert client.tokens[0] == client.tokens[1]     # the retry resent the very same batch
    assert client.tokens[2] != client.tokens[0]
    assert raw_count(ledger) == 3          # the retry was dropped by ClickHouse
    assert writer.pending == 0


@pytest.mark.asyncio
async def test_a_redelivery_in_new_batches_reaches_neither_usage_nor_the_rollups(
        ledger: ClickHouse) -> None:
    """After a crash the same Usage events come again, cut into other batches (new tokens).
    The writer leaves out requests ``usage`` already holds, so the rollups (which count
    inserted rows) stay exact; a re-done call (new completion time and cost) is left out
    too: the first Usage of a request is the one billed, in the raw table and the rollups."""
    recent = int(time.time() * 1000) - 3_600_000        # inside the minute rollup's TTL
    events = [make_usage(f"r{i}", created_at_ms=recent, completed_at_ms=recent + 300 + i,
                         cost_nanos=600_000 + i) for i in range(6)]

    def rollups() -> list[tuple[Any, ...]]:
        return [ledger.query(f"SELECT sum(requests), sum(cost_usd) FROM {t}").result_rows[0]
                for t in ("usage_minute", "usage_daily")]

    first = LedgerWriter(ledger, max_rows=3, clock=FakeClock())
    for offset, event in enumerate(events):
        first.add(event, 0, offset)
    await first.flush()
    before = rollups()
    assert raw_count(ledger) == 6 and before[0][0] == before[1][0] == 6

    again = LedgerWriter(ledger, max_rows=4, clock=FakeClock())     # other batch boundaries
    for offset, event in enumerate(events, start=1):
        again.add(event, 0, offset)
    await again.flush()
    assert raw_count(ledger) == 6 and rollups() == before and again.pending == 0

    redone = make_usage("r0", created_at_ms=recent, completed_at_ms=recent + 5_000,
                        cost_nanos=900_000)
    again.add(redone, 0, 99)
    await again.flush()
    assert raw_count(ledger) == 6 and rollups() == before
    (cost,) = ledger.query("SELECT cost_usd FROM usage FINAL WHERE request_id = 'r0'").result_rows[0]
    assert cost == Decimal("0.0006")


@pytest.mark.asyncio
async def test_a_failed_insert_of_several_partitions_is_resent_as_it_was(
        ledger: ClickHouse) -> None:
    """A failed INSERT keeps every partition's rows in it, commits none of them, and goes
    first and unchanged in the next flush (same rows, same token), even when rows of other
    partitions arrived meanwhile: if it had in fact landed, ClickHouse drops the retry."""
    client = RecordingClient(ledger)
    client.fail_after_insert = 1           # landed, but we were told it failed
    writer = LedgerWriter(client, max_rows=10, clock=FakeClock(),  # type: ignore[arg-type]
                          sink=dataclasses.replace(USAGE_SINK, unstored=None))
    writer.add(make_usage("p0"), 0, 7)
    writer.add(make_usage("p1"), 1, 9)
    with pytest.raises(LedgerFlushError) as caught:
        await writer.flush()
    assert caught.value.committed == [] and caught.value.failed == [0, 1]
    assert writer.pending == 2
    writer.add(make_usage("p2"), 2, 4)     # would have joined the group, had it been new
    assert await writer.flush() == [(0, 7), (1, 9), (2, 4)]
    assert client.tokens[1] == client.tokens[0] and client.tokens[2].split(":")[2] == "2"
    assert raw_count(ledger) == 3
    assert count_usage(ledger, ["p0", "p1", "p2"]) == {"p0": 1, "p1": 1, "p2": 1}


@pytest.mark.asyncio
async def test_writer_memory_is_bounded(ledger: ClickHouse) -> None:
    writer = LedgerWriter(ledger, max_rows=2, max_buffer=3, clock=FakeClock())
    for i in range(3):
        writer.add(make_usage(f"r{i}"), 0, i)
    assert writer.full
    with pytest.raises(LedgerBufferFull):
        writer.add(make_usage("r3"), 0, 3)
    assert await writer.flush() == [(0, 2)]            # sealed as two batches of <= max_rows
    writer.add(make_usage("r3"), 0, 3)
    assert writer.pending == 1


def test_writer_refuses_an_unstorable_event_at_add(ledger: ClickHouse) -> None:
    writer = LedgerWriter(ledger, clock=FakeClock())
    with pytest.raises(ValueError, match="'bad'"):
        writer.add(make_usage("bad", cached_tokens=-5), 0, 1)
    assert writer.pending == 0


# --- dev report -----------------------------------------------------------------------------

# (request_id, status, error_code, served_model, prompt, completion, cost_nanos, e2e_ms,
#  provider_ms, pipeline_ms)
DATASET = [
    ("q01", "ok", "", "gpt-4.1", 1200, 300, 4_800_000, 910, 820, 60),
    ("q02", "ok", "", "gpt-4.1", 800, 200, 3_200_000, 640, 590, 35),
    ("q03", "ok", "", "gpt-4.1", 450, 120, 1_860_001, 1310, 1200, 90),
    ("q04", "ok", "", "deepseek-v3.2", 1500, 600, 672_333, 2250, 2100, 110),
    ("q05", "ok", "", "deepseek-v3.2", 300, 90, 121_999, 480, 430, 30),
    ("q06", "ok", "", "gemini-2.5-flash", 2000, 700, 2_350_000, 350, 300, 25),
    ("q07", "ok", "", "gemini-2.5-flash", 100, 20, 80_000, 150, 0, 150),   # cache hit
    ("q08", "error", "rate_limited", "gpt-4.1", 0, 0, 0, 40, 30, 10),
    ("q09", "error", "rate_limited", "gpt-4.1", 0, 0, 0, 45, 33, 12),
    ("q10", "error", "budget_exceeded", "", 0, 0, 0, 3, 0, 3),
]


def load_dataset(client: ClickHouse) -> list[Usage]:
    usages = [
        make_usage(rid, status=status, error_code=code, served_model=model, prompt_tokens=p,
                   completion_tokens=c, cost_nanos=cost, created_at_ms=T0 + 1000 * i,
                   completed_at_ms=T0 + 1000 * i + e2e, provider_ms=prov, pipeline_ms=pipe,
                   baseline_cost_nanos=2 * cost)
        for i, (rid, status, code, model, p, c, cost, e2e, prov, pipe) in enumerate(DATASET)]
    insert_usage(client, usages, dedup_token="report:0:0-9")
    insert_usage(client, usages[:2], dedup_token="report:0:0-1")  # re-delivered duplicates
    outside = make_usage("late", created_at_ms=T0 + 3_600_000, completed_at_ms=T0 + 3_601_000,
                         cost_nanos=10**12)
    insert_usage(client, [outside], dedup_token="report:0:10-10")
    return usages


def test_dev_report_on_a_known_data_set(ledger: ClickHouse) -> None:
    load_dataset(ledger)
    since = datetime.fromtimestamp(T0 // 1000, tz=timezone.utc)
    until = datetime.fromtimestamp(T0 // 1000 + 60, tz=timezone.utc)
    report = dev_report(ledger, since=since, until=until)

    assert (report.requests, report.distinct_request_ids, report.raw_rows) == (10, 10, 12)
    assert (report.ok, report.errors) == (7, 3)
    assert [(e.code, e.requests) for e in report.errors_by_code] == [
        ("rate_limited", 2), ("budget_exceeded", 1)]

    costs = [row[6] for row in DATASET]
    assert report.cost_usd == Decimal(sum(costs)).scaleb(-9) == Decimal("0.013084333")
    assert report.baseline_cost_usd == 2 * report.cost_usd
    assert report.prompt_tokens == sum(row[4] for row in DATASET)
    assert report.completion_tokens == sum(row[5] for row in DATASET)

    by_model = {m.served_model: m for m in report.models}
    assert [m.served_model for m in report.models] == [
        "gpt-4.1", "deepseek-v3.2", "gemini-2.5-flash", ""]
    assert by_model["gpt-4.1"].requests == 5 and by_model["gpt-4.1"].share == 0.5
    assert by_model["gpt-4.1"].cost_usd == Decimal("0.009860001")
    assert by_model["deepseek-v3.2"].cost_usd == Decimal("0.000794332")
    assert by_model[""].cost_usd == Decimal("0E-9") and by_model[""].requests == 1
    assert sum(m.cost_usd for m in report.models) == report.cost_usd

    ok_rows = [row for row in DATASET if row[1] == "ok"]
    for latency, column in ((report.end_to_end, 7), (report.provider, 8), (report.pipeline, 9)):
        values = [row[column] for row in ok_rows]
        assert latency.samples == 7
        assert latency.p50_ms == pytest.approx(percentile_linear(values, 0.5))
        assert latency.p95_ms == pytest.approx(percentile_linear(values, 0.95))
        assert latency.p99_ms == pytest.approx(percentile_linear(values, 0.99))
    assert report.end_to_end.p95_ms == pytest.approx(1968.0)   # 1310 + 0.7 * (2250 - 1310)

    text = report.format_text()
    for heading in ("Totals", "Errors by code", "Model mix", "Tokens", "Cost (USD)", "Latency"):
        assert f"\n{heading}" in text
    assert "$0.013084" in text and "$0.009860" in text and "50.0%" in text
    data = json.loads(report.to_json())
    assert data["cost_usd"] == "0.013084333" and data["requests"] == 10
    assert data["since"] == since.isoformat()


def test_dev_report_by_request_ids_and_everything(ledger: ClickHouse) -> None:
    load_dataset(ledger)
    picked = dev_report(ledger, request_ids=["q01", "q04", "q10", "unknown"])
    assert (picked.requests, picked.ok, picked.errors, picked.raw_rows) == (3, 2, 1, 4)
    assert picked.cost_usd == Decimal("0.005472333")
    assert picked.request_ids == 4
    everything = dev_report(ledger)
    assert everything.requests == 11
    assert everything.cost_usd == Decimal("1000.013084333")


def test_empty_report_formats(ledger: ClickHouse) -> None:
    report = dev_report(ledger, request_ids=[])
    assert report.requests == 0 and report.end_to_end.p50_ms is None
    assert "requests" in report.format_text()
    assert json.loads(report.to_json())["cost_usd"] == "0.000000000"


def test_report_refuses_naive_datetimes(ledger: ClickHouse) -> None:
    with pytest.raises(ValueError, match="naive"):
        dev_report(ledger, since=datetime(2025, 1, 1))


@pytest.mark.asyncio
async def test_ripe_only_flush_sends_full_batches_when_traffic_is_spread_over_partitions(
        ledger: ClickHouse) -> None:
    """The agent flushes ripe_only: nothing goes until the open rows of all partitions
    together reach max_rows or the oldest is max_age_s old; then every partition's rows go,
    in as few INSERTs as max_rows allows, so six busy partitions do not cut every INSERT
    into sixths."""
    client = RecordingClient(ledger)
    clock = FakeClock(1000.0)
    writer = LedgerWriter(client, max_rows=8, max_age_s=5.0, max_buffer=40,  # type: ignore[arg-type]
                          clock=clock)
    for offset in range(2):
        for partition in (0, 1, 2):
            writer.add(make_usage(f"p{partition}-{offset}"), partition, offset)
    assert not writer.due()                               # 6 rows, young
    assert await writer.flush(ripe_only=True) == [] and client.tokens == []
    clock.now += 5.0
    assert writer.due()                                   # ... until the oldest is 5 s old
    assert await writer.flush(ripe_only=True) == [(0, 1), (1, 1), (2, 1)]
    assert [t.rsplit(":", 1)[0] for t in client.tokens] == ["usage:llm.usage:0:0-1,1:0-1,2:0-1"]
    for partition in (0, 1):
        for offset in range(2, 6):
            writer.add(make_usage(f"p{partition}-{offset}"), partition, offset)
    assert writer.due()                                   # 8 rows: max_rows
    assert await writer.flush(ripe_only=True) == [(0, 5), (1, 5)]
    assert client.tokens[-1].rsplit(":", 1)[0] == "usage:llm.usage:0:2-5,1:2-5"
    assert writer.pending == 0 and raw_count(ledger) == 14
    # Half the buffer in use with nothing ripe (many quiet partitions): everything goes.
    for partition in range(20):
        writer.add(make_usage(f"q{partition}"), partition, 100)
    assert writer.due()
    assert len(await writer.flush(ripe_only=True)) == 20 and writer.pending == 0


@pytest.mark.asyncio
async def test_a_request_billed_twice_in_one_batch_keeps_its_first_usage(ledger: ClickHouse) -> None:
    """Re-dispatched after a crash, a request can have two Usage events close together. In
    one INSERT both rows get the same inserted_at (the ReplacingMergeTree version) and the
    block is sorted by key without keeping arrival order, so either may survive (in a side
    check with 300-row blocks of mixed tenants the earlier one did, 30 times of 30; with
    other data the later one). The writer sends only the first; settlement keeps the first
    Usage too."""
    def block(tag: str) -> list[Usage]:
        others = [make_usage(f"{tag}-{i:03d}", tenant=f"t{i % 20}") for i in range(300)]
        return (others[:150] + [make_usage(f"{tag}-twice", tenant="t0", cost_nanos=111)]
                + others[150:] + [make_usage(f"{tag}-twice", tenant="t0", cost_nanos=222)])

    def cost(request_id: str) -> Decimal:
        return ledger.query("SELECT cost_usd FROM usage FINAL WHERE request_id = %(r)s",
                            {"r": request_id}).result_rows[0][0]

    writer = LedgerWriter(ledger, max_rows=1000, clock=FakeClock())
    for offset, usage in enumerate(block("w")):
        writer.add(usage, 0, offset)
    assert await writer.flush() == [(0, 301)]
    assert writer.inserted == 302
    assert cost("w-twice") == nanos_to_usd(111)
    assert ledger.query("SELECT count() FROM usage WHERE request_id LIKE 'w-%'").result_rows == [(301,)]


# --- alerts and dead letters through the writer ---------------------------------------------

@pytest.mark.asyncio
async def test_writer_sinks_alerts_and_dead_letters_idempotently(ledger: ClickHouse) -> None:
    client = RecordingClient(ledger)
    client.fail_after_insert = 1            # the first batch lands but is reported failed
    # Without the stored-alert filter (next test), so the token alone must drop the retry.
    alerts = LedgerWriter(client, max_rows=10, clock=FakeClock(),  # type: ignore[arg-type]
                          sink=dataclasses.replace(ALERTS_SINK, unstored=None),
                          token_prefix="alerts:llm.alerts")
    letters = LedgerWriter(client, max_rows=10, clock=FakeClock(),  # type: ignore[arg-type]
                           sink=DEAD_LETTERS_SINK, token_prefix="dead_letters:llm.dead-letter")
    for i in range(3):
        alerts.add(Alert(alert_id=f"a-{i}", rule="breaker", state="firing", value="1",
                         threshold="1", at_ms=RECENT_MS, tenant="*"), partition=0, offset=i)
        letters.add(DeadLetter(source_topic="llm.requests", source_partition=1, source_offset=i,
                               reason_code="undecodable", reason="bad", agent="intake",
                               at_ms=RECENT_MS, key=b"k%d" % i, value=b"\xff"), partition=2, offset=i)
    with pytest.raises(LedgerFlushError):
        await alerts.flush()
    assert await alerts.flush() == [(0, 2)]          # the same batch again: dropped as a repeat
    assert await letters.flush() == [(2, 2)]
    assert client.tokens[0] == client.tokens[1] and client.tokens[0].startswith("alerts:llm.alerts:0:0-2:")
    assert raw_count(ledger, "alerts") == 3 and raw_count(ledger, "dead_letters") == 3
    assert count_by(ledger, "dead_letters", "key", ("k0", "k2", "k9")) == {"k0": 1, "k2": 1, "k9": 0}
    assert count_by(ledger, "alerts", "alert_id", ("a-1",)) == {"a-1": 1}
    with pytest.raises(ValueError):
        count_by(ledger, "alerts", "message; DROP TABLE usage", ("x",))


@pytest.mark.asyncio
async def test_an_alert_published_again_with_a_later_time_is_stored_once(ledger: ClickHouse) -> None:
    """The monitor may re-publish a resolution after a restart: same alert id, later ``at``
    (part of the table's sort key, so ReplacingMergeTree would keep both)."""
    def resolution(at_ms: int) -> Alert:
        return Alert(alert_id="res-1", rule="tenant_hourly_spend", state="resolved", value="1",
                     threshold="2", at_ms=at_ms, tenant="acme")

    first = LedgerWriter(ledger, max_rows=10, clock=FakeClock(), sink=ALERTS_SINK,
                         token_prefix="alerts:llm.alerts")
    first.add(resolution(RECENT_MS), 0, 1)
    await first.flush()
    again = LedgerWriter(ledger, max_rows=10, clock=FakeClock(), sink=ALERTS_SINK,
                         token_prefix="alerts:llm.alerts")
    again.add(resolution(RECENT_MS + 5_000), 0, 7)
    again.add(Alert(alert_id="res-2", rule="tenant_hourly_spend", state="firing", value="3",
                    threshold="2", at_ms=RECENT_MS + 6_000, tenant="acme"), 0, 8)
    await again.flush()
    assert raw_count(ledger, "alerts") == 2
    assert count_by(ledger, "alerts", "alert_id", ("res-1", "res-2")) == {"res-1": 1, "res-2": 1}


# --- outages: the fault switch, backoff, backpressure, catch-up ------------------------------

@pytest.fixture
def fault_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The chaos switch armed (clients connected from now on read it); not yet tripped."""
    path = tmp_path / "clickhouse-down"
    monkeypatch.setenv(FAULT_FILE_ENV, str(path))
    return path


def test_fault_file_fails_inserts_like_an_unreachable_server(
        chdb_database: str, fault_file: Path) -> None:
    with connect(chdb_database) as client:
        apply_migrations(client, MIGRATIONS)
        fault_file.touch()
        with pytest.raises(ClickHouseError, match="Connection refused") as caught:
            insert_usage(client, [make_usage("r1")], dedup_token="t:0:1-1")
        assert caught.value.code is None and str(fault_file) in str(caught.value)
        assert raw_count(client) == 0                      # reads still work
        fault_file.unlink()
        insert_usage(client, [make_usage("r1")], dedup_token="t:0:1-1")
        assert raw_count(client) == 1


def test_fault_file_refuses_new_connections_until_removed(chdb_database: str,
                                                          fault_file: Path) -> None:
    fault_file.touch()
    with pytest.raises(ClickHouseError, match="Connection refused"):
        connect(chdb_database)
    fault_file.unlink()
    with connect(chdb_database) as client:
        assert client.query("SELECT 1").result_rows == [(1,)]


def test_insert_retry_backs_off_exponentially_up_to_a_cap_and_resets() -> None:
    clock = FakeClock(100.0)
    retry = InsertRetry(RetryPolicy(base_s=0.5, cap_s=3.0, jitter=0.0), clock=clock)
    assert retry.ready()
    delays = []
    for _ in range(5):
        delays.append(retry.failed())
        assert not retry.ready() and retry.wait_s() == delays[-1]
        clock.now += delays[-1]
        assert retry.ready()
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert retry.succeeded() == pytest.approx(9.5)         # outage: first failure -> success
    assert retry.failures == 0 and retry.total_failures == 5 and retry.succeeded() is None
    assert retry.failed() == 0.5                           # a new outage starts from the base


class FakeEvent:
    def __init__(self, partition: int, offset: int, value: Any, acks: list[tuple[int, int]]):
        self.message = SimpleNamespace(tp=("llm.usage", partition), topic="llm.usage",
                                       partition=partition, offset=offset)
        self.value, self._acks = value, acks

    def ack(self) -> None:
        self._acks.append((self.message.partition, self.message.offset))


async def _events(events: list[FakeEvent]):
    for event in events:
        yield event


def _decode(value: Any) -> Usage:
    if isinstance(value, bytes):
        raise DecodeError("undecodable", "not a usage event")
    return value


@pytest.mark.asyncio
async def test_sink_rides_out_an_outage_without_losing_or_doubling_a_row(
        chdb_database: str, fault_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ClickHouse goes down mid-stream: nothing is acked until its insert lands, the buffer
    stops at max_buffer (the sink stops reading), retries back off, and after the outage
    every event is stored once and acked once, in offset order."""
    with connect(chdb_database) as inner:
        apply_migrations(inner, MIGRATIONS)
        client = RecordingClient(inner)
        clock = FakeClock()
        writer = LedgerWriter(client, max_rows=2, max_age_s=60, max_buffer=4,  # type: ignore[arg-type]
                              clock=clock)
        acks: list[tuple[int, int]] = []
        rejected: list[str] = []
        acks_seen_while_down: list[int] = []

        async def sleep(seconds: float) -> None:       # the outage ends 3 s after it began
            acks_seen_while_down.append(len(acks))
            clock.now += seconds
            if clock.now >= 1003.0 and fault_file.exists():
                fault_file.unlink()

        async def reject(event: Any, code: str, reason: str) -> None:
            rejected.append(code)

        sink = SinkConsumer("usage", writer, _decode,
                            InsertRetry(RetryPolicy(0.5, 4.0, jitter=0.0), clock=clock), reject,
                            sleep=sleep)
        values: list[Any] = [make_usage(f"r{i}") for i in range(10)]
        values.insert(3, b"garbage")
        events = [FakeEvent(0, offset, value, acks) for offset, value in enumerate(values)]
        fault_file.touch()
        caplog.set_level(logging.INFO, logger="llmpipe.ledger")
        await sink.consume(_events(events))
        await sink.drain()

    assert acks_seen_while_down == [0, 0, 0, 0]            # nothing acked before its insert
    assert clock.now == 1003.5                             # back at the first retry after 3 s
    # The outage's wait, and possibly one more after it: the event source here never yields,
    # so the background flush only runs once the buffer is full again.
    assert sink.backpressure_waits in (1, 2) and writer.pending == 0
    assert acks == [(0, offset) for offset in range(11)]   # each once, in order
    assert rejected == ["undecodable"]
    ids = [f"r{i}" for i in range(10)]
    with connect(chdb_database) as check:
        assert count_usage(check, ids) == dict.fromkeys(ids, 1)
        assert raw_count(check) == 10                      # not merely hidden by FINAL
    first = client.tokens[0]
    assert client.tokens[:4] == [first] * 4                # the same batch, retried as is
    assert first not in client.tokens[4:]
    failed = [r.getMessage() for r in caplog.records if "ledger_insert_failed" in r.getMessage()]
    assert [m.split("retry_in=")[1].split("s ")[0] for m in failed] == ["0.50", "1.00", "2.00"]
    assert all("Connection refused" in m for m in failed)
    assert sum("ledger_insert_recovered" in r.getMessage() for r in caplog.records) == 1
    assert sum("ledger_backpressure sink=usage" in r.getMessage()
               for r in caplog.records) == sink.backpressure_waits


@pytest.mark.asyncio
async def test_sink_keeps_reading_while_an_insert_runs(ledger: ClickHouse) -> None:
    """A due batch is inserted in the background: the stream is not stalled per INSERT, and
    the rows read meanwhile are acked only once their own insert lands."""
    gate = threading.Event()

    class SlowClient(RecordingClient):
        def insert(self, *args: Any, **kwargs: Any) -> int:
            gate.wait(10)
            return super().insert(*args, **kwargs)

    client = SlowClient(ledger)
    writer = LedgerWriter(client, max_rows=4, max_age_s=60, max_buffer=100,  # type: ignore[arg-type]
                          clock=FakeClock())
    acks: list[tuple[int, int]] = []

    async def never(event: Any, code: str, reason: str) -> None:
        raise AssertionError(f"rejected: {code} {reason}")

    sink = SinkConsumer("usage", writer, _decode, InsertRetry(), never)
    try:
        for offset in range(14):
            await sink.handle(FakeEvent(0, offset, make_usage(f"s{offset}"), acks))
            await asyncio.sleep(0.01)
        assert client.tokens == [] and writer.pending == 14 and acks == []   # first INSERT stuck
    finally:
        gate.set()
    await sink.drain()
    assert acks == [(0, offset) for offset in range(14)]
    assert [t.split(":")[3] for t in client.tokens] == ["0-3", "4-7", "8-11", "12-13"]
    assert count_usage(ledger, [f"s{i}" for i in range(14)]) == {f"s{i}": 1 for i in range(14)}


@pytest.mark.asyncio
async def test_a_flush_tick_inserts_only_ripe_rows_and_a_pause_all_of_them(ledger: ClickHouse) -> None:
    """The flusher's tick touches only sinks with ripe rows; once the flow pauses
    (rebalance, shutdown) it inserts every pending row, so Faust gets its acks."""
    from pipeline.agents.ledger import flush_due
    clock, acks = FakeClock(), []

    async def never(event: Any, code: str, reason: str) -> None:
        raise AssertionError(f"rejected: {code} {reason}")

    def sink_of(name: str) -> tuple[RecordingClient, SinkConsumer]:
        client = RecordingClient(ledger)
        writer = LedgerWriter(client, max_rows=100, max_age_s=1.0, max_buffer=1000,  # type: ignore[arg-type]
                              clock=clock)
        return client, SinkConsumer(name, writer, _decode, InsertRetry(), never)

    (old_client, old), (young_client, young), (empty_client, empty) = map(
        sink_of, ("old", "young", "empty"))
    await old.handle(FakeEvent(0, 0, make_usage("tick-old"), acks))
    clock.now += 2.0
    await young.handle(FakeEvent(1, 0, make_usage("tick-young"), acks))
    flushes: list[str] = []
    for sink in (old, young, empty):
        sink.flush = _counted(sink.flush, sink.name, flushes)  # type: ignore[method-assign]
    await flush_due([old, young, empty])
    assert flushes == ["old"]                  # an idle tick makes no flush (and no task)
    assert (len(old_client.tokens), young_client.tokens, acks) == (1, [], [(0, 0)])
    await flush_due([old, young, empty], everything=True)
    assert acks == [(0, 0), (1, 0)] and empty_client.tokens == []
    assert count_usage(ledger, ["tick-old", "tick-young"]) == {"tick-old": 1, "tick-young": 1}


def _counted(flush: Callable[..., Awaitable[bool]], name: str, calls: list[str]):
    async def counted(**kwargs: Any) -> bool:
        calls.append(name)
        return await flush(**kwargs)
    return counted


def test_the_ledger_views_take_more_ids_than_one_query_can_hold(ledger: ClickHouse) -> None:
    """An IN list is written into the SQL text and ClickHouse refuses a query over
    max_query_size (256 KiB): ~6,500 request ids. The views query in chunks."""
    from pipeline.agents.ledger import count_by, usage_rows, usage_totals
    stored = [f"kept-{i}" for i in range(3)]
    insert_usage(ledger, [make_usage(rid, created_at_ms=RECENT_MS - 1000,
                                     completed_at_ms=RECENT_MS) for rid in stored], None)
    ids = [f"{uuid.uuid4()}-{'x' * 20}" for _ in range(8_000)] + stored
    assert len(", ".join(f"'{i}'" for i in ids)) > 256 * 1024
    counts = count_usage(ledger, ids)
    assert len(counts) == len(ids) and sum(counts.values()) == 3
    assert sum(count_by(ledger, "usage", "request_id", tuple(ids)).values()) == 3
    assert sorted(r["request_id"] for r in usage_rows(ledger, tuple(ids))) == stored
    again = tuple(ids[-1:] + ids[:2_500] + ids[-3:])       # a stored id in two chunks
    assert sorted(r["request_id"] for r in usage_rows(ledger, again)) == stored
    totals = usage_totals(ledger, tuple(ids))
    assert totals["final"]["rows"] == totals["final"]["distinct"] == 3
    assert Decimal(totals["final"]["cost_usd"]) == Decimal("0.0018")
