"""The response cache: answers kept per tenant on the tenant's partition, served in intake
before budget reservation and routing (store.py: keys, policy and the store; semantic.py:
the vector index; embedder.py: the offline embedder)."""
