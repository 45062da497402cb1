-- Materialised rollups of the usage ledger, per minute and per day, for dashboards and
-- long-range questions that should not scan raw rows. Written by materialised views on
-- every INSERT into usage.
--
-- Dimensions: tenant, team, served_model, provider, deployment, route_rule, status,
-- error_code, cache. Measures: requests, tokens, cost and baseline cost (exact Decimal sums;
-- saved = baseline - cost), batched requests, and latency quantile STATES (reservoir of up
-- to 8192 values per state; exact below that) over ok requests' end-to-end and provider ms.
-- Read them with sum(...) and quantilesMerge(0.5, 0.95, 0.99)(...), GROUP BY what you need.
--
-- Idempotency -- what the rollups count:
--  * A retried INSERT with the same insert_deduplication_token (the ledger resends a failed
--    batch unchanged) is dropped by usage AND by each rollup: every target table has its own
--    non_replicated_deduplication_window (without it the rollup double-counts the retry).
--  * A usage row re-delivered in a NEW batch (different token; after a worker crash) is
--    collapsed in usage by ReplacingMergeTree (read with FINAL), but a rollup counts every
--    insert, so it counts that request twice. Rollups are therefore "rows inserted", and
--    exact figures come from usage FINAL (what `llmpipe report` reads by default).
--    docs/analytics.md has the reconciliation query and how to rebuild a day.
--
-- Retention: minute rollup 35 days, daily rollup 5 years (TTL on the bucket; whole parts
-- are dropped, ttl_only_drop_parts).
--
-- Backfill (last two statements): the rows already in usage, read with FINAL, copied only
-- while the rollup is still EMPTY, so re-running this file after a half-failed run never
-- adds them twice. The views exist before the backfill, so nothing inserted after it is
-- missed; but if a ledger writes between the two, the rollup is no longer empty and older
-- rows are not backfilled: run `llmpipe migrate` while no ledger is writing, or rebuild
-- the affected days as docs/analytics.md shows.

CREATE TABLE IF NOT EXISTS usage_minute
(
    minute              DateTime('UTC'),
    tenant              LowCardinality(String),
    team                LowCardinality(String),
    served_model        LowCardinality(String),
    provider            LowCardinality(String),
    deployment          LowCardinality(String),
    route_rule          LowCardinality(String),
    status              LowCardinality(String),
    error_code          LowCardinality(String),
    cache               LowCardinality(String),
    requests            SimpleAggregateFunction(sum, UInt64),
    batched_requests    SimpleAggregateFunction(sum, UInt64),
    prompt_tokens       SimpleAggregateFunction(sum, UInt64),
    completion_tokens   SimpleAggregateFunction(sum, UInt64),
    cached_tokens       SimpleAggregateFunction(sum, UInt64),
    cost_usd            SimpleAggregateFunction(sum, Decimal(38, 9)),
    baseline_cost_usd   SimpleAggregateFunction(sum, Decimal(38, 9)),
    e2e_ms              AggregateFunction(quantiles(0.5, 0.95, 0.99), UInt32),
    provider_ms         AggregateFunction(quantiles(0.5, 0.95, 0.99), UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(minute)
ORDER BY (minute, tenant, team, served_model, provider, deployment, route_rule, status,
          error_code, cache)
TTL minute + INTERVAL 35 DAY DELETE
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS usage_daily
(
    day                 Date,
    tenant              LowCardinality(String),
    team                LowCardinality(String),
    served_model        LowCardinality(String),
    provider            LowCardinality(String),
    deployment          LowCardinality(String),
    route_rule          LowCardinality(String),
    status              LowCardinality(String),
    error_code          LowCardinality(String),
    cache               LowCardinality(String),
    requests            SimpleAggregateFunction(sum, UInt64),
    batched_requests    SimpleAggregateFunction(sum, UInt64),
    prompt_tokens       SimpleAggregateFunction(sum, UInt64),
    completion_tokens   SimpleAggregateFunction(sum, UInt64),
    cached_tokens       SimpleAggregateFunction(sum, UInt64),
    cost_usd            SimpleAggregateFunction(sum, Decimal(38, 9)),
    baseline_cost_usd   SimpleAggregateFunction(sum, Decimal(38, 9)),
    e2e_ms              AggregateFunction(quantiles(0.5, 0.95, 0.99), UInt32),
    provider_ms         AggregateFunction(quantiles(0.5, 0.95, 0.99), UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, tenant, team, served_model, provider, deployment, route_rule, status,
          error_code, cache)
TTL day + INTERVAL 5 YEAR DELETE
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_minute_mv TO usage_minute AS
SELECT
    toStartOfMinute(created_at) AS minute,
    tenant, team, served_model, provider, deployment, route_rule, status, error_code, cache,
    toUInt64(count()) AS requests,
    toUInt64(countIf(batch_id != '')) AS batched_requests,
    toUInt64(sum(prompt_tokens)) AS prompt_tokens,
    toUInt64(sum(completion_tokens)) AS completion_tokens,
    toUInt64(sum(cached_tokens)) AS cached_tokens,
    toDecimal128(sum(cost_usd), 9) AS cost_usd,
    toDecimal128(sum(baseline_cost_usd), 9) AS baseline_cost_usd,
    quantilesStateIf(0.5, 0.95, 0.99)(
        toUInt32(greatest(0, toUnixTimestamp64Milli(completed_at) - toUnixTimestamp64Milli(created_at))),
        status = 'ok') AS e2e_ms,
    quantilesStateIf(0.5, 0.95, 0.99)(provider_ms, status = 'ok') AS provider_ms
FROM usage
GROUP BY minute, tenant, team, served_model, provider, deployment, route_rule, status,
         error_code, cache;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_mv TO usage_daily AS
SELECT
    toDate(created_at) AS day,
    tenant, team, served_model, provider, deployment, route_rule, status, error_code, cache,
    toUInt64(count()) AS requests,
    toUInt64(countIf(batch_id != '')) AS batched_requests,
    toUInt64(sum(prompt_tokens)) AS prompt_tokens,
    toUInt64(sum(completion_tokens)) AS completion_tokens,
    toUInt64(sum(cached_tokens)) AS cached_tokens,
    toDecimal128(sum(cost_usd), 9) AS cost_usd,
    toDecimal128(sum(baseline_cost_usd), 9) AS baseline_cost_usd,
    quantilesStateIf(0.5, 0.95, 0.99)(
        toUInt32(greatest(0, toUnixTimestamp64Milli(completed_at) - toUnixTimestamp64Milli(created_at))),
        status = 'ok') AS e2e_ms,
    quantilesStateIf(0.5, 0.95, 0.99)(provider_ms, status = 'ok') AS provider_ms
FROM usage
GROUP BY day, tenant, team, served_model, provider, deployment, route_rule, status,
         error_code, cache;

INSERT INTO usage_minute
SELECT * FROM (SELECT
    toStartOfMinute(created_at) AS minute,
    tenant, team, served_model, provider, deployment, route_rule, status, error_code, cache,
    toUInt64(count()) AS requests,
    toUInt64(countIf(batch_id != '')) AS batched_requests,
    toUInt64(sum(prompt_tokens)) AS prompt_tokens,
    toUInt64(sum(completion_tokens)) AS completion_tokens,
    toUInt64(sum(cached_tokens)) AS cached_tokens,
    toDecimal128(sum(cost_usd), 9) AS cost_usd,
    toDecimal128(sum(baseline_cost_usd), 9) AS baseline_cost_usd,
    quantilesStateIf(0.5, 0.95, 0.99)(
        toUInt32(greatest(0, toUnixTimestamp64Milli(completed_at) - toUnixTimestamp64Milli(created_at))),
        status = 'ok') AS e2e_ms,
    quantilesStateIf(0.5, 0.95, 0.99)(provider_ms, status = 'ok') AS provider_ms
FROM usage FINAL
WHERE created_at >= now() - INTERVAL 35 DAY
  AND (SELECT count() FROM usage_minute) = 0
GROUP BY minute, tenant, team, served_model, provider, deployment, route_rule, status,
         error_code, cache);

INSERT INTO usage_daily
SELECT * FROM (SELECT
    toDate(created_at) AS day,
    tenant, team, served_model, provider, deployment, route_rule, status, error_code, cache,
    toUInt64(count()) AS requests,
    toUInt64(countIf(batch_id != '')) AS batched_requests,
    toUInt64(sum(prompt_tokens)) AS prompt_tokens,
    toUInt64(sum(completion_tokens)) AS completion_tokens,
    toUInt64(sum(cached_tokens)) AS cached_tokens,
    toDecimal128(sum(cost_usd), 9) AS cost_usd,
    toDecimal128(sum(baseline_cost_usd), 9) AS baseline_cost_usd,
    quantilesStateIf(0.5, 0.95, 0.99)(
        toUInt32(greatest(0, toUnixTimestamp64Milli(completed_at) - toUnixTimestamp64Milli(created_at))),
        status = 'ok') AS e2e_ms,
    quantilesStateIf(0.5, 0.95, 0.99)(provider_ms, status = 'ok') AS provider_ms
FROM usage FINAL
WHERE (SELECT count() FROM usage_daily) = 0
GROUP BY day, tenant, team, served_model, provider, deployment, route_rule, status,
         error_code, cache);
