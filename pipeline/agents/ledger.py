"""Ledger sinks: llm.usage -> ClickHouse `usage`, llm.alerts -> `alerts`, llm.dead-letter ->
`dead_letters`, each in batches whose boundaries come from offsets (same batch, same dedup
token on retry). An event is acked only after the insert holding it succeeded. While
ClickHouse is down a sink retries the same batches with capped exponential backoff, stops
reading once ``max_buffer`` rows are pending (backpressure: nothing is dropped, Kafka keeps
the rest), and catches up when the inserts land again."""

from __future__ import annotations

import asyncio
from decimal import Decimal
import json
import time
import logging
import uuid
from datetime import datetime, timezone
from collections import defaultdict, deque
from typing import Any, AsyncIterable, Awaitable, Callable, Generic, Iterable

import faust
import faust.web

from pipeline.agents.acks import InOrderAcker, Ticket
from pipeline.agents.flow import flow_paused, origin_of
from pipeline.outputs import Emitter
from pipeline.analytics.clickhouse import connect, redact_dsn
from pipeline.analytics.rows import ALERTS_SINK, DEAD_LETTERS_SINK, USAGE_SINK, E, Sink
from pipeline.analytics.writer import InsertRetry, LedgerFlushError, LedgerWriter, Refused
from pipeline.analytics.migrate import apply_migrations
from pipeline.analytics import devreport
from pipeline.clock import now_ms
from pipeline.metrics import LEDGER_INSERT_SECONDS, gauge, register_collector
from pipeline.startup import wait_until_up
from pipeline.events.codec import DecodeError
from pipeline.events.models import Alert, DeadLetter, Usage
from pipeline.kafka.topics import faust_partitions, load_topic_specs, prefixed
from pipeline.outputs import Out, dead_letter
from pipeline.resilience.retry import RetryPolicy
from pipeline.runtime import Runtime

log = logging.getLogger("llmpipe.ledger")

#: Rows a sink may hold un-inserted, per flush batch size: past it the sink stops reading.
BUFFER_BATCHES = 10

# Rejected events: ``await reject(event, code, reason)`` (dead-letter it, or log and skip).
Reject = Callable[[Any, str, str], Awaitable[None]]
# Inserts stalled past the bound (True) or landing again (False): sink, outage s, error.
OnStall = Callable[[str, bool, float, str], Awaitable[None]]


async def _no_alert(sink: str, stalled: bool, outage_s: float, error: str) -> None:
    return None


class SinkConsumer(Generic[E]):
    """One topic into one table: decode, buffer, flush with backoff, ack after the insert.

    Works on anything shaped like a Faust event (``.message.tp/.partition/.offset``,
    ``.value``, ``.ack()``), so the outage behaviour is unit-tested without a broker.
    """

    def __init__(self, name: str, writer: LedgerWriter[E], decode: Callable[[bytes | None], E],
                 retry: InsertRetry, reject: Reject, *,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 stall_s: float = 60.0, on_stall: OnStall | None = None):
        """``on_stall(sink, stalled, outage_s, error)`` is awaited once when inserts have
        failed for ``stall_s`` (stalled=True) and once when they land again (False)."""
        self.name = name
        self.writer = writer
        self.retry = retry
        self._decode = decode
        self._reject = reject
        self._sleep = sleep
        self._acker = InOrderAcker(lambda event: event.ack())
        self._waiting: dict[int, deque[tuple[int, Ticket]]] = defaultdict(deque)
        self._flush_lock = asyncio.Lock()
        self._background: asyncio.Task | None = None
        self.rejected = 0
        self.backpressure_waits = 0
        self.stall_s = stall_s
        self.stalled = False
        self._on_stall = on_stall or _no_alert

    async def consume(self, events: AsyncIterable[Any]) -> None:
        async for event in events:
            await self.handle(event)

    async def handle(self, event: Any) -> None:
        m = event.message
        ticket = self._acker.track(m.tp, m.offset, event)
        if ticket.repeat:                 # already buffered or stored by this sink (acks.py)
            self._acker.done(ticket)
            return
        try:
            item = self._decode(event.value)
        except DecodeError as exc:
            await self._rejected(event, ticket, exc.code, exc.reason)
            return
        await self.wait_for_room()
        try:
            self.writer.add(item, m.partition, m.offset)
        except (ValueError, TypeError, OverflowError) as exc:   # decoded, but no valid row
            await self._rejected(event, ticket, "schema_violation",
                                 f"{self.writer.sink.table} row not storable: {exc}")
            return
        self._waiting[m.partition].append((m.offset, ticket))
        if self.writer.due():
            self.flush_soon()

    def flush_soon(self) -> None:
        """Flush what is ripe in a background task and keep reading meanwhile: rows that
        arrive during an INSERT make the next one bigger, instead of the stream stalling
        for every small batch (one INSERT costs about the same for 10 rows or 1,000)."""
        if self._background is None or self._background.done():
            self._background = asyncio.ensure_future(self.flush(ripe_only=True))
            self._background.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("ledger_flush_crashed sink=%s error=%r (rows stay pending; the next "
                      "flush retries them)", self.name, task.exception())

    async def drain(self) -> None:
        """Wait for a background flush, then flush everything pending (tests, shutdown)."""
        if self._background is not None:
            await asyncio.wait([self._background])
        await self.flush()

    async def _rejected(self, event: Any, ticket: Ticket, code: str, reason: str) -> None:
        self.rejected += 1
        await self._reject(event, code, reason)
        self._acker.done(ticket)

    async def wait_for_room(self) -> None:
        """Backpressure: while the buffer is full, do not take the next event (Faust stops
        fetching once its stream buffer is full too); flush whenever the backoff allows."""
        if not self.writer.full:
            return
        self.backpressure_waits += 1
        log.warning("ledger_backpressure sink=%s pending=%d max_buffer=%d: not reading until "
                    "inserts succeed", self.name, self.writer.pending, self.writer.max_buffer)
        while self.writer.full:
            await self.flush()
            if self.writer.full:
                await self._sleep(min(max(self.retry.wait_s(), 0.05), 1.0))
        log.info("ledger_backpressure_released sink=%s pending=%d", self.name, self.writer.pending)

    async def flush(self, *, ripe_only: bool = False) -> bool:
        """Insert what is pending (only full or old batches with ``ripe_only``, see
        :meth:`LedgerWriter.flush`) unless backing off; ack what landed. True if all landed."""
        async with self._flush_lock:
            if not self.retry.ready():
                return False
            started, pending = time.perf_counter(), self.writer.pending
            try:
                committed, error = await self.writer.flush(ripe_only=ripe_only), None
            except LedgerFlushError as exc:
                committed, error = exc.committed, exc
            if pending:
                LEDGER_INSERT_SECONDS.labels(self.name).observe(time.perf_counter() - started)
            for refused in self.writer.take_refused():     # before their offsets are acked
                await self._refused_row(refused)
            for partition, last in committed:
                queue = self._waiting[partition]
                while queue and queue[0][0] <= last:
                    self._acker.done(queue.popleft()[1])
            if error is not None:
                delay = self.retry.failed()
                # One line per backoff step, whatever the partition count. The cause comes
                # from ClickHouseError, which has already scrubbed any password.
                log.warning("ledger_insert_failed sink=%s attempt=%d partitions=%s pending=%d "
                            "retry_in=%.2fs error=%s", self.name, self.retry.failures,
                            error.failed, self.writer.pending, delay, error.cause)
                outage = self.retry.outage_s()
                if not self.stalled and outage >= self.stall_s:
                    self.stalled = True
                    await self._on_stall(self.name, True, outage, str(error.cause))
                return False
            outage = self.retry.succeeded()
            if outage is not None:
                log.warning("ledger_insert_recovered sink=%s outage_s=%.1f inserted_total=%d "
                            "pending=%d", self.name, outage, self.writer.inserted,
                            self.writer.pending)
                if self.stalled:
                    self.stalled = False
                    await self._on_stall(self.name, False, outage, "")
            return True

    async def _refused_row(self, refused: Refused) -> None:
        """ClickHouse refused this event's row: dead-letter (or log) the event, with why."""
        for offset, ticket in self._waiting[refused.partition]:
            if offset == refused.offset:
                self.rejected += 1
                await self._reject(ticket.item, "store_refused", refused.reason)
                return

    def state(self) -> dict[str, Any]:
        return {"table": self.writer.sink.table, "pending": self.writer.pending,
                "max_buffer": self.writer.max_buffer, "inserted": self.writer.inserted,
                "inserts": self.writer.inserts,
                "in_flight": self._acker.in_flight(), "rejected": self.rejected,
                "failures": self.retry.failures, "total_failures": self.retry.total_failures,
                "backpressure_waits": self.backpressure_waits}


async def flush_due(sinks: Iterable[SinkConsumer], *, everything: bool = False) -> None:
    """Flush the sinks holding ripe rows (a retry due counts), or with ``everything`` all
    of them whole. A tick with nothing due makes no task: an idle worker runs this 4 times
    a second."""
    work = [sink.flush(ripe_only=not everything) for sink in sinks
            if everything or sink.writer.due()]
    if work:
        await asyncio.gather(*work)


def register_ledger(app: faust.App, runtime: Runtime, source: faust.TopicT, emitter: Emitter) -> None:
    s = runtime.settings
    def ready():
        client = connect(s.clickhouse_dsn)
        return client, apply_migrations(client)
    client, applied = wait_until_up(f"clickhouse at {redact_dsn(s.clickhouse_dsn)}", ready,
                                    s.startup_timeout_s)
    log.info("ledger_ready clickhouse=%s migrations_applied=%d", redact_dsn(s.clickhouse_dsn), len(applied))
    partitions = faust_partitions(prefixed(load_topic_specs(), s.topics.prefix))

    def topic(name: str) -> faust.TopicT:
        return app.topic(name, partitions=partitions.get(name), key_serializer="raw",
                         value_serializer="raw", internal=False)

    async def insert_stalled(sink: str, stalled: bool, outage_s: float, error: str) -> None:
        """Inserts of ``sink`` failing past the bound (or landing again): one alert each way."""
        at = now_ms()
        log.log(logging.CRITICAL if stalled else logging.WARNING,
                "ledger_insert_%s sink=%s outage_s=%.0f error=%s",
                "stalled" if stalled else "stall_over", sink, outage_s, error[:300])
        emitter.emit_later([Out(s.topics.alerts, "*", Alert(
            alert_id=str(uuid.uuid4()), rule="ledger_insert_stalled",
            state="firing" if stalled else "resolved", severity="critical", subject=sink,
            value=f"{outage_s:.0f}s", threshold=f"{s.publish_stall_s:g}s", at_ms=at,
            message=(f"ClickHouse inserts into {sink} failing for {outage_s:.0f}s ({error[:300]}); "
                     "rows wait in Kafka (backpressure), nothing is lost" if stalled else
                     f"ClickHouse inserts into {sink} land again after {outage_s:.0f}s")))],
            agent="ledger")

    def sink(name: str, table: Sink[E], topic_name: str, cls: type[E], reject: Reject) -> SinkConsumer[E]:
        writer = LedgerWriter(client, max_rows=s.ledger_flush_rows, max_age_s=s.ledger_flush_s,
                              max_buffer=BUFFER_BATCHES * s.ledger_flush_rows,
                              token_prefix=f"{table.table}:{topic_name}", sink=table)
        retry = InsertRetry(RetryPolicy(base_s=min(0.5, s.ledger_retry_cap_s),
                                         cap_s=s.ledger_retry_cap_s, jitter=0.2))
        return SinkConsumer(name, writer, lambda value: runtime.codec.decode(value, cls),
                            retry, reject, stall_s=s.publish_stall_s, on_stall=insert_stalled)

    async def dead_letter_it(event, code: str, reason: str) -> None:
        await emitter.emit([dead_letter(s.topics.dead_letter, origin_of(event), event.value,
                                        "ledger", code, reason)])

    def log_and_skip(name: str) -> Reject:
        # Never dead-letter these (a dead letter about a dead letter could loop): log, skip.
        async def skip(event, code: str, reason: str) -> None:
            m = event.message
            log.warning("ledger_skipped sink=%s topic=%s partition=%s offset=%s code=%s "
                        "reason=%s", name, m.topic, m.partition, m.offset, code, reason[:300])
        return skip

    usage = sink("usage", USAGE_SINK, s.topics.usage, Usage, dead_letter_it)
    alerts = sink("alerts", ALERTS_SINK, s.topics.alerts, Alert, log_and_skip("alerts"))
    letters = sink("dead_letters", DEAD_LETTERS_SINK, s.topics.dead_letter, DeadLetter,
                   log_and_skip("dead_letters"))
    sinks = (usage, alerts, letters)

    def backlog():
        family = gauge("llmpipe_ledger_pending_rows")
        for consumer in sinks:
            family.add_metric([consumer.name], consumer.writer.pending)
        yield family
    register_collector(backlog)
    writer = usage.writer

    @app.agent(source, name="ledger")
    async def ledger_agent(stream):
        await usage.consume(stream.noack().events())

    @app.agent(topic(s.topics.alerts), name="ledger_alerts")
    async def ledger_alerts_agent(stream):
        await alerts.consume(stream.noack().events())

    @app.agent(topic(s.topics.dead_letter), name="ledger_dead_letters")
    async def ledger_dead_letters_agent(stream):
        await letters.consume(stream.noack().events())

    @app.task
    async def ledger_flusher() -> None:
        """Inserts ripe batches on a tick; once Faust pauses the flow (rebalance, shutdown)
        inserts everything pending at once, so the rows' offsets get acked — Faust waits
        for those acks. Each sink backs off on its own: one in an outage does not delay the
        others. Runs until Faust cancels it, after its final wait for acks."""
        interval = max(0.05, s.ledger_flush_s / 2)
        while True:
            paused = False
            try:
                paused = flow_paused(app)
                await flush_due(sinks, everything=paused)
            except asyncio.CancelledError:
                raise
            except Exception:          # never let the flusher die: rows would wait forever
                log.exception("ledger_flusher_failed")
            await asyncio.sleep(0.05 if paused else interval)

    @app.page("/llmpipe/ledger/sinks/")
    async def sink_states(web, request):
        """Per sink: pending rows, buffer cap, rows inserted, failures, backpressure waits."""
        return web.json({sink.name: sink.state() for sink in sinks})

    @app.page("/llmpipe/ledger/table-count/")
    class TableCount(faust.web.View):
        """POST {"table": t, "column": c, "values": [...]} -> rows per value (after dedup),
        for the columns in :data:`COUNTABLE` (tests and operators read alerts and dead
        letters here because this worker owns the chDB path)."""

        async def post(self, request):
            body = await request.json()
            table, column = body.get("table"), body.get("column")
            if column not in COUNTABLE.get(table, ()):
                return self.json({"error": f"countable: {COUNTABLE}"}, status=400)
            values = tuple(str(v) for v in body.get("values", []))
            counts = await asyncio.to_thread(count_by, client, table, column, values)
            return self.json({"counts": counts})

    @app.page("/llmpipe/ledger/totals/")
    class UsageTotals(faust.web.View):
        """POST {"request_ids": [...]} -> rows, distinct ids and cost of those requests, both
        after deduplication ("final") and as stored ("raw": a doubled insert shows here)."""

        async def post(self, request):
            body = await request.json()
            ids = tuple(str(i) for i in body.get("request_ids", []))
            totals = await asyncio.to_thread(usage_totals, client, ids)
            return self.json({**totals, "sinks": {sink.name: sink.state() for sink in sinks}})

    @app.page("/llmpipe/ledger/counts/")
    class UsageCounts(faust.web.View):
        """POST {"request_ids": [...]} -> usage rows per request id (after dedup)."""

        async def post(self, request):
            body = await request.json()
            ids = [str(i) for i in body.get("request_ids", [])]
            counts = await asyncio.to_thread(devreport.count_usage, client, ids)
            return self.json({"counts": counts, "pending": writer.pending})

    @app.page("/llmpipe/ledger/usage/")
    class UsageRows(faust.web.View):
        """POST {"request_ids": [...]} -> the deduplicated usage rows of those requests."""

        async def post(self, request):
            body = await request.json()
            ids = tuple(str(i) for i in body.get("request_ids", []))
            rows = await asyncio.to_thread(usage_rows, client, ids)
            return self.json({"rows": rows})

    @app.page("/llmpipe/ledger/report/")
    async def dev_report(web, request):
        since = datetime.fromtimestamp(int(request.query.get("since_ms", "0")) / 1000, timezone.utc)
        report = await asyncio.to_thread(lambda: devreport.dev_report(client, since=since))
        return web.json({"text": report.format_text(), "report": json.loads(report.to_json())})


USAGE_VIEW_COLUMNS = ("request_id", "tenant", "status", "error_code", "served_model", "deployment",
                      "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd",
                      "baseline_cost_usd", "price_version", "attempts", "provider_ms",
                      "routed_model", "route_rule", "task_class", "canary", "ttft_ms",
                      "cache", "cache_kind", "cache_saved_usd", "cache_cost_usd",
                      "context_tokens_before", "context_tokens_after", "context_saved_usd",
                      "for_request_id")


def usage_rows(client, ids: tuple[str, ...]) -> list[dict]:
    """The rows of ``ids`` as JSON-ready dicts: ints stay ints, NULL (``ttft_ms`` of a
    non-streamed request) stays None, anything else (decimals, strings) becomes text."""
    return [{k: (v if v is None or isinstance(v, int) else str(v))
             for k, v in zip(USAGE_VIEW_COLUMNS, row)}
            for chunk in devreport.in_chunks(sorted(set(ids)))      # an id in one chunk only
            for row in client.query(f"SELECT {', '.join(USAGE_VIEW_COLUMNS)} FROM usage FINAL "
                                    "WHERE request_id IN %(ids)s", {"ids": chunk}).result_rows]


#: Tables and columns the table-count view may group by (never free SQL from a request).
COUNTABLE: dict[str, tuple[str, ...]] = {
    "usage": ("request_id", "tenant"),
    "alerts": ("alert_id", "rule", "tenant"),
    "dead_letters": ("key", "request_id", "reason_code", "source_topic", "agent"),
}


def count_by(client, table: str, column: str, values: tuple[str, ...]) -> dict[str, int]:
    """Rows per value of ``column`` in ``table`` FINAL (0 for values with none)."""
    if table not in COUNTABLE or column not in COUNTABLE[table]:
        raise ValueError(f"cannot count {table}.{column}")
    counts = dict.fromkeys(values, 0)
    for chunk in devreport.in_chunks(list(counts)):
        result = client.query(f"SELECT {column}, count() FROM {table} FINAL "
                              f"WHERE {column} IN %(values)s GROUP BY {column}", {"values": chunk})
        counts.update({str(v): int(n) for v, n in result.result_rows})
    return counts


def usage_totals(client, ids: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """For the requests ``ids``: {"final": ..., "raw": ...}, each {"rows", "distinct",
    "cost_usd"} (cost as exact decimal text), read with and without FINAL."""
    out: dict[str, dict[str, Any]] = {}
    unique = sorted(set(ids))              # chunks then share no id: distinct counts add up
    for name, final in (("final", "FINAL"), ("raw", "")):
        rows, distinct, cost = 0, 0, Decimal(0)
        for chunk in devreport.in_chunks(unique):
            result = client.query(f"SELECT count(), uniqExact(request_id), sum(cost_usd) FROM usage "
                                  f"{final} WHERE request_id IN %(ids)s", {"ids": chunk})
            n, d, total = result.result_rows[0]
            rows, distinct, cost = rows + int(n), distinct + int(d), cost + Decimal(total)
        out[name] = {"rows": rows, "distinct": distinct, "cost_usd": str(cost)}
    return out
