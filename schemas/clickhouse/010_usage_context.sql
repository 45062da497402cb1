-- Context management (issue 15) in `usage`: the estimated prompt tokens of a request as
-- received and as sent (both 0 when it was not compressed), what the removed tokens would
-- have cost at the served model's input price, and, on a context summary's own row, the
-- request it served (`request_id` is then `<that id>:summary`). Rows stored before this
-- migration read the defaults: nothing was compressed then.
--
-- Every statement is re-runnable (IF NOT EXISTS).

ALTER TABLE usage ADD COLUMN IF NOT EXISTS context_tokens_before UInt32 DEFAULT 0 AFTER cache_cost_usd;
ALTER TABLE usage ADD COLUMN IF NOT EXISTS context_tokens_after UInt32 DEFAULT 0 AFTER context_tokens_before;
ALTER TABLE usage ADD COLUMN IF NOT EXISTS context_saved_usd Decimal(18, 9) DEFAULT 0 AFTER context_tokens_after;
ALTER TABLE usage ADD COLUMN IF NOT EXISTS for_request_id String DEFAULT '' AFTER context_saved_usd;
