"""Alert sinks: where Alert events on llm.alerts go besides ClickHouse (the ledger agent)."""
