"""Tenants: policies on the compacted llm.tenants topic, budgets, canaries and the
per-tenant state intake keeps on the tenant's partition."""
