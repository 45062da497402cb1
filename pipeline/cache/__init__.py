"""The response cache: answers kept per tenant on the tenant's partition, served in intake
before budget reservation and routing (exact.py: keys, policy and the store)."""
