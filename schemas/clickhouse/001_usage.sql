-- The usage ledger: one row per terminal request (mirror of the Usage event, schemas/avro/usage.avsc).
--
-- Idempotent ingest, two layers:
--  * ReplacingMergeTree(inserted_at) keyed by (tenant, request_id): a request billed twice
--    (re-delivery after a crash) collapses to its latest row at merge time. Read with FINAL
--    (or argMax) so duplicates never count before the merge.
--  * non_replicated_deduplication_window: a retried INSERT carrying the same
--    insert_deduplication_token is dropped outright (0 = off on a non-replicated table).
--
-- Epoch-ms fields become DateTime64(3, 'UTC') named without _ms (0 = 1970-01-01 = unknown).
-- Money is Decimal(18, 9) USD, converted exactly from the integer nano-dollar fields.
-- request_id is a String, not UUID: a malformed id must not fail (and so stall) a batch.
CREATE TABLE IF NOT EXISTS usage
(
    request_id          String,
    tenant              LowCardinality(String),
    team                LowCardinality(String),
    end_user            String,
    created_at          DateTime64(3, 'UTC'),
    routed_at           DateTime64(3, 'UTC'),
    first_token_at      DateTime64(3, 'UTC'),
    completed_at        DateTime64(3, 'UTC'),
    status              LowCardinality(String),
    error_code          LowCardinality(String),
    requested_model     LowCardinality(String),
    routed_model        LowCardinality(String),
    served_model        LowCardinality(String),
    provider            LowCardinality(String),
    deployment          LowCardinality(String),
    region              LowCardinality(String),
    route_rule          LowCardinality(String),
    task_class          LowCardinality(String),
    attempts            UInt16,
    fallbacks           UInt16,
    batch_id            String,
    batch_size          UInt32,
    cache               LowCardinality(String),
    prompt_tokens       UInt32,
    completion_tokens   UInt32,
    cached_tokens       UInt32,
    cost_usd            Decimal(18, 9),
    baseline_cost_usd   Decimal(18, 9),
    price_version       LowCardinality(String),
    queue_ms            UInt32,
    pipeline_ms         UInt32,
    provider_ms         UInt32,
    inserted_at         DateTime64(3) DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(created_at)
ORDER BY (tenant, request_id)
SETTINGS non_replicated_deduplication_window = 1000;
