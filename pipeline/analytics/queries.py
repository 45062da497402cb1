"""The analyst's questions, one function each, over the usage ledger; typed rows, exact money.

Every function takes a period (``since <= created_at < until``, timezone-aware, either end
open) and an optional tenant, and reads ``usage FINAL`` by default: a request re-delivered
in a new batch counts once. ``source="rollup"`` reads the materialised rollups instead
(``usage_daily`` when the period is whole UTC days, else ``usage_minute``, which keeps 35
days): much faster on large ledgers, but rollups count inserted rows, so a re-delivery
that slipped past the insert-token dedup counts twice there, and rollup latency quantiles
come from a sampling state (exact up to 8,192 values per group); the rollups' TTFT state
holds the rows inserted since migration 007 (older rows are not backfilled into it).
docs/analytics.md has the SQL behind each function.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.analytics.clickhouse import ClickHouse
from pipeline.analytics.query import PERCENTILES, Query, Source, exact_decimal, list_price_usd
from pipeline.catalog import Catalog



_USD_ZERO = Decimal("0E-9")


# --- rows ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CostRow:
    """Spend of one group: requests, tokens, billed cost and what the baseline would cost."""

    key: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: Decimal
    baseline_cost_usd: Decimal

    @property
    def saved_usd(self) -> Decimal:
        return self.baseline_cost_usd - self.cost_usd


@dataclass(frozen=True)
class SavingsRow:
    """Money saved in one group, split so the parts add up to ``saved_usd``.

    - ``cache``: baseline - cost of cache hits (a hit is billed ~nothing);
    - ``batching``: list price - billed of non-hit rows with a batch id (Batch-API discount);
    - ``routing``: baseline - list price of the other non-hit spend (cheaper models chosen).
    """

    key: str
    requests: int
    cache_hits: int
    batched_requests: int
    cost_usd: Decimal
    baseline_cost_usd: Decimal
    saved_usd: Decimal
    saved_by_routing_usd: Decimal
    saved_by_batching_usd: Decimal
    saved_by_cache_usd: Decimal


@dataclass(frozen=True)
class LatencyRow:
    """P50/P95/P99 (ms) over ``samples`` ok requests of one provider and model, and time to
    first token over the ``streamed`` ones with a known TTFT (None when there are none)."""

    key: str | None          # the --by group, None when not grouped
    provider: str
    model: str
    samples: int
    e2e_p50_ms: float
    e2e_p95_ms: float
    e2e_p99_ms: float
    provider_p50_ms: float
    provider_p95_ms: float
    provider_p99_ms: float
    streamed: int            # ok requests with a known ttft_ms (the TTFT samples)
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_p99_ms: float | None


@dataclass(frozen=True)
class ErrorRateRow:
    """Requests that ended with ``code`` and their share of the group's requests."""

    key: str | None
    code: str
    errors: int
    requests: int
    rate: float


@dataclass(frozen=True)
class RoutingRow:
    """How often ``route_rule`` sent requests to ``model``; share within the group."""

    key: str | None
    route_rule: str
    model: str
    requests: int
    share: float
    cost_usd: Decimal


@dataclass(frozen=True)
class SpenderRow:
    rank: int
    key: str
    requests: int
    cost_usd: Decimal
    share: float             # of the period's total cost


# --- the questions ---------------------------------------------------------------------------

def cost_by(client: ClickHouse, by: str = "tenant", *, since: datetime | None = None,
            until: datetime | None = None, tenant: str | None = None,
            source: Source = "raw") -> list[CostRow]:
    """Cost, tokens and baseline cost per ``by`` group, biggest cost first."""
    q = Query(client, source, since, until, tenant)
    key = q.dimension(by)
    rows = q.run(f"""
        SELECT {key} AS key, {q.requests}, sum(prompt_tokens), sum(completion_tokens),
               sum(cached_tokens), sum(cost_usd), sum(baseline_cost_usd)
        FROM {q.table} WHERE {q.where}
        GROUP BY key ORDER BY sum(cost_usd) DESC, key""")
    return [CostRow(str(k), int(n), int(p), int(c), int(ca), exact_decimal(cost), exact_decimal(base))
            for k, n, p, c, ca, cost, base in rows]


def savings(client: ClickHouse, catalog: Catalog, by: str | None = None, *,
            since: datetime | None = None, until: datetime | None = None,
            tenant: str | None = None) -> list[SavingsRow]:
    """Money saved by routing, batching and cache per group (one "*" row when ungrouped).

    The batching part prices batched rows' tokens at ``catalog`` list prices (no batch
    discount); rows of models the catalog does not know claim no batching saving.
    """
    q = Query(client, "raw", since, until, tenant)
    key = q.dimension(by) if by else "'*'"
    rows = q.run(f"""
        SELECT {key} AS key, served_model, count(), countIf(cache = 'hit'),
               countIf(batch_id != '' AND cache != 'hit'),
               sum(cost_usd), sum(baseline_cost_usd),
               sumIf(cost_usd, cache = 'hit'), sumIf(baseline_cost_usd, cache = 'hit'),
               sumIf(cost_usd, batch_id != '' AND cache != 'hit'),
               sumIf(prompt_tokens - least(cached_tokens, prompt_tokens),
                     batch_id != '' AND cache != 'hit'),
               sumIf(least(cached_tokens, prompt_tokens), batch_id != '' AND cache != 'hit'),
               sumIf(completion_tokens, batch_id != '' AND cache != 'hit')
        FROM {q.table} WHERE {q.where}
        GROUP BY key, served_model ORDER BY key, served_model""")
    acc: dict[str, list[Any]] = defaultdict(lambda: [0, 0, 0] + [_USD_ZERO] * 4)
    for k, model, n, hits, batched, cost, base, hit_cost, hit_base, b_cost, b_in, b_cached, \
            b_out in rows:
        a = acc[str(k)]
        a[0] += int(n)
        a[1] += int(hits)
        a[2] += int(batched)
        a[3] += exact_decimal(cost)
        a[4] += exact_decimal(base)
        a[5] += exact_decimal(hit_base) - exact_decimal(hit_cost)
        b_cost = exact_decimal(b_cost)
        if int(batched) and catalog.resolve(str(model)) is not None:
            a[6] += list_price_usd(catalog, str(model), int(b_in), int(b_cached),
                                   int(b_out)) - b_cost
    out = []
    for k, (n, hits, batched, cost, base, by_cache, by_batching) in sorted(
            acc.items(), key=lambda item: (-(item[1][4] - item[1][3]), item[0])):
        saved = base - cost
        out.append(SavingsRow(k, n, hits, batched, cost, base, saved,
                              saved - by_cache - by_batching, by_batching, by_cache))
    return out


def latency(client: ClickHouse, by: str | None = None, *, since: datetime | None = None,
            until: datetime | None = None, tenant: str | None = None,
            source: Source = "raw") -> list[LatencyRow]:
    """End-to-end, provider and time-to-first-token percentiles of ok requests by provider
    and model. TTFT is over the rows whose ``ttft_ms`` is known (streamed, sane times; see
    007_usage_ttft.sql); a group with none has ``streamed`` 0 and TTFT None.

    Raw: exact (``quantilesExactInclusive``, linear between closest ranks, as dev_report).
    Rollup: merged states (``ttft_ms``, ``streamed_requests`` since migration 007).
    """
    q = Query(client, source, since, until, tenant)
    key = q.dimension(by) if by else "''"
    levels = ", ".join(str(p) for p in PERCENTILES)
    if source == "raw":
        e2e = (f"quantilesExactInclusive({levels})(toUnixTimestamp64Milli(completed_at)"
               " - toUnixTimestamp64Milli(created_at))")
        prov = f"quantilesExactInclusive({levels})(provider_ms)"
        streamed = "countIf(ttft_ms IS NOT NULL)"
        ttft = (f"quantilesExactInclusiveIf({levels})(assumeNotNull(ttft_ms),"
                " ttft_ms IS NOT NULL)")
    else:
        e2e, prov = (f"quantilesMerge({levels})(e2e_ms)", f"quantilesMerge({levels})(provider_ms)")
        streamed, ttft = "sum(streamed_requests)", f"quantilesMerge({levels})(ttft_ms)"
    rows = q.run(f"""
        SELECT {key} AS key, provider, served_model, {q.requests}, {e2e}, {prov},
               {streamed}, {ttft}
        FROM {q.table} WHERE {q.where} AND status = 'ok'
        GROUP BY key, provider, served_model ORDER BY key, provider, served_model""")
    return [LatencyRow(str(k) if by else None, str(p), str(m), int(n),
                       *(float(v) for v in e), *(float(v) for v in pv), int(sn),
                       *((float(v) if sn else None) for v in t))
            for k, p, m, n, e, pv, sn, t in rows]


def error_rates(client: ClickHouse, by: str | None = None, *, since: datetime | None = None,
                until: datetime | None = None, tenant: str | None = None,
                source: Source = "raw") -> list[ErrorRateRow]:
    """Errors per code (``(status)`` when an error has no code) and their rate per group."""
    q = Query(client, source, since, until, tenant)
    key = q.dimension(by) if by else "''"
    rows = q.run(f"""
        SELECT key, code, n_code, n_key FROM (
            SELECT {key} AS key,
                   if(status = 'ok', '', if(error_code = '', concat('(', status, ')'),
                      error_code)) AS code,
                   {q.requests} AS n_code,
                   sum(n_code) OVER (PARTITION BY key) AS n_key
            FROM {q.table} WHERE {q.where}
            GROUP BY key, code)
        WHERE code != ''
        ORDER BY key, n_code DESC, code""")
    return [ErrorRateRow(str(k) if by else None, str(code), int(e), int(n),
                         int(e) / int(n) if n else 0.0)
            for k, code, e, n in rows]


def routing_mix(client: ClickHouse, by: str | None = None, *, since: datetime | None = None,
                until: datetime | None = None, tenant: str | None = None,
                source: Source = "raw") -> list[RoutingRow]:
    """Requests per (route rule, served model), with their share of the group's requests."""
    q = Query(client, source, since, until, tenant)
    key = q.dimension(by) if by else "''"
    rows = q.run(f"""
        SELECT {key} AS key, route_rule, served_model, {q.requests} AS n,
               n / sum(n) OVER (PARTITION BY key), sum(cost_usd)
        FROM {q.table} WHERE {q.where}
        GROUP BY key, route_rule, served_model ORDER BY key, n DESC, route_rule, served_model""")
    return [RoutingRow(str(k) if by else None, str(rule), str(model), int(n), float(share),
                       exact_decimal(cost))
            for k, rule, model, n, share, cost in rows]


@dataclass(frozen=True)
class CacheRow:
    """The response cache for one group: requests, hits by kind, the hit rate, money saved
    (what the hits would have cost at their models' prices) — calls avoided = hits — and
    what the lookups cost (provider embeddings; 0 with the offline embedder), which is
    already in every report's cost."""

    key: str | None
    requests: int
    exact_hits: int
    semantic_hits: int
    bypassed: int
    hit_rate: float
    saved_usd: Decimal
    lookup_usd: Decimal


def cache(client: ClickHouse, by: str | None = "tenant", *, since: datetime | None = None,
          until: datetime | None = None, tenant: str | None = None) -> list[CacheRow]:
    """Cache hits and savings per group (raw usage: the rollups keep no cache kind)."""
    q = Query(client, "raw", since, until, tenant)
    key = q.dimension(by) if by else "''"
    rows = q.run(f"""
        SELECT {key} AS key, {q.requests} AS n, countIf(cache_kind = 'exact'),
               countIf(cache_kind = 'semantic'), countIf(cache = 'bypass'),
               countIf(cache = 'hit') / n, sum(cache_saved_usd), sum(cache_cost_usd)
        FROM {q.table} WHERE {q.where} GROUP BY key ORDER BY key""")
    return [CacheRow(str(k) if by else None, int(n), int(exact), int(semantic), int(bypass),
                     float(rate), exact_decimal(saved), exact_decimal(lookups))
            for k, n, exact, semantic, bypass, rate, saved, lookups in rows]


def top_spenders(client: ClickHouse, by: str = "tenant", *, limit: int = 10,
                 since: datetime | None = None, until: datetime | None = None,
                 tenant: str | None = None, source: Source = "raw") -> list[SpenderRow]:
    """The ``limit`` biggest spenders by tenant, team or end user (``user``, raw only)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    q = Query(client, source, since, until, tenant)
    key = q.dimension(by)
    rows = q.run(f"""
        SELECT key, n, cost, cost / nullIf(sum(cost) OVER (), 0) FROM (
            SELECT {key} AS key, {q.requests} AS n, sum(cost_usd) AS cost
            FROM {q.table} WHERE {q.where} GROUP BY key)
        ORDER BY cost DESC, key LIMIT {int(limit)}""")
    return [SpenderRow(rank, str(k), int(n), exact_decimal(cost), float(share or 0.0))
            for rank, (k, n, cost, share) in enumerate(rows, start=1)]


@dataclass(frozen=True)
class ContextRow:
    """Context management for one group: requests it compressed, their estimated prompt
    tokens before and after, what the removed tokens would have cost at the served models'
    input prices, and the summary calls it made (their own rows) and what they cost —
    net saved = saved_usd - summary_cost_usd."""

    key: str | None
    compressed: int
    tokens_before: int
    tokens_after: int
    saved_usd: Decimal
    summaries: int
    summary_cost_usd: Decimal

    @property
    def cut(self) -> float:
        return 1 - self.tokens_after / self.tokens_before if self.tokens_before else 0.0


def context(client: ClickHouse, by: str | None = "tenant", *, since: datetime | None = None,
            until: datetime | None = None, tenant: str | None = None) -> list[ContextRow]:
    """Tokens and money saved by context management per group (raw usage)."""
    q = Query(client, "raw", since, until, tenant)
    key = q.dimension(by) if by else "''"
    rows = q.run(f"""
        SELECT {key} AS key, countIf(context_tokens_before > 0),
               toUInt64(sum(context_tokens_before)), toUInt64(sum(context_tokens_after)),
               sum(context_saved_usd), countIf(for_request_id != ''),
               sumIf(cost_usd, for_request_id != '')
        FROM {q.table} WHERE {q.where} GROUP BY key
        HAVING countIf(context_tokens_before > 0) + countIf(for_request_id != '') > 0
        ORDER BY key""")
    return [ContextRow(str(k) if by else None, int(n), int(before), int(after),
                       exact_decimal(saved), int(summaries), exact_decimal(summary_cost))
            for k, n, before, after, saved, summaries, summary_cost in rows]
