"""The Batch API offload: what dispatch calls for a batch-priority micro-batch.

``submit`` creates the provider job (OpenAI: upload the JSONL, create the batch;
Anthropic: create the message batch) and writes the job's ``submitted`` record to
llm.batch-jobs, waiting for the broker, before it returns. Dispatch acks the Batch only
after that, so a crash before the record is written re-delivers the Batch (a second job
may be created: its results are then emitted twice, which the ledger and budget settle
tolerate, one row per request id); a crash after it leaves the job to the poller, which
reads the record back on start.

After a restart or a rebalance, ``submit`` first waits (bounded) until the poller has read
the deployment's job partition back, then leaves out requests some job already holds: a
Batch re-delivered because its acknowledgement was not yet committed when the worker died
does not become a second provider job. After a rebalance the same requests often arrive
twice at once (the Batch re-delivered, and its llm.routed messages batched again), and
dispatch runs Batches concurrently: a submit holding request ids that another submit is
still creating a job for waits for it, then leaves out what that job took (if it failed,
it takes them itself). Without this both created a job and the requests were answered
twice, or, for the same Batch twice, the second job shared the first's id and was never
polled."""

from __future__ import annotations

import logging
import asyncio
from typing import Awaitable, Callable, Mapping

from aiokafka.partitioner import murmur2

from pipeline.batchapi.clients import CLIENT_CLASSES, BatchClient
from pipeline.batchapi.config import BatchApiConfig
from pipeline.batchapi.jobs import SUBMITTED, JobBook
from pipeline.catalog import CHAT, Catalog
from pipeline.clock import now_ms
from pipeline.providers.deployments import Deployment
from pipeline.events.ids import request_key
from pipeline.events.models import Batch, BatchJob, RoutedRequest
from pipeline.outputs import Out
from pipeline.runtime import Runtime

log = logging.getLogger("llmpipe.batchapi")

Emit = Callable[[list[Out]], Awaitable[None]]
RESTORE_WAIT_S = 30.0     # how long submit waits for the job partitions to be read back


async def _restored() -> None:
    return None


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key``: a job sits on its
    deployment's partition number, as the deployment's llm.routed and llm.batches records."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class BatchOffload:
    def __init__(self, clients: Mapping[str, BatchClient], config: BatchApiConfig, jobs_topic: str,
                 partitions: int, emit: Emit, book: JobBook,
                 owned: Callable[[int], bool] = lambda p: True,
                 clock: Callable[[], int] = now_ms,
                 restored: Callable[[], Awaitable[None]] = _restored):
        """``restored`` returns once the owned job partitions have been read back."""
        self.clients, self.config, self.jobs_topic = clients, config, jobs_topic
        self.restored = restored
        self.partitions, self.emit, self.book, self.owned, self.clock = \
            partitions, emit, book, owned, clock
        self.creating: dict[str, asyncio.Event] = {}   # request key -> its submit under way

    def supports(self, deployment_id: str) -> bool:
        """The deployment's adapter has a Batch API client and it is enabled in config."""
        return (deployment_id in self.clients
                and deployment_id not in self.config.disabled_deployments)

    def takes(self, routed: RoutedRequest) -> bool:
        """Whether a job can serve the request: an Anthropic batch item is one call, one
        choice, so a request for several choices (the adapter fans out live) stays live."""
        client = self.clients.get(routed.route.deployment)
        return client is not None and not (routed.request.params.n > 1
                                           and client.deployment.adapter == "anthropic")

    async def submit(self, batch: Batch) -> None:
        """Create the provider job for ``batch`` and record it durably; raises (GatewayError
        from the provider, ValueError for a batch this offload cannot take) on failure."""
        if not self.supports(batch.deployment):
            raise ValueError(f"deployment {batch.deployment} has no enabled Batch API")
        try:
            await asyncio.wait_for(self.restored(), RESTORE_WAIT_S)
        except asyncio.TimeoutError:
            log.warning("batch_jobs_not_restored_in_time wait_s=%g; submitting anyway",
                        RESTORE_WAIT_S)
        items = _unique(batch.items)
        while True:        # first let submits of the same requests that are under way end
            busy = {id(e): e for e in (self.creating.get(_key(r)) for r in items) if e}
            if not busy:
                break
            log.info("batch_submit_waits_for_overlapping batch_id=%s submits=%d", batch.batch_id,
                     len(busy))
            await asyncio.gather(*(e.wait() for e in busy.values()))
        held = [r for r in items if self.book.known(r)]
        if held:
            log.info("batch_requests_already_in_a_job batch_id=%s requests=%d jobs=%s",
                     batch.batch_id, len(held),
                     ",".join(sorted({self.book.known(r) or "" for r in held})))
            items = [r for r in items if not self.book.known(r)]
        if not items:
            return
        done = asyncio.Event()
        ids = [_key(r) for r in items]
        for rid in ids:                # no await since the check above: nobody else took them
            self.creating[rid] = done
        try:
            await self._create(batch, items)
        finally:
            for rid in ids:
                if self.creating.get(rid) is done:
                    del self.creating[rid]
            done.set()

    async def _create(self, batch: Batch, items: list[RoutedRequest]) -> None:
        client = self.clients[batch.deployment]
        created = await client.create(batch.batch_id, items)
        now = self.clock()
        job = BatchJob(job_id=batch.batch_id, deployment=batch.deployment,
                       adapter=client.deployment.adapter, provider_job_id=created.provider_job_id,
                       input_file_id=created.input_file_id, state=SUBMITTED, revision=1,
                       submitted_at_ms=now, updated_at_ms=now, provider_status=created.status,
                       items=items)
        partition = partition_for(batch.deployment, self.partitions)
        await self.emit([Out(self.jobs_topic, job.job_id, job, partition=partition)])
        if self.owned(partition):
            self.book.apply(job, partition)
        else:      # its partition's owner polls it; here, it still holds its requests
            self.book.note(job)
        log.info("batch_job_submitted job_id=%s deployment=%s provider_job_id=%s items=%d",
                 job.job_id, job.deployment, job.provider_job_id, len(items))

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()


def _key(routed: RoutedRequest) -> str:
    return request_key(routed.request.tenant, routed.request.request_id)


def _unique(items: list[RoutedRequest]) -> list[RoutedRequest]:
    """One item per request (a re-delivered request may sit in a batch twice)."""
    seen: dict[str, RoutedRequest] = {}
    for routed in items:
        seen.setdefault(_key(routed), routed)
    return list(seen.values())


def batch_capable(dep: Deployment, config: BatchApiConfig, catalog: Catalog) -> bool:
    """A chat model (the clients send chat completions; embeddings are dispatched live)
    served by a provider whose Batch API is enabled, through that provider's own API (an
    OpenAI-compatible DeepSeek or relay deployment has no /batches)."""
    return dep.provider in config.providers and dep.adapter == dep.provider \
        and dep.provider in CLIENT_CLASSES and catalog.models[dep.model].kind == CHAT


def make_clients(runtime: Runtime, config: BatchApiConfig) -> dict[str, BatchClient]:
    """A Batch API client for every deployment that can use one (``batch_capable``)."""
    keys = runtime.load_keys()
    limits = runtime.deployments.calls
    return {dep_id: CLIENT_CLASSES[dep.adapter](dep, keys[dep_id], limits, config.http_timeout_s,
                                                config.completion_window)
            for dep_id, dep in runtime.deployments.by_id.items()
            if batch_capable(dep, config, runtime.catalog)}
