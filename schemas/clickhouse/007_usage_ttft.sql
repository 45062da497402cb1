-- Time to first token (TTFT) of streamed requests, in `usage` and in both rollups.
--
-- usage.ttft_ms = first_token_at - created_at in ms, NULL when it is not known:
--  * first_token_at is 1970-01-01 (a non-streamed call, or no delta ever arrived);
--  * created_at was moved by the ledger (claimed_created_at_ms != 0, see 006): it is then
--    not the time the request was made;
--  * first_token_at is before created_at (the caller's clock ahead of ours) or after
--    completed_at: a skewed or broken timestamp. NULL rather than a clamped 0, which would
--    drag the percentiles down with a made-up value. This bound also keeps the value within
--    UInt32 (created_at is within 35 days of completed_at, 006).
-- MATERIALIZED, not DEFAULT: the value is always derived from the stored times; an INSERT
-- cannot set it (a DEFAULT column takes whatever an insert names), and it stays out of
-- `SELECT *`, so nothing that copies usage positionally sees a new column. Rows already in
-- usage get it computed on read until their parts merge (no mutation is started here).
--
-- Rollups (005): `streamed_requests` (sum) and a `ttft_ms` quantile state over the rows with
-- a known TTFT, whatever their status (status is a rollup dimension; the latency report
-- reads status = 'ok'). The views are changed in place with MODIFY QUERY: unlike DROP and
-- CREATE there is no moment in which an insert misses the rollups (not experimental since
-- ClickHouse 23.12; deploy/ runs 25.8). The columns are added first, so the new query
-- always has somewhere to write. Rows inserted before this migration are NOT backfilled
-- into the new rollup columns (their other measures are counted there already, so an
-- INSERT would double them): streaming landed just before this schema, and a day with
-- older streamed rows is rebuilt as docs/analytics.md shows ("rebuild_daily").
-- 005's backfill is a positional INSERT of the 005 columns: it only ever re-runs before
-- this file (a half-failed 005 stops `llmpipe migrate` there), never after it.
--
-- Every statement is re-runnable (IF NOT EXISTS; MODIFY QUERY to the same query).

ALTER TABLE usage ADD COLUMN IF NOT EXISTS ttft_ms Nullable(UInt32) MATERIALIZED
    if(toUnixTimestamp64Milli(first_token_at) > 0 AND claimed_created_at_ms = 0
           AND first_token_at >= created_at AND first_token_at <= completed_at,
       toUInt32(toUnixTimestamp64Milli(first_token_at) - toUnixTimestamp64Milli(created_at)),
       NULL)
    AFTER claimed_created_at_ms;

ALTER TABLE usage_minute
    ADD COLUMN IF NOT EXISTS streamed_requests SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS ttft_ms AggregateFunction(quantiles(0.5, 0.95, 0.99), UInt32);

ALTER TABLE usage_daily
    ADD COLUMN IF NOT EXISTS streamed_requests SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS ttft_ms AggregateFunction(quantiles(0.5, 0.95, 0.99), UInt32);

ALTER TABLE usage_minute_mv MODIFY QUERY
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
    quantilesStateIf(0.5, 0.95, 0.99)(provider_ms, status = 'ok') AS provider_ms,
    toUInt64(countIf(usage.ttft_ms IS NOT NULL)) AS streamed_requests,
    quantilesStateIf(0.5, 0.95, 0.99)(assumeNotNull(usage.ttft_ms), usage.ttft_ms IS NOT NULL)
        AS ttft_ms
FROM usage
GROUP BY minute, tenant, team, served_model, provider, deployment, route_rule, status,
         error_code, cache;

ALTER TABLE usage_daily_mv MODIFY QUERY
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
    quantilesStateIf(0.5, 0.95, 0.99)(provider_ms, status = 'ok') AS provider_ms,
    toUInt64(countIf(usage.ttft_ms IS NOT NULL)) AS streamed_requests,
    quantilesStateIf(0.5, 0.95, 0.99)(assumeNotNull(usage.ttft_ms), usage.ttft_ms IS NOT NULL)
        AS ttft_ms
FROM usage
GROUP BY day, tenant, team, served_model, provider, deployment, route_rule, status,
         error_code, cache;
