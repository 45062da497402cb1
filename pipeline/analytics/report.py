"""The analyst commands ``llmpipe report`` and ``llmpipe reprice``: the questions of
pipeline/analytics/queries.py and reprice.py, rendered as a table, CSV or JSON
(pipeline/analytics/render.py). docs/analytics.md has the SQL behind each."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from pipeline.analytics.clickhouse import ClickHouse
from pipeline.analytics.render import format_usd, iso, plain, render_rows, row_dicts

REPORTS = ("cost", "savings", "latency", "errors", "routing", "top", "cache", "context")


BY_CHOICES = ("tenant", "team", "user", "model", "provider", "deployment", "rule", "day")


def parse_moment(text: str | None) -> datetime | None:
    """ISO 8601 date or date-time; naive values are taken as UTC."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date or date-time "
                         "(e.g. 2026-11-01 or 2026-11-01T12:00:00Z)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def analyst_report(client: ClickHouse, name: str, *, by: str | None = None,
                   since: datetime | None = None, until: datetime | None = None,
                   tenant: str | None = None, source: str = "raw", limit: int = 10,
                   catalog: Any = None) -> list[Any]:
    """The rows of ``llmpipe report NAME`` (see :mod:`pipeline.analytics.queries`)."""
    from pipeline.analytics import queries as q

    period: dict[str, Any] = dict(since=since, until=until, tenant=tenant)
    if name == "cost":
        return q.cost_by(client, by or "tenant", source=source, **period)  # type: ignore[arg-type]
    if name == "savings":
        if source != "raw":
            raise ValueError("savings reads raw usage only (the rollups do not keep the "
                             "batched rows' tokens); drop --source rollup")
        if catalog is None:
            from pipeline.catalog import load_catalog
            catalog = load_catalog()
        return q.savings(client, catalog, by, **period)
    if name == "latency":
        return q.latency(client, by, source=source, **period)  # type: ignore[arg-type]
    if name == "errors":
        return q.error_rates(client, by, source=source, **period)  # type: ignore[arg-type]
    if name == "routing":
        return q.routing_mix(client, by, source=source, **period)  # type: ignore[arg-type]
    if name == "cache":
        if source != "raw":
            raise ValueError("cache reads raw usage only (the rollups keep no cache kind); "
                             "drop --source rollup")
        return q.cache(client, by or "tenant", **period)
    if name == "context":
        if source != "raw":
            raise ValueError("context reads raw usage only (the rollups keep no context "
                             "columns); drop --source rollup")
        return q.context(client, by or "tenant", **period)
    if name == "top":
        return q.top_spenders(client, by or "tenant", limit=limit,
                              source=source, **period)  # type: ignore[arg-type]
    raise ValueError(f"unknown report {name!r}; expected one of {', '.join(REPORTS)}")


def run_report(args: Any) -> int:
    """``llmpipe report``: connect, ask, print; 2 on bad arguments, 3 when ClickHouse fails."""
    import sys

    from pipeline.analytics.clickhouse import ClickHouseError, connect
    from pipeline.settings import Settings

    dsn = args.dsn or Settings.from_env().clickhouse_dsn
    try:
        since, until = parse_moment(args.since), parse_moment(args.until)
        client = connect(dsn)
    except (ValueError, ClickHouseError) as exc:
        print(f"llmpipe report: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 3
    try:
        rows = analyst_report(client, args.report, by=args.by, since=since, until=until,
                              tenant=args.tenant, source=args.source, limit=args.limit)
    except ValueError as exc:
        print(f"llmpipe report: {exc}", file=sys.stderr)
        return 2
    except ClickHouseError as exc:
        print(f"llmpipe report: {exc}", file=sys.stderr)
        return 3
    finally:
        client.close()
    scope = f"{iso(since) or '-inf'} .. {iso(until) or '+inf'}"
    title = f"{args.report}" + (f" by {args.by}" if args.by else "") + f" ({scope})"
    sys.stdout.write(render_rows(rows, args.format, title))
    if args.report == "latency" and args.format == "table" and rows:
        sys.stdout.write("  streamed: ok requests with a known time to first token "
                         "(first_token_at - created_at); ttft_*: their percentiles, - when "
                         "none streamed" + ("; rollups hold TTFT of rows inserted since "
                                            "migration 007" if args.source == "rollup" else "")
                         + "\n")
    return 0


def run_reprice(args: Any) -> int:
    """``llmpipe reprice``: old vs new cost per model under another price file (read-only)."""
    import sys
    from pathlib import Path

    from pipeline.analytics.clickhouse import ClickHouseError, connect
    from pipeline.analytics.reprice import reprice
    from pipeline.catalog import load_catalog
    from pipeline.config import ConfigError
    from pipeline.settings import Settings

    dsn = args.dsn or Settings.from_env().clickhouse_dsn
    try:
        since, until = parse_moment(args.since), parse_moment(args.until)
        catalog = load_catalog(Path(args.price_file))
        client = connect(dsn)
    except (ValueError, ConfigError, OSError, ClickHouseError) as exc:
        print(f"llmpipe reprice: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, ClickHouseError) else 2
    try:
        result = reprice(client, catalog, since=since, until=until, tenant=args.tenant)
    except ClickHouseError as exc:
        print(f"llmpipe reprice: {exc}", file=sys.stderr)
        return 3
    finally:
        client.close()
    if args.format == "json":
        doc = {"price_version": result.price_version, "since": iso(since), "until": iso(until),
               "old_cost_usd": result.old_cost_usd, "new_cost_usd": result.new_cost_usd,
               "difference_usd": result.difference_usd, "lines": row_dicts(result.lines)}
        sys.stdout.write(json.dumps(plain(doc), indent=2) + "\n")
        return 0
    if args.format == "csv":
        sys.stdout.write(render_rows(result.lines, "csv"))
        return 0
    scope = f"{iso(since) or '-inf'} .. {iso(until) or '+inf'}"
    sys.stdout.write(render_rows(result.lines, "table",
                                 f"reprice under {result.price_version} ({scope}), read-only"))
    sys.stdout.write(f"\n  total  old {format_usd(result.old_cost_usd)}  new "
                     f"{format_usd(result.new_cost_usd)}  difference "
                     f"{format_usd(result.difference_usd)}\n")
    unpriced = [line.model or "(none)" for line in result.lines if not line.priced]
    if unpriced:
        sys.stdout.write(f"  kept at old cost (not in the price file): {', '.join(unpriced)}\n")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``report`` and ``reprice`` on the llmpipe subparsers."""
    dsn_help = "ClickHouse DSN (default: $LLMPIPE_CLICKHOUSE_DSN)"
    period = dict(help="ISO 8601 date or date-time, UTC when no offset is given")
    rep = sub.add_parser(
        "report", help="analyst reports over the usage ledger: cost, savings, latency, "
                       "errors, routing, top spenders",
        description="Exact money (Decimal); reads usage FINAL unless --source rollup. "
                    "SQL of every report: docs/analytics.md.")
    rep.add_argument("report", choices=REPORTS,
                     help="cost: cost by --by (default tenant); savings: saved by routing, "
                          "batching and cache; latency: P50/P95/P99 (end to end, provider, "
                          "time to first token of streamed requests) by provider and model; "
                          "errors: error rates by code; routing: routing mix; top: top spenders; "
                          "cache: response-cache hits by kind, hit rate and money saved; "
                          "context: prompt tokens and money saved by context management, "
                          "and what its summaries cost")
    rep.add_argument("--by", choices=BY_CHOICES, help="group by this dimension")
    rep.add_argument("--from", "--since", dest="since", **period)
    rep.add_argument("--to", "--until", dest="until",
                     help="end of the period (exclusive); " + period["help"])
    rep.add_argument("--tenant", help="only this tenant")
    rep.add_argument("--source", choices=("raw", "rollup"), default="raw",
                     help="raw: usage FINAL, exact under re-delivery (default); rollup: the "
                          "per-minute/per-day rollups, fast (docs/analytics.md)")
    rep.add_argument("--limit", type=int, default=10, help="rows of `top` (default 10)")
    rep.add_argument("--format", choices=("table", "csv", "json"), default="table")
    rep.add_argument("--dsn", help=dsn_help)
    rep.set_defaults(func=lambda args: run_report(args))

    rp = sub.add_parser(
        "reprice", help="recompute a period's cost under another price file and show the "
                        "difference (read-only)")
    rp.add_argument("--prices", "--price-file", dest="price_file", required=True,
                    help="a catalog YAML (pipeline/config/catalog.yaml format)")
    rp.add_argument("--from", "--since", dest="since", **period)
    rp.add_argument("--to", "--until", dest="until",
                    help="end of the period (exclusive); " + period["help"])
    rp.add_argument("--tenant", help="only this tenant")
    rp.add_argument("--format", choices=("table", "csv", "json"), default="table")
    rp.add_argument("--dsn", help=dsn_help)
    rp.set_defaults(func=lambda args: run_reprice(args))
