"""The dev/demo report: what a run cost and how it behaved, read back from the usage
ledger (``llmpipe dev`` prints it; a worker serves it at /llmpipe/ledger/report/).

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
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable, Iterator, Sequence

from pipeline.analytics.clickhouse import ClickHouse
from pipeline.analytics.rows import USAGE_TABLE
from pipeline.analytics.query import PERCENTILES, exact_decimal, to_epoch_ms
from pipeline.analytics.render import count_text, format_usd, iso, ms_text, plain, section

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
    first_token: Latency = Latency(0, None, None, None)   # ttft_ms, streamed requests only
    cache_hits: int = 0                                   # answered from the response cache
    cache_saved_usd: Decimal = Decimal(0)                 # what those calls would have cost
    context_compressed: int = 0                           # requests context management cut
    context_tokens_removed: int = 0                       # their estimated prompt tokens cut
    context_saved_usd: Decimal = Decimal(0)               # ... at the served models' prices

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        """JSON with money as exact decimal strings and times as ISO 8601."""
        return json.dumps(self.to_dict(), indent=indent)

    def format_text(self) -> str:
        """A readable multi-section table (money to 6 decimals with a $ prefix)."""
        out: list[str] = []
        scope = []
        if self.since or self.until:
            scope.append(f"{iso(self.since) or '-inf'} .. {iso(self.until) or '+inf'}")
        if self.request_ids is not None:
            scope.append(f"{self.request_ids} request ids")
        if self.tenant is not None:
            scope.append(f"tenant {self.tenant}")
        out.append(f"LLM pipeline report ({', '.join(scope) or 'all usage'})")

        out += section("Totals", ["", "count"], [
            ["requests", count_text(self.requests)],
            ["distinct request ids", count_text(self.distinct_request_ids)],
            ["duplicate rows absorbed", count_text(self.raw_rows - self.requests)],
            ["ok", count_text(self.ok)],
            ["errors", count_text(self.errors)],
            *([["answered from the cache", count_text(self.cache_hits)]]
              if self.cache_hits else []),
        ])
        out += section("Errors by code", ["code", "requests"],
                        [[e.code, count_text(e.requests)] for e in self.errors_by_code]
                        or [["(none)", "0"]])
        out += section("Model mix", ["served model", "requests", "share"], [
            [m.served_model or "(none)", count_text(m.requests), f"{m.share * 100:.1f}%"]
            for m in self.models])
        out += section("Tokens", ["served model", "prompt", "completion"], [
            *[[m.served_model or "(none)", count_text(m.prompt_tokens), count_text(m.completion_tokens)]
              for m in self.models],
            ["total", count_text(self.prompt_tokens), count_text(self.completion_tokens)],
        ])
        out += section("Cost (USD)", ["served model", "cost"], [
            *[[m.served_model or "(none)", format_usd(m.cost_usd)] for m in self.models],
            ["total", format_usd(self.cost_usd)],
            *([["baseline (same tokens, baseline models)", format_usd(self.baseline_cost_usd)],
               ["saved vs baseline", format_usd(self.baseline_cost_usd - self.cost_usd)]]
              if self.baseline_cost_usd else []),
            *([["saved by the cache (calls not made)", format_usd(self.cache_saved_usd)]]
              if self.cache_hits else []),
            *([[f"saved by context management ({count_text(self.context_compressed)} "
                f"requests, ~{count_text(self.context_tokens_removed)} prompt tokens)",
                format_usd(self.context_saved_usd)]] if self.context_compressed else []),
        ])
        out += section("Latency (ms, ok requests)", ["", "n", "p50", "p95", "p99"], [
            [name, count_text(lat.samples), ms_text(lat.p50_ms), ms_text(lat.p95_ms), ms_text(lat.p99_ms)]
            for name, lat in (("end to end", self.end_to_end), ("provider", self.provider),
                              ("pipeline", self.pipeline), ("first token", self.first_token))
            if lat.samples or name != "first token"])
        return "\n".join(out) + "\n"


def dev_report(client: ClickHouse, *, since: datetime | None = None,
               until: datetime | None = None, request_ids: Iterable[str] | None = None,
               tenant: str | None = None) -> DevReport:
    """The report over usage with ``since <= created_at < until``, and/or the given ids."""
    ids = None if request_ids is None else sorted(set(request_ids))
    where, params = _filters(since, until, ids, tenant)
    src = f"{USAGE_TABLE} FINAL WHERE {where}"

    (requests, distinct, ok, errors, prompt, completion, cached, cost, baseline, hits,
     saved, compressed, removed, context_saved), = client.query(f"""
        SELECT count(), uniqExact(request_id), countIf(status = 'ok'), countIf(status != 'ok'),
               sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens),
               sum(cost_usd), sum(baseline_cost_usd), countIf(cache = 'hit'),
               sum(cache_saved_usd), countIf(context_tokens_before > 0),
               sum(toInt64(context_tokens_before) - toInt64(context_tokens_after)),
               sum(context_saved_usd)
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
    (samples, e2e, provider, pipeline, streamed, ttft), = client.query(f"""
        SELECT count(),
               quantilesExactInclusive({levels})(
                   toUnixTimestamp64Milli(completed_at) - toUnixTimestamp64Milli(created_at)),
               quantilesExactInclusive({levels})(provider_ms),
               quantilesExactInclusive({levels})(pipeline_ms),
               countIf(ttft_ms IS NOT NULL),
               quantilesExactInclusiveIf({levels})(assumeNotNull(ttft_ms), ttft_ms IS NOT NULL)
        FROM {src} AND status = 'ok'""", params).result_rows

    return DevReport(
        since=since, until=until, request_ids=None if ids is None else len(ids), tenant=tenant,
        requests=int(requests), distinct_request_ids=int(distinct), raw_rows=int(raw_rows),
        ok=int(ok), errors=int(errors),
        errors_by_code=tuple(ErrorCount(str(code), int(n)) for code, n in error_rows),
        models=tuple(ModelLine(str(model), int(n), int(n) / requests if requests else 0.0,
                               int(p), int(c), exact_decimal(usd))
                     for model, n, p, c, usd in model_rows),
        prompt_tokens=int(prompt), completion_tokens=int(completion), cached_tokens=int(cached),
        cost_usd=exact_decimal(cost), baseline_cost_usd=exact_decimal(baseline),
        end_to_end=_latency(samples, e2e), provider=_latency(samples, provider),
        pipeline=_latency(samples, pipeline), first_token=_latency(streamed, ttft),
        cache_hits=int(hits), cache_saved_usd=exact_decimal(saved),
        context_compressed=int(compressed), context_tokens_removed=int(removed),
        context_saved_usd=exact_decimal(context_saved),
    )


#: Ids per ``IN (...)`` list: the values are written into the SQL text, and ClickHouse
#: refuses a query over ``max_query_size`` (256 KiB by default): ~6,500 request ids.
IN_CHUNK = 2_000


def in_chunks(values: Sequence[str]) -> Iterator[tuple[str, ...]]:
    """``values`` in tuples of at most :data:`IN_CHUNK`, for one query each."""
    for start in range(0, len(values), IN_CHUNK):
        yield tuple(values[start:start + IN_CHUNK])


def count_usage(client: ClickHouse, request_ids: Iterable[str]) -> dict[str, int]:
    """Usage rows per request id after FINAL (0 for ids with none): exactly-once checks."""
    ids = sorted(set(request_ids))
    counts = dict.fromkeys(ids, 0)
    for chunk in in_chunks(ids):
        rows = client.query(f"SELECT request_id, count() FROM {USAGE_TABLE} FINAL "
                            "WHERE request_id IN %(ids)s GROUP BY request_id",
                            {"ids": chunk}).result_rows
        counts.update({str(rid): int(n) for rid, n in rows})
    return counts


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


def _latency(samples: int, values: Sequence[float]) -> Latency:
    if not samples:
        return Latency(0, None, None, None)
    p50, p95, p99 = (None if math.isnan(v) else float(v) for v in values)
    return Latency(int(samples), p50, p95, p99)
