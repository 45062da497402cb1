-- The response cache (issue 14) in `usage`: which cache answered a hit, and what the call
-- would have cost (the cached answer's tokens at today's price of its model), so reports
-- can show money saved by the cache apart from routing and batching. Rows stored before
-- this migration read the defaults ('' and 0): they were never cache hits.
--
-- Every statement is re-runnable (IF NOT EXISTS).

ALTER TABLE usage ADD COLUMN IF NOT EXISTS cache_kind LowCardinality(String) DEFAULT '' AFTER cache;
ALTER TABLE usage ADD COLUMN IF NOT EXISTS cache_saved_usd Decimal(18, 9) DEFAULT 0 AFTER cache_kind;
