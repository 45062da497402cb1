"""Usage, alerts and dead letters into ClickHouse in idempotent batches.

The ledger agents feed a :class:`LedgerWriter` one event per Kafka message (each table its
own, see pipeline/analytics/rows.py) and commit a partition's offset only after
:meth:`LedgerWriter.flush` reports the insert done; while inserts fail they wait as
:class:`InsertRetry` says. Billing stays once-per-request however often Kafka re-delivers:
a retried batch carries the same ``insert_deduplication_token`` (dropped by ClickHouse),
and a row of a request the table already holds is left out before the insert. A batch
ClickHouse refuses for its data is split until the refused rows stand alone.
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
from typing import Any, Callable, Generic

from pipeline.analytics.clickhouse import ClickHouse, ClickHouseError
from pipeline.analytics.rows import E, USAGE_SINK, Sink, insert_rows
from pipeline.resilience.retry import RetryPolicy

logger = logging.getLogger(__name__)


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


@dataclass
class _Group:
    """Sealed batches of several partitions that go in ONE INSERT: an INSERT costs about
    the same CPU for 20 rows or 1,000 (chDB here: ~35-50 ms each, rollup views included),
    so a flush sends one INSERT for every partition, not one per partition. The group is
    kept as it is until it lands, so a retry resends the same rows with the same token."""

    batches: list[_Batch]

    @property
    def partitions(self) -> list[int]:
        return [b.partition for b in self.batches]

    def first_rows(self) -> list[list[Any]]:
        """The rows to insert: one per identity, the first read (lowest offset, then lowest
        partition).

        A request billed again after a crash (a re-done provider call) keeps its FIRST
        Usage, as budget settlement does (see USAGE_SINK). Inside one INSERT both rows would
        get the same ``inserted_at`` and the block is sorted by key without keeping arrival
        order, so either could survive: only one goes in. Deterministic: a retry drops the
        same rows.
        """
        seen: set[str] = set()
        rows: list[list[Any]] = []
        for batch in self.batches:
            for row, identity in zip(batch.rows, batch.identities):
                if identity not in seen:
                    seen.add(identity)
                    rows.append(row)
        return rows

    def token(self, prefix: str, epoch: str) -> str:
        # Offsets make the boundaries; the digest of the events' identities makes the token
        # unique even when offsets restart (a recreated topic, a fresh dev broker) against a
        # ClickHouse that still remembers the old tokens -- otherwise new rows would be
        # dropped as "duplicates". A retry has the same events, so the same token.
        # ``epoch`` is the writer's own: a token is only ever reused by the writer that made
        # it. After a crash the stored-rows filter keeps what is already in the table out;
        # a token of the dead process could only do harm (its deduplication log entry can
        # outlive a part the kill lost, and would drop the same rows sent again).
        identities = [i for b in self.batches for i in b.identities]
        digest = hashlib.sha256("\n".join([epoch, *identities]).encode()).hexdigest()[:16]
        spans = ",".join(f"{b.partition}:{min(b.offsets)}-{max(b.offsets)}" for b in self.batches)
        return f"{prefix}:{spans}:{digest}"


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
        self._retry: _Group | None = None     # an INSERT that failed, resent as it was
        self._pending = 0
        self._flush_lock = asyncio.Lock()
        #: Rows inserted so far (a retried batch counts once: the one that succeeded).
        self.inserted = 0
        #: Successful INSERT statements so far (rows per insert = inserted / inserts).
        self.inserts = 0
        self._refused: list[Refused] = []
        self._epoch = secrets.token_hex(8)

    def _insert_group(self, group: _Group, token: str) -> int:
        # In a worker thread. A retry filters again: rows its first attempt did store are
        # then left out, and the same token drops whatever is left if that attempt landed.
        rows = group.first_rows()
        if self.sink.unstored is not None:
            rows = self.sink.unstored(self._client, rows)
        return insert_rows(self._client, self.sink.table, self.sink.columns, rows, token)

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

    def _ripe(self, now: float) -> bool:
        """The open rows, all partitions together, reach ``max_rows``, or the oldest of them
        is ``max_age_s`` old."""
        open_rows = [b for b in self._open.values() if b.rows]
        return bool(open_rows) and (sum(len(b.rows) for b in open_rows) >= self.max_rows
                                    or now - min(b.added_at[0] for b in open_rows) >= self.max_age_s)

    def _crowded(self) -> bool:
        # Many partitions each short of max_rows could fill the buffer with nothing ripe.
        return self._pending >= max(self.max_rows, self.max_buffer // 2)

    def due(self, now: float | None = None) -> bool:
        """True when the open rows reach ``max_rows`` or the oldest is ``max_age_s`` old,
        when a failed batch waits for its retry, or when half the buffer is in use."""
        if self._pending == 0:
            return False
        if self._crowded() or any(self._sealed.values()):
            return True
        return self._ripe(self._clock() if now is None else now)

    def _seal(self, ripe_only: bool) -> None:
        if ripe_only and not (self._crowded() or self._ripe(self._clock())):
            return
        for partition, batch in list(self._open.items()):
            if not batch.rows:
                continue
            queue = self._sealed.setdefault(partition, deque())
            for start in range(0, len(batch.rows), self.max_rows):
                end = start + self.max_rows
                queue.append(_Batch(partition, batch.rows[start:end], batch.offsets[start:end],
                                    batch.identities[start:end], batch.added_at[start:end]))
            del self._open[partition]

    def _next_group(self) -> _Group | None:
        """The first sealed batch of each partition, in partition order, while the rows stay
        within ``max_rows`` (always at least one batch)."""
        batches: list[_Batch] = []
        rows = 0
        for partition in sorted(self._sealed):
            queue = self._sealed[partition]
            if not queue:
                continue
            if batches and rows + len(queue[0].rows) > self.max_rows:
                break
            batches.append(queue[0])
            rows += len(queue[0].rows)
        return _Group(batches) if batches else None

    async def flush(self, *, ripe_only: bool = False) -> list[tuple[int, int]]:
        """Insert pending rows (in a worker thread); returns (partition, last offset).

        By default every pending row goes; with ``ripe_only`` (the agent) nothing goes
        until :meth:`due` would say so, and then every partition's rows go together, so one
        INSERT carries them all: a flush makes one INSERT per ``max_rows`` rows, not one
        per partition. On failure it raises :class:`LedgerFlushError` and keeps the failed
        INSERT's rows exactly as they were: the next flush resends them first, the same
        rows with the same token, so ClickHouse drops the retry if the first attempt had
        in fact landed.
        """
        async with self._flush_lock:
            self._seal(ripe_only)
            done: dict[int, int] = {}
            error: Exception | None = None
            failed: list[int] = []
            while error is None:
                group, self._retry = self._retry or self._next_group(), None
                if group is None:
                    break
                error = await self._insert(group, done)
                if error is not None:
                    assert self._retry is not None
                    failed = self._retry.partitions
            self._sealed = {p: q for p, q in self._sealed.items() if q}
            committed = sorted(done.items())
            if error is not None:
                raise LedgerFlushError(committed, failed, error)
            return committed

    def _landed(self, batch: _Batch, done: dict[int, int], last: int) -> None:
        queue = self._sealed[batch.partition]
        assert queue[0] is batch, "a group's batches stay first in their queues until they land"
        queue.popleft()
        done[batch.partition] = max(done.get(batch.partition, last), last)

    async def _insert(self, group: _Group, done: dict[int, int]) -> Exception | None:
        """Insert ``group``; None when its rows are stored or set aside as refused, else the
        error (the group is then kept in ``_retry``, as it is, for the next flush)."""
        token = group.token(self._token_prefix, self._epoch)
        try:
            await asyncio.to_thread(self._insert_group, group, token)
        except Exception as exc:
            if not refused_rows(exc):
                # Any other failure (server down, a driver bug) keeps the group for the next
                # flush: the caller backs off; a crash would only re-read it.
                logger.debug("ledger.insert_failed table=%s partitions=%s rows=%d token=%s "
                             "error=%s", self.sink.table, group.partitions,
                             sum(len(b.rows) for b in group.batches), token, exc)
                self._retry = group
                return exc
            # The rows are to blame: each batch alone, then split in halves until the rows
            # that cannot be stored stand alone; store the rest (each part its own token).
            if len(group.batches) > 1:
                for batch in group.batches:
                    error = await self._insert(_Group([batch]), done)
                    if error is not None:
                        return error
                return None
            batch = group.batches[0]
            if len(batch.rows) > 1:
                queue = self._sealed[batch.partition]
                assert queue[0] is batch
                queue.popleft()
                queue.extendleft(reversed(batch.halves()))
                return None
            self._refused.append(Refused(batch.partition, batch.offsets[0],
                                         f"{self.sink.table} refused the row: {exc}"))
            logger.warning("ledger.row_refused table=%s partition=%d offset=%d error=%s",
                           self.sink.table, batch.partition, batch.offsets[0], exc)
            self._pending -= 1
            self._landed(batch, done, batch.offsets[0])
            return None
        for batch in group.batches:
            self._pending -= len(batch.rows)
            self.inserted += len(batch.rows)
            self._landed(batch, done, max(batch.offsets))
        self.inserts += 1
        logger.debug("ledger.inserted table=%s partitions=%s rows=%d token=%s", self.sink.table,
                     group.partitions, sum(len(b.rows) for b in group.batches), token)
        return None


# --- Retrying while ClickHouse is down ------------------------------------------------------

class InsertRetry:
    """When to try the next flush after failures: exponential backoff with jitter and a cap
    (``base_s * 2^(failures-1)``, at most ``cap_s``), reset by a success.

    Plain state with an injected clock and random source; the agent asks :meth:`ready`
    before flushing and reports the outcome with :meth:`failed` / :meth:`succeeded`.
    """

    def __init__(self, policy: RetryPolicy = RetryPolicy(base_s=0.5, cap_s=30.0, jitter=0.2), *,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.policy = policy
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
        delay = self.policy.delay(self.failures, self._rng)
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

