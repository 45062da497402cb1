"""Ledger sink: llm.usage -> ClickHouse `usage`, in batches whose boundaries come from
offsets (same batch, same dedup token on retry). An event is acked only after the insert
holding it succeeded; while ClickHouse is down the buffer stops growing at max_buffer,
inserts are retried with backoff, and consumption resumes when they land."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone
from collections import defaultdict, deque

import faust
import faust.web

from pipeline.agents.acks import InOrderAcker, Ticket
from pipeline.agents.flow import Emitter, origin_of
from pipeline.analytics.clickhouse import connect, redact_dsn
from pipeline.analytics.ledger import LedgerFlushError, LedgerWriter
from pipeline.analytics.migrate import apply_migrations
from pipeline.analytics import report as reports
from pipeline.events.codec import DecodeError
from pipeline.events.models import Usage
from pipeline.outputs import dead_letter
from pipeline.runtime import Runtime

log = logging.getLogger("llmpipe.ledger")


def register_ledger(app: faust.App, runtime: Runtime, source: faust.TopicT, emitter: Emitter) -> None:
    s = runtime.settings
    client = connect(s.clickhouse_dsn)
    applied = apply_migrations(client)
    log.info("ledger_ready clickhouse=%s migrations_applied=%d", redact_dsn(s.clickhouse_dsn), len(applied))
    writer = LedgerWriter(client, max_rows=s.ledger_flush_rows, max_age_s=s.ledger_flush_s,
                          max_buffer=max(10 * s.ledger_flush_rows, 1000),
                          token_prefix=f"usage:{s.topics.usage}")
    acker = InOrderAcker(lambda event: event.ack())
    waiting: dict[int, deque[tuple[int, Ticket]]] = defaultdict(deque)
    state = {"failures": 0, "retry_at": 0.0}

    async def flush() -> None:
        if time.monotonic() < state["retry_at"]:
            return
        try:
            committed = await writer.flush()
            state["failures"] = 0
        except LedgerFlushError as exc:
            committed = exc.committed
            state["failures"] += 1
            delay = min(0.5 * 2 ** state["failures"], 30.0)
            state["retry_at"] = time.monotonic() + delay
            log.warning("ledger_insert_failed partitions=%s retry_in=%.1fs error=%s",
                        exc.failed, delay, exc.cause)
        for partition, last in committed:
            queue = waiting[partition]
            while queue and queue[0][0] <= last:
                acker.done(queue.popleft()[1])

    async def reject(event, ticket: Ticket, code: str, reason: str) -> None:
        await emitter.emit([dead_letter(s.topics.dead_letter, origin_of(event), event.value,
                                        "ledger", code, reason)])
        acker.done(ticket)

    @app.agent(source, name="ledger")
    async def ledger_agent(stream):
        async for event in stream.noack().events():
            m = event.message
            ticket = acker.track(m.tp, m.offset, event)
            try:
                usage = runtime.codec.decode(event.value, Usage)
            except DecodeError as exc:
                await reject(event, ticket, exc.code, exc.reason)
                continue
            while writer.full:
                await flush()
                await asyncio.sleep(0.2)
            try:
                writer.add(usage, m.partition, m.offset)
            except ValueError as exc:
                await reject(event, ticket, "schema_violation", f"usage not storable: {exc}")
                continue
            waiting[m.partition].append((m.offset, ticket))
            if writer.due():
                await flush()

    @app.timer(interval=max(0.05, s.ledger_flush_s / 2))
    async def ledger_tick():
        if writer.due():
            await flush()

    @app.page("/llmpipe/ledger/counts/")
    class UsageCounts(faust.web.View):
        """POST {"request_ids": [...]} -> usage rows per request id (after dedup)."""

        async def post(self, request):
            body = await request.json()
            ids = [str(i) for i in body.get("request_ids", [])]
            counts = await asyncio.to_thread(reports.count_usage, client, ids)
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
        report = await asyncio.to_thread(lambda: reports.dev_report(client, since=since))
        return web.json({"text": report.format_text(), "report": json.loads(report.to_json())})


USAGE_VIEW_COLUMNS = ("request_id", "tenant", "status", "error_code", "served_model", "deployment",
                      "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd",
                      "baseline_cost_usd", "price_version", "attempts", "provider_ms",
                      "routed_model", "route_rule", "task_class", "canary")


def usage_rows(client, ids: tuple[str, ...]) -> list[dict]:
    if not ids:
        return []
    result = client.query(f"SELECT {', '.join(USAGE_VIEW_COLUMNS)} FROM usage FINAL "
                          "WHERE request_id IN %(ids)s", {"ids": ids})
    return [{k: (str(v) if not isinstance(v, int) else v) for k, v in zip(USAGE_VIEW_COLUMNS, row)}
            for row in result.result_rows]
