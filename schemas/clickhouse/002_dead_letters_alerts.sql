-- Dead letters and alerts, mirrors of schemas/avro/dead_letter.avsc and alert.avsc.
-- Both are keyed so a re-delivered event collapses (ReplacingMergeTree, read with FINAL),
-- and both keep a deduplication window so a retried insert with the same token is dropped.

-- Raw inputs an agent could not accept, kept byte for byte (key/value as String) for 90 days.
-- One row per (agent, source position): the same message dead-lettered again replaces it.
CREATE TABLE IF NOT EXISTS dead_letters
(
    source_topic        LowCardinality(String),
    source_partition    Int32,
    source_offset       Int64,
    key                 Nullable(String),
    value               Nullable(String),
    reason_code         LowCardinality(String),
    reason              String,
    agent               LowCardinality(String),
    request_id          Nullable(String),
    tenant              LowCardinality(Nullable(String)),
    at                  DateTime64(3, 'UTC'),
    inserted_at         DateTime64(3) DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(at)
ORDER BY (source_topic, source_partition, source_offset, agent)
TTL toDateTime(at) + INTERVAL 90 DAY DELETE
SETTINGS non_replicated_deduplication_window = 1000;

-- Alert transitions (firing / resolved); value and threshold stay exact decimal text.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id            String,
    rule                LowCardinality(String),
    state               LowCardinality(String),
    severity            LowCardinality(String),
    tenant              LowCardinality(String),
    subject             String,
    value               String,
    threshold           String,
    `window`            LowCardinality(String),
    message             String,
    at                  DateTime64(3, 'UTC'),
    labels              Map(LowCardinality(String), String),
    inserted_at         DateTime64(3) DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(at)
ORDER BY (tenant, rule, at, alert_id)
SETTINGS non_replicated_deduplication_window = 1000;
