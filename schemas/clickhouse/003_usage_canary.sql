-- Usage v2 (schemas/avro/usage.avsc): the canary arm a request landed in, so analysts can
-- compare '<rule>:canary' with '<rule>:control' (empty when the tenant has no canary).
ALTER TABLE usage ADD COLUMN IF NOT EXISTS canary LowCardinality(String) DEFAULT '' AFTER provider_ms;
