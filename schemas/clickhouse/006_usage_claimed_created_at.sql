-- The billing time stays in the present, whatever a caller wrote.
--
-- `created_at` (the partition key's source) comes from the request's created_at_ms. Intake
-- refuses one far from its own clock, but a usage event can still carry an absurd value (an
-- older producer, a replayed topic): one block spanning 100+ months is refused whole by
-- ClickHouse ("too many partitions"), and a date outside DateTime64 cannot be stored at all.
-- The ledger therefore stores `created_at` within 35 days before and 1 day after
-- `completed_at` (our own clock), and when it had to move it, keeps what the event said here
-- (epoch ms; 0 when `created_at` is as claimed).
ALTER TABLE usage ADD COLUMN IF NOT EXISTS claimed_created_at_ms Int64 DEFAULT 0 AFTER canary;
