"""Batch API offload without a broker: the job book's state machine on a manual clock,
results turned into Responses/Usage at the batch rate or live retries, and submit -> poll
-> emit against the simulator, including a restart rebuilt from the job records."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx
import pytest

from pipeline import errors
from pipeline.batchapi.clients import AnthropicBatchClient, OpenAIBatchClient
from pipeline.batchapi.config import BatchApiConfig, PollSettings, load_batchapi_config
from pipeline.batchapi.jobs import (EMITTED, ERRORED, EXPIRED, SUBMITTED, Action, ItemResult,
                                    JobBook, JobStatus)
from pipeline.batchapi.offload import BatchOffload, batch_capable, partition_for
from pipeline.batchapi.poller import BatchPoller
from pipeline.batchapi.results import LIVE_PRIORITY, RETRY_RULE, ResultBuilder
from pipeline.catalog import load_catalog
from pipeline.config import ConfigError
from pipeline.providers.deployments import load_deployments
from pipeline.events.models import (Batch, BatchJob, ChatMessage, Request, Response, RouteDecision,
                                    RoutedRequest, RoutingHints, Usage)
from pipeline.providers.base import Completion
from pipeline.secrets import Secret
from pipeline.settings import Topics
from pipeline.simulator import load_config, start_simulator

catalog = load_catalog()
deployments = load_deployments(catalog, env={})
TOPICS = Topics()
KEY = "sk-batch-test-0123456789abcdef"
POLL = PollSettings(initial_s=2, factor=2, max_s=10)


class Clock:
    def __init__(self, ms: int = 1_700_000_000_000):
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


def routed(i: int, dep_id: str = "openai-gpt-4o-mini", max_tokens: int = 64) -> RoutedRequest:
    dep = deployments.by_id[dep_id]
    request = Request(request_id=f"r-{i}", tenant="acme", created_at_ms=1_699_999_999_000,
                      messages=[ChatMessage("user", f"Summarise report {i}.")],
                      hints=RoutingHints(priority="batch"))
    route = RouteDecision(deployment=dep.id, model=dep.model, provider=dep.provider, rule="cheapest")
    return RoutedRequest(request=request, route=route, max_tokens=max_tokens,
                         reply_topic="llm.responses", received_at_ms=1_699_999_999_500,
                         routed_at_ms=1_699_999_999_600, tenant_partition=2)


def job(n: int = 2, submitted: int = 1_700_000_000_000, revision: int = 1) -> BatchJob:
    return BatchJob(job_id="00000000-0000-4000-8000-000000000001", deployment="openai-gpt-4o-mini",
                    adapter="openai", provider_job_id="batch_1", submitted_at_ms=submitted,
                    updated_at_ms=submitted, revision=revision, items=[routed(i) for i in range(n)])


# --- the job book ------------------------------------------------------------------------

def test_polls_back_off_exponentially_up_to_the_cap_and_give_up_after_max_wait():
    clock = Clock()
    book = JobBook(POLL, max_wait_s=60, clock=clock)
    book.apply(job(), partition=3)
    assert book.due() == []                      # first check initial_s after submit
    clock.advance(2)
    assert [t.job.job_id for t in book.due()] == [job().job_id]
    gaps = []
    while True:
        action = book.observed(job().job_id, JobStatus("in_progress"))
        if action is not Action.POLL_LATER:
            break
        gaps.append((book.next_due_ms() - clock()) / 1000)
        clock.ms = book.next_due_ms()
    assert gaps[:4] == [4, 8, 10, 10]            # 2 * 2^n, capped at max_s
    assert action is Action.GIVE_UP and clock() - job().submitted_at_ms == 60_000
    assert "max_wait_s 60" in book.jobs[job().job_id].give_up_reason


def test_ended_fetches_failed_gives_up_and_a_failed_status_call_polls_again():
    clock = Clock()
    book = JobBook(POLL, max_wait_s=3600, clock=clock)
    book.apply(job(), 0)
    assert book.observed(job().job_id, None, "timeout") is Action.POLL_LATER
    assert book.jobs[job().job_id].last_status == "unknown (timeout)"
    assert book.observed(job().job_id, JobStatus("completed", ended=True)) is Action.FETCH
    assert book.observed(job().job_id, JobStatus("failed", failed=True)) is Action.GIVE_UP


def test_records_keep_the_highest_revision_and_a_finished_job_never_comes_back():
    clock = Clock()
    book = JobBook(POLL, max_wait_s=3600, clock=clock)
    assert book.apply(job(revision=1), 1)
    assert not book.apply(job(revision=1), 1)               # read back: no change
    done = job(revision=2).replace(state=EMITTED, items=[])
    assert book.apply(done, 1) and job().job_id not in book.jobs
    assert not book.apply(job(revision=1), 1)               # a stale record read later
    assert book.due() == []


def test_restored_job_out_longer_than_the_first_delay_is_checked_at_once():
    clock = Clock()
    book = JobBook(POLL, max_wait_s=3600, clock=clock)
    book.apply(job(submitted=clock() - 600_000), 0)
    assert len(book.due()) == 1


def test_retain_drops_jobs_of_partitions_moved_away():
    book = JobBook(POLL, max_wait_s=3600, clock=Clock())
    book.apply(job(), 4)
    assert book.retain({1, 2}) == [job().job_id] and book.jobs == {}


def test_config_errors_name_file_and_key(tmp_path):
    path = tmp_path / "batchapi.yaml"
    path.write_text("batch_api:\n  providers: [openai, google]\n")
    with pytest.raises(ConfigError) as bad:
        load_batchapi_config(path)
    assert "batch_api.providers[1]" in str(bad.value) and str(path) in str(bad.value)
    path.write_text("batch_api:\n  poll: {initial_s: 0}\n")
    with pytest.raises(ConfigError, match="batch_api.poll.initial_s"):
        load_batchapi_config(path)
    assert load_batchapi_config().providers == ("openai", "anthropic")
    capable = {d for d, dep in deployments.by_id.items() if batch_capable(dep, BatchApiConfig(), catalog)}
    assert capable == {"openai-gpt-4.1", "openai-gpt-4o", "openai-gpt-4o-mini",
                       "anthropic-claude-sonnet-4.5"}          # not Gemini, not DeepSeek


# --- results -----------------------------------------------------------------------------

def test_results_become_batch_priced_responses_live_retries_and_terminal_errors():
    clock = Clock()
    j = job(n=4)
    builder = ResultBuilder(catalog, deployments, TOPICS, clock)
    done = Completion("fine", "stop", prompt_tokens=1000, completion_tokens=500, cached_tokens=0,
                      provider_ms=0)
    results = {0: ItemResult("succeeded", done),
               1: ItemResult(EXPIRED, code="batch_expired", message="window passed"),
               2: ItemResult(ERRORED, code=errors.INVALID_REQUEST, message="max_tokens too large",
                             retryable=False)}            # 3: missing from the results
    clock.advance(3600)
    outs, counts = builder.outputs(j, results, "job failed")
    assert (counts.succeeded, counts.retried, counts.failed) == (1, 2, 1)
    by_kind: dict[type, list] = {}
    for out in outs:
        by_kind.setdefault(type(out.event), []).append(out)
    live = catalog.cost_nanos("gpt-4o-mini", 1000, 500)
    batch = catalog.cost_nanos("gpt-4o-mini", 1000, 500, batch=True)
    assert batch * 2 == live                                 # 50% batch discount
    ok = [o.event for o in by_kind[Response] if o.event.status == "ok"]
    assert [(r.request_id, r.cost_nanos, r.content) for r in ok] == [("r-0", batch, "fine")]
    usage = {o.event.request_id: o for o in by_kind[Usage]}
    assert usage["r-0"].event.cost_nanos == batch and usage["r-0"].event.batch_id == j.job_id
    assert usage["r-0"].event.batch_size == 4 and usage["r-0"].partition == 2   # settle partition
    assert usage["r-0"].event.provider_ms == 3_600_000
    assert usage["r-2"].event.status == "error" and usage["r-2"].event.cost_nanos == 0
    err = [o.event for o in by_kind[Response] if o.event.status == "error"]
    assert err[0].request_id == "r-2" and "batch_1" in err[0].error.message
    retries = [o for o in by_kind[RoutedRequest]]
    assert [(o.topic, o.key, o.event.request.request_id) for o in retries] == \
        [(TOPICS.routed, "openai-gpt-4o-mini", "r-1"), (TOPICS.routed, "openai-gpt-4o-mini", "r-3")]
    for o in retries:
        r = o.event
        assert r.request.hints.priority == LIVE_PRIORITY and r.route.rule == RETRY_RULE
        assert r.received_at_ms == clock()                   # a fresh live deadline
        assert r.tried[-1].deployment == "openai-gpt-4o-mini"
    assert "batch_expired" in retries[0].event.route.reason
    assert "job failed" in retries[1].event.route.reason


# --- submit, poll, emit against the simulator --------------------------------------------

class Topic:
    """What was emitted, in order; the job records as a reader of llm.batch-jobs sees them."""

    def __init__(self):
        self.outs = []

    async def emit(self, outs) -> None:
        self.outs += outs

    def jobs(self) -> list[tuple[int, BatchJob]]:
        return [(o.partition, o.event) for o in self.outs if isinstance(o.event, BatchJob)]

    def of(self, cls) -> list:
        return [o.event for o in self.outs if isinstance(o.event, cls)]


@pytest.fixture
async def sim():
    running = await start_simulator(load_config(latency_scale=0.001, base_errors=False))
    try:
        async with httpx.AsyncClient(base_url=running.url) as http:
            await http.put("/_sim/batches", json={"completion_delay_s": 0.2})
        yield running
    finally:
        await running.stop()


def clients_for(sim):
    out = {}
    for dep_id, cls in (("openai-gpt-4o-mini", OpenAIBatchClient),
                        ("anthropic-claude-sonnet-4.5", AnthropicBatchClient)):
        dep = dataclasses.replace(deployments.by_id[dep_id], base_url=sim.base_url)
        out[dep_id] = cls(dep, Secret(KEY), deployments.calls, timeout_s=5.0)
    return out


def wiring(sim, topic: Topic, poll=PollSettings(0.05, 2, 0.2)):
    book = JobBook(poll, max_wait_s=30, clock=lambda: int(time.time() * 1000))
    clients = clients_for(sim)
    offload = BatchOffload(clients, BatchApiConfig(disabled_deployments=("openai-gpt-4o",)),
                           TOPICS.batch_jobs, 6, topic.emit, book)
    poller = BatchPoller(book, clients, ResultBuilder(catalog, deployments, TOPICS),
                         TOPICS.batch_jobs, topic.emit)
    return book, offload, poller


async def drain(poller: BatchPoller, book: JobBook, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while book.jobs and time.monotonic() < deadline:
        await poller.poll_due()
        await asyncio.sleep(0.02)
    assert not book.jobs, book.snapshot()


def batch_of(dep_id: str, n: int, batch_id: str = "00000000-0000-4000-8000-0000000000aa") -> Batch:
    items = [routed(i, dep_id) for i in range(n)]
    return Batch(batch_id=batch_id, deployment=dep_id, opened_at_ms=0, flushed_at_ms=0,
                 items=items + items[:1], priority="batch")        # r-0 twice: re-delivered


def test_supports_only_enabled_batch_api_adapters():
    offload = BatchOffload({"openai-gpt-4o-mini": object(), "openai-gpt-4o": object()},
                           BatchApiConfig(disabled_deployments=("openai-gpt-4o",)), "t", 6,
                           Topic().emit, JobBook(POLL, 60, Clock()))
    assert offload.supports("openai-gpt-4o-mini")
    assert not offload.supports("openai-gpt-4o") and not offload.supports("google-gemini-2.5-flash")


@pytest.mark.parametrize("dep_id", ["openai-gpt-4o-mini", "anthropic-claude-sonnet-4.5"])
async def test_submit_records_the_job_and_the_poller_emits_each_result_once(sim, dep_id):
    topic = Topic()
    book, offload, poller = wiring(sim, topic)
    try:
        await offload.submit(batch_of(dep_id, 3))
        [(partition, submitted)] = topic.jobs()
        assert partition == partition_for(dep_id, 6) and submitted.state == SUBMITTED
        assert [r.request.request_id for r in submitted.items] == ["r-0", "r-1", "r-2"]
        await offload.submit(batch_of(dep_id, 3))       # the same Batch re-delivered: no 2nd job
        assert len(topic.jobs()) == 1
        await drain(poller, book)
    finally:
        await offload.aclose()
    responses, usage = topic.of(Response), topic.of(Usage)
    assert sorted(r.request_id for r in responses) == ["r-0", "r-1", "r-2"]
    assert sorted(u.request_id for u in usage) == ["r-0", "r-1", "r-2"]
    model = deployments.by_id[dep_id].model
    for u in usage:
        assert u.status == "ok" and u.batch_id == submitted.job_id and u.batch_size == 3
        assert u.cost_nanos == catalog.cost_nanos(model, u.prompt_tokens, u.completion_tokens,
                                                  u.cached_tokens, batch=True) > 0
    final = topic.jobs()[-1][1]
    assert (final.state, final.revision, final.succeeded, final.items) == (EMITTED, 2, 3, [])
    # results come before the record that says they were emitted
    assert isinstance(topic.outs[-1].event, BatchJob) and topic.outs[-1].event.state == EMITTED


async def test_a_restarted_poller_resumes_from_the_records_and_never_re_emits(sim):
    first_topic = Topic()
    book, offload, _ = wiring(sim, first_topic)
    try:
        await offload.submit(batch_of("openai-gpt-4o-mini", 2))
    finally:
        await offload.aclose()
    # the worker dies here; a new one reads llm.batch-jobs back
    topic = Topic()
    book2, offload2, poller2 = wiring(sim, topic)
    try:
        for partition, record in first_topic.jobs():
            book2.apply(record, partition)
        await drain(poller2, book2)
        assert sorted(u.request_id for u in topic.of(Usage)) == ["r-0", "r-1"]
        # and a third start, reading every record so far, has nothing left to do
        book3, offload3, poller3 = wiring(sim, Topic())
        for partition, record in first_topic.jobs() + topic.jobs():
            book3.apply(record, partition)
        assert book3.jobs == {}
        await offload3.aclose()
    finally:
        await offload2.aclose()


async def test_a_failed_job_sends_every_item_back_to_the_live_path(sim):
    async with httpx.AsyncClient(base_url=sim.url) as http:
        await http.put("/_sim/batches", json={"fail_jobs": True})
    topic = Topic()
    book, offload, poller = wiring(sim, topic)
    try:
        await offload.submit(batch_of("openai-gpt-4o-mini", 2))
        await drain(poller, book)
    finally:
        await offload.aclose()
    retried = topic.of(RoutedRequest)
    assert sorted(r.request.request_id for r in retried) == ["r-0", "r-1"]
    assert all(r.request.hints.priority == "standard" and "failed" in r.route.reason for r in retried)
    assert topic.of(Usage) == [] and topic.jobs()[-1][1].retried == 2


async def test_submit_raises_when_the_provider_refuses_and_records_nothing(sim):
    topic = Topic()
    book, offload, _ = wiring(sim, topic)
    offload.clients["openai-gpt-4o-mini"]._http.base_url = sim.url + "/nowhere"
    try:
        with pytest.raises(errors.GatewayError):
            await offload.submit(batch_of("openai-gpt-4o-mini", 1))
    finally:
        await offload.aclose()
    assert topic.outs == [] and book.jobs == {}


async def test_after_a_restart_requests_already_in_a_job_are_not_submitted_again(sim):
    topic = Topic()
    book, offload, poller = wiring(sim, topic)
    try:
        await offload.submit(batch_of("openai-gpt-4o-mini", 2))
        await drain(poller, book)
    finally:
        await offload.aclose()
    emitted = topic.jobs()[-1][1]
    assert emitted.items == [] and sorted(emitted.request_ids) == ["acme\x1fr-0", "acme\x1fr-1"]
    # a new worker: submit waits until the job partition is read back, then skips r-0, r-1
    later, restored = Topic(), asyncio.Event()
    book2 = JobBook(PollSettings(0.05, 2, 0.2), 30, lambda: int(time.time() * 1000))
    offload2 = BatchOffload(clients_for(sim), BatchApiConfig(), TOPICS.batch_jobs, 6, later.emit,
                            book2, restored=restored.wait)
    try:
        rebatched = batch_of("openai-gpt-4o-mini", 3, batch_id="00000000-0000-4000-8000-0000000000bb")
        submitting = asyncio.create_task(offload2.submit(rebatched))
        await asyncio.sleep(0.05)
        assert not submitting.done() and later.outs == []      # not before the read-back
        for partition, record in topic.jobs():
            book2.apply(record, partition)
        restored.set()
        await asyncio.wait_for(submitting, 5)
    finally:
        await offload2.aclose()
    [(_, job2)] = later.jobs()
    assert [r.request.request_id for r in job2.items] == ["r-2"]


async def test_a_revoked_partition_is_let_go_after_an_ending_under_way_and_never_ended_here(sim):
    """Rebalance hand-over: an ending under way finishes (results and ``emitted`` record)
    before ``release`` returns; after it, jobs of the revoked partition are neither polled
    nor ended here, even one whose results were fetched before the revocation."""
    topic = Topic()
    book, offload, poller = wiring(sim, topic)
    owned = {partition_for("openai-gpt-4o-mini", 6), partition_for("anthropic-claude-sonnet-4.5", 6)}
    poller.owned = lambda p: p in owned
    gate = asyncio.Event()
    plain_emit = topic.emit

    async def slow_emit(outs):
        if any(isinstance(o.event, Response) for o in outs):
            await gate.wait()
        await plain_emit(outs)
    poller.emit = slow_emit
    try:
        await offload.submit(batch_of("openai-gpt-4o-mini", 2))
        other = [routed(i, "anthropic-claude-sonnet-4.5") for i in (7, 8)]
        await offload.submit(Batch(batch_id="00000000-0000-4000-8000-0000000000cc",
                                   deployment="anthropic-claude-sonnet-4.5", opened_at_ms=0,
                                   flushed_at_ms=0, items=other, priority="batch"))
        await asyncio.sleep(0.3)                      # both ended at the provider
        [anthropic_job, openai_job] = sorted(book.jobs.values(), key=lambda t: t.job.deployment)
        ending = asyncio.create_task(poller._poll(book.jobs[openai_job.job.job_id]))
        while not poller.ending.locked():
            await asyncio.sleep(0.01)
        releasing = asyncio.create_task(poller.release(owned.clear))
        await asyncio.sleep(0.05)
        assert not releasing.done() and owned           # waits for the ending under way
        gate.set()
        assert await asyncio.wait_for(ending, 5) == 1
        await asyncio.wait_for(releasing, 5)
        assert owned == set()
        before = list(topic.outs)
        assert await poller.poll_due() == 0             # the anthropic job: not polled
        tracked = book.jobs[anthropic_job.job.job_id]
        assert await poller._end(tracked, {}, "fetched before the revocation") == 0
        assert topic.outs == before and poller.left_behind == 1
    finally:
        await offload.aclose()
    assert sorted(u.request_id for u in topic.of(Usage)) == ["r-0", "r-1"]
    assert [j.state for _, j in topic.jobs()] == [SUBMITTED, SUBMITTED, EMITTED]


async def test_concurrent_submits_of_the_same_requests_make_one_job_each_request(sim):
    """After a rebalance the same Batch is re-delivered and its requests batched again while
    the first submit is still creating the job: each request goes into one job only, and the
    same Batch twice is one job (not two provider jobs under one job id)."""
    topic = Topic()
    book, offload, poller = wiring(sim, topic)
    dep = "openai-gpt-4o-mini"
    again = Batch(batch_id="00000000-0000-4000-8000-0000000000dd", deployment=dep, opened_at_ms=0,
                  flushed_at_ms=0, items=[routed(i, dep) for i in (1, 2, 3)], priority="batch")
    try:
        await asyncio.gather(offload.submit(batch_of(dep, 3)), offload.submit(batch_of(dep, 3)),
                             offload.submit(again))
        holders = {}
        for _, job in topic.jobs():
            for item in job.items:
                holders.setdefault(item.request.request_id, []).append(job.job_id)
        assert {rid: len(jobs) for rid, jobs in holders.items()} == \
            {"r-0": 1, "r-1": 1, "r-2": 1, "r-3": 1}, holders
        assert len(topic.jobs()) == 2 and offload.creating == {}
        await drain(poller, book)
    finally:
        await offload.aclose()
    assert sorted(r.request_id for r in topic.of(Response)) == ["r-0", "r-1", "r-2", "r-3"]


async def test_a_failed_submit_leaves_its_requests_to_the_overlapping_one(sim):
    topic = Topic()
    book, offload, _ = wiring(sim, topic)
    client = offload.clients["openai-gpt-4o-mini"]
    real_create, calls = client.create, []

    async def create_once_refused(batch_id, items):
        calls.append(batch_id)
        if len(calls) == 1:
            await asyncio.sleep(0.05)
            raise errors.GatewayError("refused", "provider_unavailable")
        return await real_create(batch_id, items)
    client.create = create_once_refused
    try:
        first, second = await asyncio.gather(
            offload.submit(batch_of("openai-gpt-4o-mini", 2)),
            offload.submit(batch_of("openai-gpt-4o-mini", 2,
                                    batch_id="00000000-0000-4000-8000-0000000000ee")),
            return_exceptions=True)
    finally:
        await offload.aclose()
    assert isinstance(first, errors.GatewayError) and second is None
    [(_, job)] = topic.jobs()
    assert sorted(r.request.request_id for r in job.items) == ["r-0", "r-1"]
