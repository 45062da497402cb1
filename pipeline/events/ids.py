"""A request id is unique only within its tenant (two callers may pick the same UUID, by
accident or on purpose): every key, waiter and table entry that holds a request id holds
the tenant with it, so a tenant can never receive, block or overwrite another's request."""

from __future__ import annotations

SEP = "\x1f"     # never inside a tenant id (intake refuses it there)


def request_key(tenant: str, request_id: str) -> str:
    return f"{tenant}{SEP}{request_id}"
