"""Micro-batching (DOMAIN §5): per-(deployment, priority) windows between routing and
dispatch. ``window`` is the pure logic (injected clock), ``config`` its limits."""
