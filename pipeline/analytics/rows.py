"""What the ledger stores, row by row: usage, alerts and dead letters converted exactly into
their ClickHouse columns (a value a column cannot hold is refused when added, naming it),
and per table a ``Sink``: its columns, its row conversion, what makes two events the same
row, and which rows the table already holds. Batching and inserting: writer.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

from pipeline.analytics.clickhouse import ClickHouse
from pipeline.catalog import nanos_to_usd
from pipeline.events.ids import request_key
from pipeline.events.models import Alert, DeadLetter, Usage

E = TypeVar("E", Usage, Alert, DeadLetter)


USAGE_TABLE = "usage"
DEAD_LETTERS_TABLE = "dead_letters"
ALERTS_TABLE = "alerts"

USAGE_COLUMNS: tuple[str, ...] = (
    "request_id", "tenant", "team", "end_user",
    "created_at", "routed_at", "first_token_at", "completed_at",
    "status", "error_code",
    "requested_model", "routed_model", "served_model",
    "provider", "deployment", "region", "route_rule", "task_class",
    "attempts", "fallbacks", "batch_id", "batch_size", "cache", "cache_kind", "cache_saved_usd",
    "cache_cost_usd", "context_tokens_before", "context_tokens_after", "context_saved_usd",
    "for_request_id",
    "prompt_tokens", "completion_tokens", "cached_tokens",
    "cost_usd", "baseline_cost_usd", "price_version",
    "queue_ms", "pipeline_ms", "provider_ms", "canary", "claimed_created_at_ms",
)

DEAD_LETTER_COLUMNS: tuple[str, ...] = (
    "source_topic", "source_partition", "source_offset", "key", "value",
    "reason_code", "reason", "agent", "request_id", "tenant", "at",
)

ALERT_COLUMNS: tuple[str, ...] = (
    "alert_id", "rule", "state", "severity", "tenant", "subject",
    "value", "threshold", "window", "message", "at", "labels",
)

_UINT16_MAX = 2**16 - 1
_UINT32_MAX = 2**32 - 1
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
# Decimal(18, 9): 18 significant digits, so |nanos| < 10**18 (under a billion USD per row).
_DECIMAL_18_9_NANOS = 10**18 - 1
# DateTime64(3) spans 1900-01-01 .. 2299-12-31; epoch ms outside that would wrap silently.
_MS_RANGE = (-2_208_988_800_000, 10_413_791_999_999)


def _check(name: str, value: int, low: int, high: int, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{owner}: {name}={value} is outside [{low}, {high}]")
    return value


def _ms(name: str, value: int, owner: str) -> int:
    # DateTime64(3) columns take raw ticks, and at precision 3 a tick is one ms: exact.
    return _check(name, value, *_MS_RANGE, owner)


# The billing time (``created_at``, the partition key's source) is kept within this window
# around ``completed_at`` (our own clock), so no caller-supplied date can explode the
# partitions or fall outside DateTime64: intake refuses created_at_ms more than a day old,
# a Batch API job ends within 25 h, so 35 days is far beyond any real request.
MAX_BILLED_AGE_MS = 35 * 86_400_000
MAX_BILLED_AHEAD_MS = 86_400_000


def billed_created_at(created_ms: int, completed_ms: int) -> int:
    if completed_ms - MAX_BILLED_AGE_MS <= created_ms <= completed_ms + MAX_BILLED_AHEAD_MS:
        return created_ms
    return completed_ms


def _duration_ms(value: int) -> int:
    # Latency splits come from different hosts' clocks; skew can make one negative.
    return min(max(int(value), 0), _UINT32_MAX)


def usage_row(u: Usage) -> list[Any]:
    """The ``usage`` row for ``u``, in :data:`USAGE_COLUMNS` order, converted exactly.

    Raises ValueError (naming the request id) for values the columns cannot hold, so a bad
    event is rejected when added, not when its batch is inserted.
    """
    owner = f"usage {u.request_id!r}"
    completed = _ms("completed_at_ms", u.completed_at_ms, owner)
    created = billed_created_at(u.created_at_ms, completed)
    return [
        u.request_id, u.tenant, u.team, u.end_user,
        created,
        _ms("routed_at_ms", u.routed_at_ms, owner),
        _ms("first_token_at_ms", u.first_token_at_ms, owner),
        completed,
        u.status, u.error_code,
        u.requested_model, u.routed_model, u.served_model,
        u.provider, u.deployment, u.region, u.route_rule, u.task_class,
        _check("attempts", u.attempts, 0, _UINT16_MAX, owner),
        _check("fallbacks", u.fallbacks, 0, _UINT16_MAX, owner),
        u.batch_id,
        _check("batch_size", u.batch_size, 0, _UINT32_MAX, owner),
        u.cache, u.cache_kind,
        nanos_to_usd(_check("cache_saved_nanos", u.cache_saved_nanos, 0, _DECIMAL_18_9_NANOS,
                            owner)),
        nanos_to_usd(_check("cache_cost_nanos", u.cache_cost_nanos, 0, _DECIMAL_18_9_NANOS,
                            owner)),
        _check("context_tokens_before", u.context_tokens_before, 0, _UINT32_MAX, owner),
        _check("context_tokens_after", u.context_tokens_after, 0, _UINT32_MAX, owner),
        nanos_to_usd(_check("context_saved_nanos", u.context_saved_nanos, 0,
                            _DECIMAL_18_9_NANOS, owner)),
        u.for_request_id,
        _check("prompt_tokens", u.prompt_tokens, 0, _UINT32_MAX, owner),
        _check("completion_tokens", u.completion_tokens, 0, _UINT32_MAX, owner),
        _check("cached_tokens", u.cached_tokens, 0, _UINT32_MAX, owner),
        nanos_to_usd(_check("cost_nanos", u.cost_nanos,
                            -_DECIMAL_18_9_NANOS, _DECIMAL_18_9_NANOS, owner)),
        nanos_to_usd(_check("baseline_cost_nanos", u.baseline_cost_nanos,
                            -_DECIMAL_18_9_NANOS, _DECIMAL_18_9_NANOS, owner)),
        u.price_version,
        _duration_ms(u.queue_ms), _duration_ms(u.pipeline_ms), _duration_ms(u.provider_ms),
        u.canary,
        0 if created == u.created_at_ms else _check("created_at_ms", u.created_at_ms, *_INT64, owner),
    ]


def dead_letter_row(d: DeadLetter) -> list[Any]:
    """The ``dead_letters`` row for ``d`` (raw key/value bytes kept as they are)."""
    owner = f"dead letter {d.source_topic}[{d.source_partition}]@{d.source_offset}"
    return [
        d.source_topic,
        _check("source_partition", d.source_partition, *_INT32, owner),
        _check("source_offset", d.source_offset, *_INT64, owner),
        None if d.key is None else bytes(d.key),
        None if d.value is None else bytes(d.value),
        d.reason_code, d.reason, d.agent, d.request_id, d.tenant,
        _ms("at_ms", d.at_ms, owner),
    ]


def alert_row(a: Alert) -> list[Any]:
    """The ``alerts`` row for ``a``."""
    owner = f"alert {a.alert_id!r}"
    return [
        a.alert_id, a.rule, a.state, a.severity, a.tenant, a.subject,
        a.value, a.threshold, a.window, a.message,
        _ms("at_ms", a.at_ms, owner), dict(a.labels),
    ]


def insert_settings(dedup_token: str | None) -> dict[str, Any]:
    """Insert settings for one idempotent batch.

    The token is honoured by a non-replicated table only with a deduplication window
    (the migrations set one). ``async_insert=0`` because ClickHouse 26 defaults
    ``async_insert`` to 1, and async inserts ignore the token unless
    ``async_insert_deduplicate`` is on; our batches are already big, so insert synchronously.
    """
    if dedup_token is None:
        return {}
    return {"insert_deduplication_token": dedup_token, "async_insert": 0}


def insert_rows(client: ClickHouse, table: str, columns: Sequence[str], rows: list[list[Any]],
            dedup_token: str | None) -> int:
    if not rows:
        return 0
    client.insert(table, rows, column_names=columns, settings=insert_settings(dedup_token))
    return len(rows)


def insert_usage(client: ClickHouse, usages: Sequence[Usage], dedup_token: str | None) -> int:
    """Insert ``usages`` in one INSERT (one token for the whole batch); returns rows sent."""
    return insert_rows(client, USAGE_TABLE, USAGE_COLUMNS, [usage_row(u) for u in usages], dedup_token)


def insert_dead_letters(client: ClickHouse, letters: Sequence[DeadLetter],
                        dedup_token: str | None) -> int:
    """Insert dead letters in one INSERT; returns rows sent."""
    return insert_rows(client, DEAD_LETTERS_TABLE, DEAD_LETTER_COLUMNS,
                   [dead_letter_row(d) for d in letters], dedup_token)


def insert_alerts(client: ClickHouse, alerts: Sequence[Alert], dedup_token: str | None) -> int:
    """Insert alerts in one INSERT; returns rows sent."""
    return insert_rows(client, ALERTS_TABLE, ALERT_COLUMNS, [alert_row(a) for a in alerts], dedup_token)


# --- What each sink stores ------------------------------------------------------------------

@dataclass(frozen=True)
class Sink(Generic[E]):
    """One event type into one table: its columns, its row conversion, and the identity of
    an event (what makes two events the same row) for batch tokens."""

    table: str
    columns: tuple[str, ...]
    row: Callable[[E], list[Any]]
    identity: Callable[[E], str]
    #: Drops rows the table already holds (see :func:`stored_rows_filter`), or None.
    unstored: Callable[[ClickHouse, list[list[Any]]], list[list[Any]]] | None = None


def stored_rows_filter(table: str, columns: tuple[str, ...], id_column: str
                       ) -> Callable[[ClickHouse, list[list[Any]]], list[list[Any]]]:
    """A :attr:`Sink.unstored` filter: leaves out rows whose (tenant, ``id_column``) the
    table already holds — the first row stored for an id wins. One lookup per batch, by
    tenant and id (the tables' sort key prefix)."""
    id_at, tenant_at = columns.index(id_column), columns.index("tenant")
    sql = (f"SELECT DISTINCT tenant, {id_column} FROM {table} "
           f"WHERE tenant IN {{tenants:Array(String)}} AND {id_column} IN {{ids:Array(String)}}")

    def unstored(client: ClickHouse, rows: list[list[Any]]) -> list[list[Any]]:
        if not rows:
            return rows
        stored = {tuple(found) for found in client.query(sql, parameters={
            "tenants": sorted({r[tenant_at] for r in rows}),
            "ids": sorted({r[id_at] for r in rows})}).result_rows}
        return [r for r in rows if (r[tenant_at], r[id_at]) not in stored]

    return unstored


# A request is billed by its FIRST Usage: the one whose Response its caller got (the SDK
# keeps the first), and the one budget settlement keeps. A re-delivered Usage, or the second
# Usage of a provider call re-done after a crash, is left out when ``usage`` already holds
# the request: never inserted, so the rollups' materialised views (which count every
# inserted row) count each request once.
USAGE_SINK: Sink[Usage] = Sink(
    USAGE_TABLE, USAGE_COLUMNS, usage_row, lambda u: request_key(u.tenant, u.request_id),
    stored_rows_filter(USAGE_TABLE, USAGE_COLUMNS, "request_id"))
DEAD_LETTERS_SINK: Sink[DeadLetter] = Sink(
    DEAD_LETTERS_TABLE, DEAD_LETTER_COLUMNS, dead_letter_row,
    lambda d: f"{d.source_topic}/{d.source_partition}/{d.source_offset}/{d.agent}/{d.at_ms}")
# An alert id names one firing or one resolution of one episode; the monitor may publish a
# resolution again after a restart with a later ``at`` (in the table's sort key): store once.
ALERTS_SINK: Sink[Alert] = Sink(ALERTS_TABLE, ALERT_COLUMNS, alert_row, lambda a: a.alert_id,
                                stored_rows_filter(ALERTS_TABLE, ALERT_COLUMNS, "alert_id"))
