"""Context management on the embedded stack (issue 15): a compressed request still gets
exactly one response and one usage row, carrying its prompt tokens before and after; the
summary call is a row of its own, linked to the request it served; the provider receives
the compressed messages, and a tenant that did not opt in is sent exactly what it sent."""

from __future__ import annotations

import random
import uuid
from decimal import Decimal

import pytest

from pipeline.client import GatewayClient, make_request
from pipeline.context.workload import DEFAULT_SEED, chat_case
from pipeline.dev.gateway import issue_key
from pipeline.events.models import Request, Response, TenantPolicy
from pipeline.intake.summaries import summary_id as context_summary_id
from tests.integration.conftest import worker_stack
from tests.integration.test_tenancy_flow import wait_for_policy

pytestmark = pytest.mark.integration

TIMEOUT = 60.0
CASE = chat_case(random.Random(DEFAULT_SEED), 3, "en")


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    with worker_stack(broker, tmp_path_factory, "context", seed=15) as stack:
        issue_key(stack, "ctxco", TenantPolicy("ctxco", context="normalise,window=4,summarise"))
        issue_key(stack, "plainco", TenantPolicy("plainco"))
        yield stack


def conversation(tenant: str) -> Request:
    tag = uuid.uuid4().hex[:8]               # a conversation of its own: no summary memo
    messages = [CASE.messages[0].replace(content=f"{CASE.messages[0].content} [{tag}]"),
                *CASE.messages[1:]]
    return make_request(tenant, messages, model="gpt-4o-mini", max_tokens=60)


async def answer(stack, request: Request) -> Response:
    await wait_for_policy(stack.workers[0], request.tenant)
    async with GatewayClient(stack.bootstrap, stack.topics) as client:
        return await client.request(request, timeout=TIMEOUT)


def sent_to_provider(stack, marker: str) -> list[dict]:
    return [b for b in stack.simulator_requests()
            if any(marker in str(m.get("content")) for m in b.get("messages", []))]


async def test_a_compressed_request_has_one_response_one_row_and_its_summary_row(stack):
    request = conversation("ctxco")
    response = await answer(stack, request)
    assert response.status == "ok", response
    assert "spliced in" in response.context and "window" in response.context
    summary_id = context_summary_id(request.request_id)
    worker = stack.workers[0]
    counts = worker.wait_for_usage([request.request_id, summary_id])
    assert counts == {request.request_id: 1, summary_id: 1}, counts
    rows = {r["request_id"]: r for r in worker.usage_rows([request.request_id, summary_id])}
    own, summary = rows[request.request_id], rows[summary_id]
    assert own["context_tokens_before"] > own["context_tokens_after"] > 0
    assert Decimal(own["context_saved_usd"]) > 0 and own["for_request_id"] == ""
    assert summary["for_request_id"] == request.request_id
    assert summary["route_rule"] == "context-summary" and Decimal(summary["cost_usd"]) > 0
    marker = request.messages[0].content[-10:]
    (sent,) = sent_to_provider(stack, marker)            # the compressed request
    assert any(m["content"].startswith("Summary of the earlier conversation: ")
               for m in sent["messages"])
    assert len(sent["messages"]) < len(request.messages)


async def test_a_tenant_that_did_not_opt_in_is_sent_exactly_its_messages(stack):
    request = conversation("plainco")
    response = await answer(stack, request)
    assert response.status == "ok" and response.context == ""
    marker = request.messages[0].content[-10:]
    (sent,) = sent_to_provider(stack, marker)
    # (the OpenAI adapter sends an empty assistant content beside tool calls as null)
    assert [(m["role"], m["content"] or "") for m in sent["messages"]] == \
        [(m.role, m.content) for m in request.messages]
    (row,) = stack.workers[0].usage_rows([request.request_id]) or [None]
    assert row is None or row["context_tokens_before"] == 0
