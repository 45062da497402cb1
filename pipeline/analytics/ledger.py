"""Usage, alerts and dead letters into ClickHouse: exact row conversion and idempotent batches.

The ledger agents feed a :class:`LedgerWriter` one event per Kafka message (usage, alerts
and dead letters each have their own, see :class:`Sink`) and commit a partition's offset
only after :meth:`LedgerWriter.flush` reports the insert done; while inserts fail they wait
as :class:`InsertRetry` says. Billing stays once-per-request however often Kafka
re-delivers: a retried batch carries the same ``insert_deduplication_token`` (dropped by
ClickHouse), and whatever slips past that (a re-delivery after a crash, cut into different
batches) collapses under ``usage FINAL``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

from pipeline.analytics.clickhouse import ClickHouse, ClickHouseError
from pipeline.catalog import nanos_to_usd
from pipeline.events.ids import request_key
from pipeline.events.models import Alert, DeadLetter, Usage
from pipeline.resilience.backoff import Backoff

E = TypeVar("E", Usage, Alert, DeadLetter)

logger = logging.getLogger(__name__)

USAGE_TABLE = "usage"
DEAD_LETTERS_TABLE = "dead_letters"
ALERTS_TABLE = "alerts"

USAGE_COLUMNS: tuple[str, ...] = (
    "request_id", "tenant", "team", "end_user",
    "created_at", "routed_at", "first_token_at", "completed_at",
    "status", "error_code",
    "requested_model", "routed_model", "served_model",
    "provider", "deployment", "region", "route_rule", "task_class",
    "attempts", "fallbacks", "batch_id", "batch_size", "cache",
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
        u.cache,
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


def _insert(client: ClickHouse, table: str, columns: Sequence[str], rows: list[list[Any]],
            dedup_token: str | None) -> int:
    if not rows:
        return 0
    client.insert(table, rows, column_names=columns, settings=insert_settings(dedup_token))
    return len(rows)


def insert_usage(client: ClickHouse, usages: Sequence[Usage], dedup_token: str | None) -> int:
    """Insert ``usages`` in one INSERT (one token for the whole batch); returns rows sent."""
    return _insert(client, USAGE_TABLE, USAGE_COLUMNS, [usage_row(u) for u in usages], dedup_token)


def insert_dead_letters(client: ClickHouse, letters: Sequence[DeadLetter],
                        dedup_token: str | None) -> int:
    """Insert dead letters in one INSERT; returns rows sent."""
    return _insert(client, DEAD_LETTERS_TABLE, DEAD_LETTER_COLUMNS,
                   [dead_letter_row(d) for d in letters], dedup_token)


def insert_alerts(client: ClickHouse, alerts: Sequence[Alert], dedup_token: str | None) -> int:
    """Insert alerts in one INSERT; returns rows sent."""
    return _insert(client, ALERTS_TABLE, ALERT_COLUMNS, [alert_row(a) for a in alerts], dedup_token)


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


# --- Batched writer -------------------------------------------------------------------------

class LedgerBufferFull(Exception):
    """``add`` refused: ``max_buffer`` rows are pending. Flush (with backoff) and add again."""


class LedgerFlushError(Exception):
    """Some partitions' batches failed to insert; their rows are kept for the next flush.

    ``committed`` lists the (partition, last offset) pairs that did succeed in this flush
    (commit those), ``failed`` the partitions to retry, ``cause`` the first error.
    """

    def __init__(self, committed: list[tuple[int, int]], failed: list[int], cause: Exception):
        super().__init__(f"ledger insert failed for partitions {failed}: {cause}")
        self.committed = committed
        self.failed = failed
        self.cause = cause


# ClickHouse error codes that blame the data of an INSERT, not the server: a block holding
# such a row can never land as it is, however often it is retried (ErrorCodes.cpp).
DATA_ERROR_CODES = frozenset({
    6,    # CANNOT_PARSE_TEXT
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    43,   # ILLEGAL_TYPE_OF_ARGUMENT
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    190,  # SIZES_OF_ARRAYS_DONT_MATCH
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    407,  # DECIMAL_OVERFLOW
    469,  # VIOLATED_CONSTRAINT
})
_TOO_MANY_PARTITIONS = "partitions for single INSERT block"   # code 252, also "too many parts"


def refused_rows(exc: BaseException) -> bool:
    """True when ClickHouse (or the driver) refused the rows themselves: splitting the
    batch finds the rows to blame. Everything else (server away, timeouts, too many parts,
    a missing table) is transient: retried as it is, never blamed on a row."""
    if isinstance(exc, ClickHouseError):
        return (exc.data_error or exc.code in DATA_ERROR_CODES
                or exc.code == 252 and _TOO_MANY_PARTITIONS in str(exc))
    return isinstance(exc, (TypeError, ValueError, OverflowError, UnicodeError))


@dataclass(frozen=True)
class Refused:
    """A row the table refused, as its source event's position and why."""
    partition: int
    offset: int
    reason: str


@dataclass
class _Batch:
    """Rows of one partition sealed for insert; immutable once sealed so a retry resends it."""

    partition: int
    rows: list[list[Any]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    added_at: list[float] = field(default_factory=list)

    def halves(self) -> tuple["_Batch", "_Batch"]:
        """Two batches of the same rows (each gets its own token from its offsets)."""
        mid = len(self.rows) // 2
        return (_Batch(self.partition, self.rows[:mid], self.offsets[:mid],
                       self.identities[:mid], self.added_at[:mid]),
                _Batch(self.partition, self.rows[mid:], self.offsets[mid:],
                       self.identities[mid:], self.added_at[mid:]))

    def first_rows(self) -> list[list[Any]]:
        """The rows to insert: one per identity, the first read (lowest offset).

        A request billed again after a crash (a re-done provider call) keeps its FIRST
        Usage, as budget settlement does (see USAGE_SINK). Inside one INSERT both rows would
        get the same ``inserted_at`` and the block is sorted by key without keeping arrival
        order, so either could survive: only one goes in. Deterministic: a retry drops the
        same rows.
        """
        if len(set(self.identities)) == len(self.identities):
            return self.rows
        first: dict[str, int] = {}
        for i, identity in enumerate(self.identities):
            first.setdefault(identity, i)
        return [row for i, row in enumerate(self.rows) if first[self.identities[i]] == i]

    def token(self, prefix: str, epoch: str) -> str:
        # Offsets make the boundaries; the digest of the events' identities makes the token
        # unique even when offsets restart (a recreated topic, a fresh dev broker) against a
        # ClickHouse that still remembers the old tokens -- otherwise new rows would be
        # dropped as "duplicates". A retry has the same events, so the same token.
        # ``epoch`` is the writer's own: a token is only ever reused by the writer that made
        # it. After a crash the stored-rows filter keeps what is already in the table out;
        # a token of the dead process could only do harm (its deduplication log entry can
        # outlive a part the kill lost, and would drop the same rows sent again).
        digest = hashlib.sha256("\n".join([epoch, *self.identities]).encode()).hexdigest()[:16]
        return f"{prefix}:{self.partition}:{min(self.offsets)}-{max(self.offsets)}:{digest}"


class LedgerWriter(Generic[E]):
    """Buffers rows per source partition and inserts them in idempotent batches.

    Typical agent loop::

        while writer.full:                      # bounded memory: wait for room
            await flush_with_backoff()
        writer.add(usage, partition, offset)    # ValueError: dead-letter the event
        if writer.due():
            for partition, offset in await writer.flush():
                commit(partition, offset + 1)   # Kafka commits the *next* offset

    ``flush`` returns, per partition written, the LAST offset included. On failure it raises
    :class:`LedgerFlushError` and keeps the failed batches exactly as they were: the next
    flush resends the same rows with the same token (rows added meanwhile go in a later
    batch), so ClickHouse drops the retry if the first attempt had in fact landed.

    ``sink`` picks the table (usage by default; :data:`ALERTS_SINK`, :data:`DEAD_LETTERS_SINK`).
    """

    def __init__(self, client: ClickHouse, *, max_rows: int = 1000, max_age_s: float = 1.0,
                 max_buffer: int = 10_000, clock: Callable[[], float] = time.monotonic,
                 token_prefix: str = "usage:llm.usage", sink: Sink[E] = USAGE_SINK):  # type: ignore[assignment]
        if max_rows < 1 or max_buffer < max_rows:
            raise ValueError("need 1 <= max_rows <= max_buffer")
        self._client = client
        self.sink = sink
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.max_buffer = max_buffer
        self._clock = clock
        self._token_prefix = token_prefix
        self._open: dict[int, _Batch] = {}
        self._sealed: dict[int, deque[_Batch]] = {}
        self._pending = 0
        self._flush_lock = asyncio.Lock()
        #: Rows inserted so far (a retried batch counts once: the one that succeeded).
        self.inserted = 0
        #: Successful INSERT statements so far (rows per insert = inserted / inserts).
        self.inserts = 0
        self._refused: list[Refused] = []
        self._epoch = secrets.token_hex(8)

    def _insert_batch(self, batch: _Batch, token: str) -> int:
        # In a worker thread. A retry filters again: rows its first attempt did store are
        # then left out, and the same token drops whatever is left if that attempt landed.
        rows = batch.first_rows()
        if self.sink.unstored is not None:
            rows = self.sink.unstored(self._client, rows)
        return _insert(self._client, self.sink.table, self.sink.columns, rows, token)

    @property
    def pending(self) -> int:
        """Rows waiting to be inserted (open and sealed)."""
        return self._pending

    def take_refused(self) -> list[Refused]:
        """Rows the table refused since the last call (their offsets count as committed:
        dead-letter them before acknowledging)."""
        refused, self._refused = self._refused, []
        return refused

    @property
    def full(self) -> bool:
        return self._pending >= self.max_buffer

    def add(self, event: E, partition: int, offset: int) -> None:
        """Buffer ``event`` read from (partition, offset).

        Raises :class:`LedgerBufferFull` when ``max_buffer`` rows are pending, and
        ValueError when the event cannot be stored (the caller dead-letters or skips it).
        """
        if self.full:
            raise LedgerBufferFull(f"{self._pending} {self.sink.table} rows pending (max_buffer="
                                   f"{self.max_buffer}); flush before adding more")
        row = self.sink.row(event)
        batch = self._open.get(partition)
        if batch is None:
            batch = self._open[partition] = _Batch(partition)
        batch.rows.append(row)
        batch.offsets.append(offset)
        batch.identities.append(self.sink.identity(event))
        batch.added_at.append(self._clock())
        self._pending += 1

    def oldest_added_at(self) -> float | None:
        """Clock time at which the oldest pending row was added, None if empty."""
        times = [b.added_at[0] for b in self._open.values() if b.added_at]
        times += [q[0].added_at[0] for q in self._sealed.values() if q]
        return min(times) if times else None

    def _ripe(self, batch: _Batch, now: float) -> bool:
        return bool(batch.rows) and (len(batch.rows) >= self.max_rows
                                     or now - batch.added_at[0] >= self.max_age_s)

    def _crowded(self) -> bool:
        # Many partitions each short of max_rows could fill the buffer with nothing ripe.
        return self._pending >= max(self.max_rows, self.max_buffer // 2)

    def due(self, now: float | None = None) -> bool:
        """True when some partition has ``max_rows`` rows or a row ``max_age_s`` old, when
        a failed batch waits for its retry, or when half the buffer is in use."""
        if self._pending == 0:
            return False
        if self._crowded() or any(self._sealed.values()):
            return True
        now = self._clock() if now is None else now
        return any(self._ripe(batch, now) for batch in self._open.values())

    def _seal(self, ripe_only: bool) -> None:
        now = self._clock()
        everything = not ripe_only or self._crowded()
        for partition, batch in list(self._open.items()):
            if not batch.rows or not (everything or self._ripe(batch, now)):
                continue
            queue = self._sealed.setdefault(partition, deque())
            for start in range(0, len(batch.rows), self.max_rows):
                end = start + self.max_rows
                queue.append(_Batch(partition, batch.rows[start:end], batch.offsets[start:end],
                                    batch.identities[start:end], batch.added_at[start:end]))
            del self._open[partition]

    async def flush(self, *, ripe_only: bool = False) -> list[tuple[int, int]]:
        """Insert pending batches (in a worker thread); returns (partition, last offset).

        By default every pending row goes; with ``ripe_only`` a partition's rows are sealed
        only once :meth:`due` would say so for that partition (``max_rows`` rows or the
        oldest ``max_age_s`` old), so each INSERT carries a full batch even when traffic
        is spread over many partitions (the agent flushes this way; batches already sealed
        and waiting for a retry always go). Partitions are independent: one failing does
        not hold back the others. If any failed, raises :class:`LedgerFlushError` after
        trying all of them.
        """
        async with self._flush_lock:
            self._seal(ripe_only)
            committed: list[tuple[int, int]] = []
            failed: list[int] = []
            first_error: Exception | None = None
            for partition in sorted(self._sealed):
                queue = self._sealed[partition]
                last: int | None = None
                while queue:
                    batch = queue[0]
                    token = batch.token(self._token_prefix, self._epoch)
                    try:
                        await asyncio.to_thread(self._insert_batch, batch, token)
                    except Exception as exc:
                        if refused_rows(exc):
                            # The rows are to blame: split until the rows that cannot be
                            # stored stand alone, store the rest (each part its own token).
                            queue.popleft()
                            if len(batch.rows) > 1:
                                queue.extendleft(reversed(batch.halves()))
                                continue
                            self._refused.append(Refused(partition, batch.offsets[0],
                                                         f"{self.sink.table} refused the row: {exc}"))
                            logger.warning("ledger.row_refused table=%s partition=%d offset=%d "
                                           "error=%s", self.sink.table, partition,
                                           batch.offsets[0], exc)
                            self._pending -= 1
                            last = batch.offsets[0] if last is None else max(last, batch.offsets[0])
                            continue
                        # Any other failure (server down, a driver bug) keeps the batch for
                        # the next flush: the caller backs off; a crash would only re-read it.
                        logger.debug("ledger.insert_failed table=%s partition=%d rows=%d "
                                     "token=%s error=%s", self.sink.table, partition,
                                     len(batch.rows), token, exc)
                        failed.append(partition)
                        first_error = first_error or exc
                        break
                    queue.popleft()
                    self._pending -= len(batch.rows)
                    self.inserted += len(batch.rows)
                    self.inserts += 1
                    last = max(batch.offsets) if last is None else max(last, *batch.offsets)
                    logger.debug("ledger.inserted table=%s partition=%d rows=%d token=%s",
                                 self.sink.table, partition, len(batch.rows), token)
                if last is not None:
                    committed.append((partition, last))
            self._sealed = {p: q for p, q in self._sealed.items() if q}
            if first_error is not None:
                raise LedgerFlushError(committed, failed, first_error)
            return committed


# --- Retrying while ClickHouse is down ------------------------------------------------------

class InsertRetry:
    """When to try the next flush after failures: exponential backoff with jitter and a cap
    (``base_s * 2^(failures-1)``, at most ``cap_s``), reset by a success.

    Plain state with an injected clock and random source; the agent asks :meth:`ready`
    before flushing and reports the outcome with :meth:`failed` / :meth:`succeeded`.
    """

    def __init__(self, backoff: Backoff = Backoff(base_s=0.5, cap_s=30.0, jitter=0.2), *,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.backoff = backoff
        self._clock = clock
        self._rng = rng or random.Random()
        #: Consecutive failed flushes (0: healthy).
        self.failures = 0
        #: Failed flushes since start.
        self.total_failures = 0
        self.retry_at = 0.0
        self.outage_started: float | None = None

    def ready(self, now: float | None = None) -> bool:
        return (self._clock() if now is None else now) >= self.retry_at

    def outage_s(self, now: float | None = None) -> float:
        """How long inserts have been failing (0 when healthy)."""
        if self.outage_started is None:
            return 0.0
        return (self._clock() if now is None else now) - self.outage_started

    def wait_s(self, now: float | None = None) -> float:
        """Seconds until the next attempt is allowed (0 if it is now)."""
        return max(0.0, self.retry_at - (self._clock() if now is None else now))

    def failed(self) -> float:
        """Record a failed flush; returns the delay before the next attempt."""
        now = self._clock()
        if self.failures == 0:
            self.outage_started = now
        delay = self.backoff.delay(self.failures, self._rng)
        self.failures += 1
        self.total_failures += 1
        self.retry_at = now + delay
        return delay

    def succeeded(self) -> float | None:
        """Record a successful flush; returns how long the outage lasted if one just ended."""
        ended = None
        if self.failures and self.outage_started is not None:
            ended = self._clock() - self.outage_started
        self.failures = 0
        self.retry_at = 0.0
        self.outage_started = None
        return ended
