-- The semantic cache with a provider's embedding model (config/cache.yaml `embedder:
-- provider:MODEL`) pays for one embedding of a request's last turn: `cache_cost_usd` is that
-- lookup cost, already included in `cost_usd` (a hit's whole cost; part of a miss's). Rows
-- stored before this migration, and every row with the offline embedder, read 0.
--
-- Every statement is re-runnable (IF NOT EXISTS).

ALTER TABLE usage ADD COLUMN IF NOT EXISTS cache_cost_usd Decimal(18, 9) DEFAULT 0 AFTER cache_saved_usd;
