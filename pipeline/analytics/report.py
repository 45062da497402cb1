"""Reports read back from the usage ledger: the dev/demo report, and the analyst commands.

``dev_report`` is what a dev/demo run cost and how it behaved. The second half of the file
drives ``llmpipe report`` / ``reprice`` (questions in
:mod:`pipeline.analytics.queries`, rendering as table, CSV or JSON here).

Every query reads ``usage FINAL``, so a request billed twice (re-delivery) counts once.
Percentiles use ClickHouse ``quantilesExactInclusive``: exact, linear interpolation between
closest ranks on the sorted values (h = (n - 1) * p, like numpy's default / Excel
PERCENTILE.INC). Latency is measured over ``status = 'ok'`` rows only, so fast rejections
do not flatter it; cache hits stay in (their provider_ms is 0).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Iterable, Sequence

from pipeline.analytics.clickhouse import ClickHouse
from pipeline.analytics.ledger import USAGE_TABLE

PERCENTILES = (0.5, 0.95, 0.99)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO_USD = Decimal("0.000001")


@dataclass(frozen=True)
class ErrorCount:
    code: str
    requests: int


@dataclass(frozen=True)
class ModelLine:
    """One served model: its share of requests, tokens and exact cost."""

    served_model: str          # "" when no model answered (rejections, some errors)
    requests: int
    share: float               # requests / all requests in the report
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal


@dataclass(frozen=True)
class Latency:
    """P50/P95/P99 in ms over ``samples`` ok requests; None when there are none."""

    samples: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class DevReport:
    since: datetime | None
    until: datetime | None
    request_ids: int | None           # how many ids were asked for, None if not filtered
    tenant: str | None
    requests: int                     # usage rows after FINAL
    distinct_request_ids: int
    raw_rows: int                     # rows before FINAL: duplicates not yet merged away
    ok: int
    errors: int
    errors_by_code: tuple[ErrorCount, ...]
    models: tuple[ModelLine, ...]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: Decimal
    baseline_cost_usd: Decimal
    end_to_end: Latency               # completed_at - created_at
    provider: Latency                 # provider_ms
    pipeline: Latency                 # pipeline_ms

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        """JSON with money as exact decimal strings and times as ISO 8601."""
        return json.dumps(self.to_dict(), indent=indent)

    def format_text(self) -> str:
        """A readable multi-section table (money to 6 decimals with a $ prefix)."""
        out: list[str] = []
        scope = []
        if self.since or self.until:
            scope.append(f"{_iso(self.since) or '-inf'} .. {_iso(self.until) or '+inf'}")
        if self.request_ids is not None:
            scope.append(f"{self.request_ids} request ids")
        if self.tenant is not None:
            scope.append(f"tenant {self.tenant}")
        out.append(f"LLM pipeline report ({', '.join(scope) or 'all usage'})")

        out += _section("Totals", ["", "count"], [
            ["requests", _int(self.requests)],
            ["distinct request ids", _int(self.distinct_request_ids)],
            ["duplicate rows absorbed", _int(self.raw_rows - self.requests)],
            ["ok", _int(self.ok)],
            ["errors", _int(self.errors)],
        ])
        out += _section("Errors by code", ["code", "requests"],
                        [[e.code, _int(e.requests)] for e in self.errors_by_code]
                        or [["(none)", "0"]])
        out += _section("Model mix", ["served model", "requests", "share"], [
            [m.served_model or "(none)", _int(m.requests), f"{m.share * 100:.1f}%"]
            for m in self.models])
        out += _section("Tokens", ["served model", "prompt", "completion"], [
            *[[m.served_model or "(none)", _int(m.prompt_tokens), _int(m.completion_tokens)]
              for m in self.models],
            ["total", _int(self.prompt_tokens), _int(self.completion_tokens)],
        ])
        out += _section("Cost (USD)", ["served model", "cost"], [
            *[[m.served_model or "(none)", format_usd(m.cost_usd)] for m in self.models],
            ["total", format_usd(self.cost_usd)],
            *([["baseline (same tokens, baseline models)", format_usd(self.baseline_cost_usd)],
               ["saved vs baseline", format_usd(self.baseline_cost_usd - self.cost_usd)]]
              if self.baseline_cost_usd else []),
        ])
        out += _section("Latency (ms, ok requests)", ["", "n", "p50", "p95", "p99"], [
            [name, _int(lat.samples), _ms(lat.p50_ms), _ms(lat.p95_ms), _ms(lat.p99_ms)]
            for name, lat in (("end to end", self.end_to_end), ("provider", self.provider),
                              ("pipeline", self.pipeline))])
        return "\n".join(out) + "\n"


def format_usd(amount: Decimal) -> str:
    """``$1,234.567890``: six decimals, rounded half up, for display only."""
    value = amount.quantize(_MICRO_USD, rounding=ROUND_HALF_UP)
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.6f}"


def to_epoch_ms(moment: datetime) -> int:
    """Exact epoch ms of a timezone-aware datetime (naive ones are refused: ambiguous)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} is naive; pass a timezone-aware datetime")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def dev_report(client: ClickHouse, *, since: datetime | None = None,
               until: datetime | None = None, request_ids: Iterable[str] | None = None,
               tenant: str | None = None) -> DevReport:
    """The report over usage with ``since <= created_at < until``, and/or the given ids."""
    ids = None if request_ids is None else sorted(set(request_ids))
    where, params = _filters(since, until, ids, tenant)
    src = f"{USAGE_TABLE} FINAL WHERE {where}"

    (requests, distinct, ok, errors, prompt, completion, cached, cost, baseline), = \
        client.query(f"""
        SELECT count(), uniqExact(request_id), countIf(status = 'ok'), countIf(status != 'ok'),
               sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens),
               sum(cost_usd), sum(baseline_cost_usd)
        FROM {src}""", params).result_rows
    raw_rows = client.query(f"SELECT count() FROM {USAGE_TABLE} WHERE {where}",
                            params).result_rows[0][0]
    error_rows = client.query(f"""
        SELECT if(error_code = '', concat('(', status, ')'), error_code) AS code, count() AS n
        FROM {src} AND status != 'ok'
        GROUP BY code ORDER BY n DESC, code""", params).result_rows
    model_rows = client.query(f"""
        SELECT served_model, count() AS n, sum(prompt_tokens), sum(completion_tokens),
               sum(cost_usd)
        FROM {src}
        GROUP BY served_model ORDER BY n DESC, served_model""", params).result_rows
    levels = ", ".join(str(p) for p in PERCENTILES)
    (samples, e2e, provider, pipeline), = client.query(f"""
        SELECT count(),
               quantilesExactInclusive({levels})(
                   toUnixTimestamp64Milli(completed_at) - toUnixTimestamp64Milli(created_at)),
               quantilesExactInclusive({levels})(provider_ms),
               quantilesExactInclusive({levels})(pipeline_ms)
        FROM {src} AND status = 'ok'""", params).result_rows

    return DevReport(
        since=since, until=until, request_ids=None if ids is None else len(ids), tenant=tenant,
        requests=int(requests), distinct_request_ids=int(distinct), raw_rows=int(raw_rows),
        ok=int(ok), errors=int(errors),
        errors_by_code=tuple(ErrorCount(str(code), int(n)) for code, n in error_rows),
        models=tuple(ModelLine(str(model), int(n), int(n) / requests if requests else 0.0,
                               int(p), int(c), _decimal(usd))
                     for model, n, p, c, usd in model_rows),
        prompt_tokens=int(prompt), completion_tokens=int(completion), cached_tokens=int(cached),
        cost_usd=_decimal(cost), baseline_cost_usd=_decimal(baseline),
        end_to_end=_latency(samples, e2e), provider=_latency(samples, provider),
        pipeline=_latency(samples, pipeline),
    )


def count_usage(client: ClickHouse, request_ids: Iterable[str]) -> dict[str, int]:
    """Usage rows per request id after FINAL (0 for ids with none): exactly-once checks."""
    ids = sorted(set(request_ids))
    if not ids:
        return {}
    rows = client.query(f"SELECT request_id, count() FROM {USAGE_TABLE} FINAL "
                        "WHERE request_id IN %(ids)s GROUP BY request_id",
                        {"ids": tuple(ids)}).result_rows
    counts = dict.fromkeys(ids, 0)
    counts.update({str(rid): int(n) for rid, n in rows})
    return counts


# --- helpers ---------------------------------------------------------------------------------

def _filters(since: datetime | None, until: datetime | None, ids: Sequence[str] | None,
             tenant: str | None) -> tuple[str, dict[str, Any]]:
    clauses = ["1"]
    params: dict[str, Any] = {}
    if since is not None:
        clauses.append("created_at >= fromUnixTimestamp64Milli(%(since_ms)s, 'UTC')")
        params["since_ms"] = to_epoch_ms(since)
    if until is not None:
        clauses.append("created_at < fromUnixTimestamp64Milli(%(until_ms)s, 'UTC')")
        params["until_ms"] = to_epoch_ms(until)
    if ids is not None:
        if ids:
            clauses.append("request_id IN %(ids)s")
            params["ids"] = tuple(ids)
        else:
            clauses.append("0")
    if tenant is not None:
        clauses.append("tenant = %(tenant)s")
        params["tenant"] = tenant
    return " AND ".join(clauses), params


def _decimal(value: Any) -> Decimal:
    # sum(Decimal(18, 9)) is Decimal(38, 9) and arrives as a Decimal; never route via float.
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    raise TypeError(f"expected an exact decimal from ClickHouse, got {type(value).__name__}")


def _latency(samples: int, values: Sequence[float]) -> Latency:
    if not samples:
        return Latency(0, None, None, None)
    p50, p95, p99 = (None if math.isnan(v) else float(v) for v in values)
    return Latency(int(samples), p50, p95, p99)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return format(value, "f")  # "0.000000000", not "0E-9"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _int(n: int) -> str:
    return f"{n:,}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _section(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  " + "  ".join([first, *rest]).rstrip()

    return ["", title, "  " + "-" * (sum(widths) + 2 * (len(widths) - 1)), line(header),
            *[line(r) for r in rows]]


# --- analyst reports (llmpipe report / reprice) ----------------------------------------------

#: Computed row properties shown next to the dataclass fields when a row has them.
_DERIVED = ("saved_usd", "difference_usd")


def row_dicts(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Dataclass rows as ordered dicts (fields, then derived money); columns that are None
    in every row (an ungrouped ``key``) are left out."""
    dicts = []
    for row in rows:
        d = asdict(row)
        d.update({name: getattr(row, name) for name in _DERIVED if hasattr(row, name)})
        dicts.append(d)
    if dicts:
        empty = [k for k in dicts[0] if all(d[k] is None for d in dicts)]
        for d in dicts:
            for k in empty:
                del d[k]
    return dicts


def render_rows(rows: Sequence[Any], fmt: str = "table", title: str = "") -> str:
    """``table`` (aligned, money as $ to 6 decimals), ``csv`` or ``json`` (exact decimals)."""
    dicts = row_dicts(rows)
    if fmt == "json":
        return json.dumps(_plain(dicts), indent=2) + "\n"
    header = list(dicts[0]) if dicts else []
    if fmt == "csv":
        import csv
        import io
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for d in dicts:
            writer.writerow([_plain(v) for v in d.values()])
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"format must be table, csv or json, not {fmt!r}")
    if not dicts:
        return (title + "\n" if title else "") + "  (no rows)\n"
    body = [[_cell(k, v) for k, v in d.items()] for d in dicts]
    lines = _section(title, header, body)[1:] if title else _section("", header, body)[3:]
    return "\n".join(lines) + "\n"


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        return format_usd(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, float):
        if name in ("share", "rate"):
            return f"{value * 100:.2f}%"
        return _ms(value)
    return str(value) if value != "" else "(none)"


REPORTS = ("cost", "savings", "latency", "errors", "routing", "top")
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
    scope = f"{_iso(since) or '-inf'} .. {_iso(until) or '+inf'}"
    title = f"{args.report}" + (f" by {args.by}" if args.by else "") + f" ({scope})"
    sys.stdout.write(render_rows(rows, args.format, title))
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
        doc = {"price_version": result.price_version, "since": _iso(since), "until": _iso(until),
               "old_cost_usd": result.old_cost_usd, "new_cost_usd": result.new_cost_usd,
               "difference_usd": result.difference_usd, "lines": row_dicts(result.lines)}
        sys.stdout.write(json.dumps(_plain(doc), indent=2) + "\n")
        return 0
    if args.format == "csv":
        sys.stdout.write(render_rows(result.lines, "csv"))
        return 0
    scope = f"{_iso(since) or '-inf'} .. {_iso(until) or '+inf'}"
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
                          "batching and cache; latency: P50/P95/P99 by provider and model; "
                          "errors: error rates by code; routing: routing mix; top: top spenders")
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
