"""A request id is unique only within its tenant: two tenants using the same id never share
a hop record, a Batch API job slot, a ledger row or an SDK waiter (pipeline/events/ids.py)."""

from __future__ import annotations

import asyncio
import uuid

from pipeline.batchapi.config import PollSettings
from pipeline.batchapi.jobs import JobBook
from pipeline.dispatch.hops import FinishedHops
from pipeline.client import GatewayClient, make_request
from pipeline.events.codec import Codec
from pipeline.events.models import (BatchJob, ChatMessage, Request, Response, RouteDecision,
                                    RoutedRequest, Usage)
from pipeline.analytics.rows import USAGE_COLUMNS, USAGE_SINK
from pipeline.analytics.writer import _Batch, _Group

codec = Codec()
RID = str(uuid.uuid4())


def routed(tenant: str, rid: str = RID) -> RoutedRequest:
    return RoutedRequest(
        request=Request(request_id=rid, tenant=tenant, messages=[ChatMessage("user", "hi")]),
        route=RouteDecision("deepseek", "deepseek-v3.2", "deepseek", "pinned"), max_tokens=16,
        reply_topic="llm.responses", received_at_ms=1, routed_at_ms=2)


def test_another_tenants_finished_hop_is_not_ours():
    hops = FinishedHops({}, window_ms=60_000)
    hops.record([routed("tenant-b")], partition=0, now_ms=1)
    assert hops.finished(routed("tenant-b"))
    assert not hops.finished(routed("tenant-a"))


def test_a_batch_job_holds_only_its_own_tenants_requests():
    book = JobBook(PollSettings(1, 2, 10), 60, lambda: 0)
    book.apply(BatchJob(job_id=str(uuid.uuid4()), deployment="d", adapter="openai",
                        provider_job_id="p", submitted_at_ms=0, updated_at_ms=0,
                        items=[routed("tenant-b")]), 0)
    assert book.known(routed("tenant-b")) and not book.known(routed("tenant-a"))


def test_the_ledger_keeps_both_tenants_rows_of_one_id_in_a_batch():
    batch = _Batch(0)
    for offset, tenant in enumerate(["tenant-b", "tenant-a", "tenant-b"]):
        usage = Usage(request_id=RID, tenant=tenant, created_at_ms=1, completed_at_ms=2,
                      status="ok", cost_nanos=offset * 10**9)
        batch.rows.append(USAGE_SINK.row(usage))
        batch.offsets.append(offset)
        batch.identities.append(USAGE_SINK.identity(usage))
    cost = USAGE_COLUMNS.index("cost_usd")
    kept = [(row[1], row[cost]) for row in _Group([batch]).first_rows()]
    assert kept == [("tenant-b", 0), ("tenant-a", 1)]        # USD; tenant-b's second left out


async def test_the_sdk_never_hands_a_waiter_another_tenants_response():
    gw = GatewayClient("unused:9092")
    mine = make_request("tenant-a", "hello", request_id=RID)
    fut = gw.expect(mine)
    theirs = Response(request_id=RID, tenant="tenant-b", status="ok", completed_at_ms=1,
                      content="tenant-b's secret answer")
    gw._on_record(codec.encode(theirs, "llm.responses"))
    assert not fut.done()
    ours = Response(request_id=RID, tenant="tenant-a", status="ok", completed_at_ms=2,
                    content="tenant-a's answer")
    gw._on_record(codec.encode(ours, "llm.responses"))
    assert (await asyncio.wait_for(fut, 1)).content == "tenant-a's answer"
