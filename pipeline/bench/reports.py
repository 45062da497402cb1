"""``llmpipe bench reports``: time every analyst report on N generated usage rows in chDB.

What it does, in a scratch chDB directory (wiped first, removed afterwards unless --keep):

1. applies the migrations (so the rollup views are live);
2. times the ledger's own insert path (:func:`pipeline.analytics.rows.insert_usage`, the
   clickhouse-connect call the ledger sink makes) on ``min(200_000, N)`` Usage events in
   batches of 5,000 -- rows/s through Python objects, row conversion and the rollup views;
3. bulk-generates the N rows server side (``INSERT ... SELECT FROM numbers()`` in chunks of
   1M, through the same views): 30 days of traffic ending today 00:00 UTC, skewed tenants,
   teams, end users, the catalog's models and exact per-request costs from the catalog's
   prices (integer nano-dollars per token, so Decimal and exact);
4. runs each report query ``--repeat`` times against raw ``usage FINAL`` and, where the
   report has one, the rollup, and prints min / median / max and raw ÷ rollup;
5. checks raw and rollup totals agree (they must, nothing was re-delivered).

Generation is not the sink's ingest path (no Kafka, no Python per row); step 2 is.
"""

from __future__ import annotations

import resource
import shutil
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from pipeline.analytics.clickhouse import connect
from pipeline.analytics.rows import insert_usage
from pipeline.analytics.migrate import apply_migrations
from pipeline.analytics.render import format_usd
from pipeline.analytics.report import analyst_report
from pipeline.catalog import Catalog, load_catalog
from pipeline.events.models import Usage

DAY_MS = 86_400_000
CHUNK = 1_000_000
SINK_ROWS = 200_000
SINK_BATCH = 5_000

#: (report, --by, has a rollup form)
QUERIES: tuple[tuple[str, str | None, bool], ...] = (
    ("cost", "tenant", True), ("cost", "team", True), ("cost", "model", True),
    ("cost", "day", True), ("cost", "user", False), ("savings", None, False),
    ("latency", None, True), ("errors", None, True), ("routing", None, True),
    ("top", "tenant", True), ("top", "user", False),
)


def _models(catalog: Catalog) -> list[tuple[str, int, int, int, int]]:
    """(name, weight, input, cached input, output nano-dollars per token) for generation."""
    weights = {"gpt-4.1": 30, "gpt-4o-mini": 20, "deepseek-v3.2": 20, "gemini-2.5-flash": 15,
               "claude-sonnet-4.5": 10, "gpt-4o": 5}
    out = []
    for name, weight in weights.items():
        if catalog.resolve(name) is None:
            continue
        m = catalog.model(name)
        prices = [p * 1000 for p in (m.input_per_mtok, m.cached_input_per_mtok, m.output_per_mtok)]
        if any(p != p.to_integral_value() for p in prices):
            raise ValueError(f"{name}: prices finer than $0.001/MTok cannot be generated exactly")
        out.append((name, weight, *(int(p) for p in prices)))
    return out


def _generate_sql(catalog: Catalog, start_ms: int, span_ms: int, total: int, first: int,
                  count: int) -> str:
    models = _models(catalog)
    cumulative, acc = [], 0
    for _, weight, *_ in models:
        acc += weight
        cumulative.append(acc)
    names = [m[0] for m in models]
    base = catalog.model(catalog.baseline_model)
    base_in, base_cached, base_out = (int(p * 1000) for p in (
        base.input_per_mtok, base.cached_input_per_mtok, base.output_per_mtok))

    def arr(values: list[Any]) -> str:
        return "[" + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values) + "]"

    # h(k): an independent uniform 0..2^64 per row and attribute k.
    return f"""
INSERT INTO usage (request_id, tenant, team, end_user, created_at, routed_at, first_token_at,
    completed_at, status, error_code, requested_model, routed_model, served_model, provider,
    deployment, region, route_rule, task_class, attempts, fallbacks, batch_id, batch_size,
    cache, prompt_tokens, completion_tokens, cached_tokens, cost_usd, baseline_cost_usd,
    price_version, queue_ms, pipeline_ms, provider_ms)
SELECT
    toString(generateUUIDv4(number)) AS request_id,
    concat('tenant-', toString(toUInt32(pow(cityHash64(number, 1) / 18446744073709551616.0, 2) * 50))) AS tenant,
    concat('team-', toString(cityHash64(number, 2) % 4)) AS team,
    concat('user-', toString(toUInt32(pow(cityHash64(number, 3) / 18446744073709551616.0, 3) * 10000))) AS end_user,
    fromUnixTimestamp64Milli(toInt64({start_ms} + intDiv(number * {span_ms}, {total})), 'UTC') AS created_at,
    created_at + toIntervalMillisecond(queue) AS routed_at,
    if(status = 'ok', routed_at + toIntervalMillisecond(intDiv(prov, 3)), toDateTime64(0, 3, 'UTC')) AS first_token_at,
    created_at + toIntervalMillisecond(queue + pipe + prov) AS completed_at,
    multiIf(outcome < 9700, 'ok', outcome < 9900, 'error', 'rejected') AS status,
    multiIf(status = 'ok', '', status = 'rejected', 'budget_exceeded',
            outcome < 9800, 'rate_limited', outcome < 9870, 'server_error', 'timeout') AS error_code,
    model AS requested_model, model AS routed_model, if(status = 'rejected', '', model) AS served_model,
    splitByChar('-', model)[1] AS provider,
    concat(model, if(cityHash64(number, 5) % 2 = 0, '-eu', '-us')) AS deployment,
    if(endsWith(deployment, '-eu'), 'eu', 'us') AS region,
    ['default', 'simple->cheap', 'code->strong', 'long->large-context', 'tenant-override'][1 + cityHash64(number, 6) % 5] AS route_rule,
    ['chat', 'simple', 'code', 'long', 'extract'][1 + cityHash64(number, 6) % 5] AS task_class,
    toUInt16(1 + (cityHash64(number, 7) % 20 = 0)) AS attempts,
    toUInt16(cityHash64(number, 7) % 40 = 0) AS fallbacks,
    if(batched, concat('batch-', toString(intDiv(number, 16))), '') AS batch_id,
    toUInt32(if(batched, 16, 0)) AS batch_size,
    if(hit, 'hit', 'miss') AS cache,
    toUInt32(if(status = 'rejected', 0, 50 + cityHash64(number, 8) % 3000)) AS prompt_tokens,
    toUInt32(if(status = 'ok', 10 + cityHash64(number, 9) % 1200, 0)) AS completion_tokens,
    toUInt32(if(status = 'ok' AND cityHash64(number, 10) % 4 = 0, intDiv(prompt_tokens, 2), 0)) AS cached_tokens,
    toDecimal64(if(status != 'ok' OR hit, 0,
        intDiv((toUInt64(prompt_tokens - cached_tokens) * p_in + toUInt64(cached_tokens) * p_cached
                + toUInt64(completion_tokens) * p_out) * if(batched, 1, 2), 2)), 9) / 1000000000 AS cost_usd,
    toDecimal64(if(status != 'ok', 0,
        toUInt64(prompt_tokens - cached_tokens) * {base_in} + toUInt64(cached_tokens) * {base_cached}
        + toUInt64(completion_tokens) * {base_out}), 9) / 1000000000 AS baseline_cost_usd,
    {catalog.price_version!r} AS price_version,
    toUInt32(queue) AS queue_ms, toUInt32(pipe) AS pipeline_ms,
    toUInt32(if(hit, 0, prov)) AS provider_ms
FROM (
    SELECT number,
        cityHash64(number, 11) % 10000 AS outcome,
        {arr(names)}[arrayFirstIndex(c -> (cityHash64(number, 4) % {acc}) < c, {arr(cumulative)})] AS model,
        transform(model, {arr(names)}, {arr([m[2] for m in models])}, 0) AS p_in,
        transform(model, {arr(names)}, {arr([m[3] for m in models])}, 0) AS p_cached,
        transform(model, {arr(names)}, {arr([m[4] for m in models])}, 0) AS p_out,
        cityHash64(number, 12) % 10 = 0 AS hit,
        (NOT hit) AND cityHash64(number, 13) % 20 = 0 AS batched,
        toUInt32(cityHash64(number, 14) % 20) AS queue,
        toUInt32(5 + cityHash64(number, 15) % 40) AS pipe,
        toUInt32(transform(model, {arr(names)}, {arr([catalog.model(n).typical_latency_ms for n in names])}, 500)
                 * (0.5 + pow(cityHash64(number, 16) / 18446744073709551616.0, 3) * 3)) AS prov
    FROM numbers({first}, {count})
)
SETTINGS async_insert = 0, max_insert_threads = 2
"""


def _sink_rows(catalog: Catalog, start_ms: int, n: int) -> list[Usage]:
    rows = []
    for i in range(n):
        model = ("gpt-4.1", "deepseek-v3.2", "gemini-2.5-flash")[i % 3]
        p, c = 200 + i % 1000, 20 + i % 300
        rows.append(Usage(
            request_id=f"sink-{i}", tenant=f"tenant-{i % 7}", team=f"team-{i % 3}",
            created_at_ms=start_ms + i * 10, completed_at_ms=start_ms + i * 10 + 600,
            status="ok", served_model=model, provider=model.split("-")[0],
            deployment=f"{model}-eu", prompt_tokens=p, completion_tokens=c,
            cost_nanos=catalog.cost_nanos(model, p, c),
            baseline_cost_nanos=catalog.cost_nanos(catalog.baseline_model, p, c),
            price_version=catalog.price_version, provider_ms=500))
    return rows


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times, result


def _ingest(client: Any, catalog: Catalog, start_ms: int, rows_total: int, out: Any) -> None:
    """Steps 2 and 3 of the module doc: the ledger insert path, then bulk generation."""
    # 2. the ledger's insert path (its rows are truncated before step 3)
    n_sink = min(SINK_ROWS, rows_total)
    sink = _sink_rows(catalog, start_ms, n_sink)
    t0 = time.perf_counter()
    for i in range(0, n_sink, SINK_BATCH):
        insert_usage(client, sink[i:i + SINK_BATCH], dedup_token=f"bench:{i}")
    sink_s = time.perf_counter() - t0
    out.write(f"ledger insert path (insert_usage, batches of {SINK_BATCH:,}, views live): "
              f"{n_sink:,} rows in {sink_s:.1f} s = {n_sink / sink_s:,.0f} rows/s\n")
    for table in ("usage", "usage_minute", "usage_daily"):
        client.command(f"TRUNCATE TABLE {table}")

    # 3. bulk generation
    t0 = time.perf_counter()
    for first in range(0, rows_total, CHUNK):
        count = min(CHUNK, rows_total - first)
        client.command(_generate_sql(catalog, start_ms, 30 * DAY_MS, rows_total, first,
                                     count))
    gen_s = time.perf_counter() - t0
    out.write(f"bulk generation (INSERT SELECT, chunks of {CHUNK:,}, through the views): "
              f"{rows_total:,} rows in {gen_s:.1f} s = {rows_total / gen_s:,.0f} rows/s\n")
    t0 = time.perf_counter()
    client.command("OPTIMIZE TABLE usage FINAL")
    out.write(f"OPTIMIZE TABLE usage FINAL: {time.perf_counter() - t0:.1f} s "
              "(queries below run on merged parts)\n")


HELP = "generate N usage rows in a scratch chDB and time every report query, raw vs rollup"


def add_arguments(p: Any) -> None:
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--repeat", type=int, default=5, help="timed runs per query")
    p.add_argument("--data-dir", default=".data/report-bench",
                   help="scratch chDB directory (wiped first)")
    p.add_argument("--keep", action="store_true", help="keep the data directory afterwards")
    p.add_argument("--reuse", action="store_true",
                   help="time the queries on the data a previous --keep run left "
                        "(same --rows); skips the ingest and generation steps")


def main(args: Any) -> int:
    rows_total = int(args.rows)
    repeat = max(1, int(args.repeat))
    if rows_total < 1:
        print("llmpipe bench reports: --rows must be at least 1", file=sys.stderr)
        return 2
    data = Path(args.data_dir).resolve()
    reuse = bool(getattr(args, "reuse", False)) and data.exists()
    if data.exists() and not reuse:
        shutil.rmtree(data)
    catalog = load_catalog()
    now = datetime.now(timezone.utc)
    today = datetime(now.year, now.month, now.day, tzinfo=timezone.utc)
    since, until = today - timedelta(days=30), today
    start_ms = int(since.timestamp() * 1000)
    out = sys.stdout

    admin = connect(f"chdb://{data}")
    admin.command("CREATE DATABASE IF NOT EXISTS bench")
    client = connect(f"chdb://{data}?database=bench")
    try:
        apply_migrations(client)
        out.write(f"llmpipe bench reports: {rows_total:,} usage rows, 30 days "
                  f"{since.date()} .. {until.date()}, chDB at {data}\n\n")
        if reuse:
            have = client.query("SELECT count(), min(created_at) FROM usage").result_rows[0]
            if int(have[0]) != rows_total:
                print(f"llmpipe bench reports: --reuse: {data} holds {int(have[0]):,} rows, "
                      f"not {rows_total:,}", file=sys.stderr)
                return 2
            first = have[1].replace(tzinfo=timezone.utc)
            since = datetime(first.year, first.month, first.day, tzinfo=timezone.utc)
            until = since + timedelta(days=30)
            out.write(f"reusing the data generated earlier ({since.date()} .. {until.date()})\n")
        else:
            _ingest(client, catalog, start_ms, rows_total, out)

        sizes = client.query(
            "SELECT table, sum(rows), formatReadableSize(sum(bytes_on_disk)) FROM system.parts "
            "WHERE database = currentDatabase() AND active AND table IN "
            "('usage', 'usage_minute', 'usage_daily') GROUP BY table ORDER BY table"
        ).result_rows
        for table, n, size in sizes:
            out.write(f"  {table:<13} {int(n):>12,} rows  {size:>10} on disk\n")

        # 4. the queries
        out.write(f"\nreport query times over the 30 days, ms (min / median / max of {repeat}; "
                  "rollup = usage_daily):\n")
        out.write(f"  {'report':<16}{'raw usage FINAL':>28}{'rollup':>28}{'raw/rollup':>12}\n")
        totals: dict[str, Decimal] = {}
        for name, by, has_rollup in QUERIES:
            label = name + (f" --by {by}" if by else "")
            cells, medians = [], []
            for source in ("raw", "rollup"):
                if source == "rollup" and not has_rollup:
                    cells.append("-")
                    continue
                times, rows = _timed(lambda: analyst_report(
                    client, name, by=by, since=since, until=until, source=source,
                    catalog=catalog, limit=10), repeat)
                medians.append(statistics.median(times))
                cells.append(f"{min(times):.0f} / {statistics.median(times):.0f} / "
                             f"{max(times):.0f}")
                if name == "cost" and by == "tenant":
                    totals[source] = sum((r.cost_usd for r in rows), Decimal(0))
            ratio = f"{medians[0] / medians[1]:.1f}x" if len(medians) == 2 else "-"
            out.write(f"  {label:<16}{cells[0]:>28}{cells[1]:>28}{ratio:>12}\n")
        hour = (until - timedelta(hours=1), until)
        for source in ("raw", "rollup"):
            times, _ = _timed(lambda: analyst_report(client, "cost", by="tenant", since=hour[0],
                                                     until=hour[1], source=source), repeat)
            out.write(f"  cost --by tenant, last hour only, {source:<6} (rollup = usage_minute): "
                      f"{min(times):.0f} / {statistics.median(times):.0f} / "
                      f"{max(times):.0f} ms\n")

        # 5. consistency
        agree = totals.get("raw") == totals.get("rollup")
        out.write(f"\ntotal cost raw {format_usd(totals['raw'])}, rollup "
                  f"{format_usd(totals['rollup'])}: {'agree' if agree else 'DIFFER'}\n")
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out.write(f"peak RSS of this process: {peak_mib:,.0f} MiB\n")
        return 0 if agree else 1
    finally:
        client.close()
        admin.close()
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
