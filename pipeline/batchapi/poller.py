"""The Batch API poller: checks this worker's provider jobs with backoff and, when one
ends, emits its results (pipeline/batchapi/results.py), then records ``emitted`` on
llm.batch-jobs.

Which jobs are this worker's: those on the llm.batch-jobs partitions whose numbers it owns
on dispatch's source topic (a job sits on its deployment's partition number), so exactly
one worker polls a job, and after a rebalance or a restart the new owner reads the
partition back from the beginning (``JobLog``) and resumes. Results are emitted before the
``emitted`` record: a crash in between emits them again after the restart, which the
ledger and budget settle (the first Usage of a request wins) absorb.

A rebalance hands a job over cleanly: when Faust revokes the partitions, the old owner
stops checking and ending jobs at once (an ending already under way finishes first, its
``emitted`` record on the broker), so the new owner, which reads the partition back only
once it is assigned, after every member has let go, sees either a job still running or
its ``emitted`` record, and the results go out once."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Mapping

import faust
from aiokafka import TopicPartition

from pipeline.outputs import Emitter
from pipeline.batchapi.clients import BatchClient
from pipeline.batchapi.config import load_batchapi_config
from pipeline.batchapi.jobs import EMITTED, Action, ItemResult, JobBook, Tracked
from pipeline.batchapi.offload import BatchOffload, Emit, make_clients
from pipeline.batchapi.results import ResultBuilder
from pipeline.clock import now_ms
from pipeline.errors import GatewayError
from pipeline.events.codec import Codec, DecodeError
from pipeline.events.ids import request_key
from pipeline.events.models import BatchJob
from pipeline.kafka import clients
from pipeline.kafka.topics import faust_partitions, load_topic_specs, prefixed
from pipeline.outputs import Out
from pipeline.runtime import Runtime

log = logging.getLogger("llmpipe.batchapi")

MIN_WAIT_MS, MAX_WAIT_MS = 20, 500      # how long one loop turn waits for job records


class BatchPoller:
    """Polls due jobs of ``book`` and ends them. Plain: no Kafka, no Faust."""

    def __init__(self, book: JobBook, clients: Mapping[str, BatchClient], builder: ResultBuilder,
                 jobs_topic: str, emit: Emit, clock: Callable[[], int] = now_ms,
                 owned: Callable[[int], bool] = lambda p: True):
        """``owned`` says whether a job partition is still this worker's."""
        self.book, self.clients, self.builder = book, clients, builder
        self.jobs_topic, self.emit, self.clock, self.owned = jobs_topic, emit, clock, owned
        self.ending = asyncio.Lock()      # held while a job's results and record go out
        self.emitted_jobs = 0
        self.left_behind = 0              # ended at the provider, but the partition had moved

    async def poll_due(self) -> int:
        """Check every due job of an owned partition once; returns how many ended."""
        ended = 0
        for tracked in self.book.due():
            # not ended meanwhile, and its partition not revoked meanwhile
            if tracked.job.job_id in self.book.jobs and self.owned(tracked.partition):
                ended += await self._poll(tracked)
        return ended

    async def release(self, let_go: Callable[[], None]) -> None:
        """Call ``let_go`` (which makes ``owned`` false for partitions being revoked) once no
        job is being ended: from then on no result of those partitions leaves this worker."""
        async with self.ending:
            let_go()

    async def _poll(self, tracked: Tracked) -> int:
        job = tracked.job
        client = self.clients.get(job.deployment)
        if client is None:
            tracked.give_up_reason = f"deployment {job.deployment} has no Batch API client here"
            return await self._end(tracked, {}, tracked.give_up_reason)
        try:
            status = await client.status(job.provider_job_id)
        except GatewayError as exc:
            log.warning("batch_status_failed job_id=%s provider_job_id=%s code=%s",
                        job.job_id, job.provider_job_id, exc.code)
            action = self.book.observed(job.job_id, None, exc.code)
        else:
            action = self.book.observed(job.job_id, status)
        if action is Action.POLL_LATER:
            return 0
        if action is Action.FETCH:
            try:
                results = await client.results(job.provider_job_id)
            except GatewayError as exc:
                log.warning("batch_results_failed job_id=%s provider_job_id=%s code=%s",
                            job.job_id, job.provider_job_id, exc.code)
                self.book.observed(job.job_id, None, exc.code)    # try again later
                return 0
            return await self._end(tracked, results, "no result for the item")
        # GIVE_UP: failed as a whole, or out too long (then cancel it, best effort)
        if not tracked.last_status.startswith("failed"):
            try:
                await client.cancel(job.provider_job_id)
            except GatewayError as exc:
                log.warning("batch_cancel_failed job_id=%s code=%s", job.job_id, exc.code)
        return await self._end(tracked, {}, tracked.give_up_reason)

    async def _end(self, tracked: Tracked, results: dict[int, ItemResult], missing: str) -> int:
        async with self.ending:
            return await self._end_owned(tracked, results, missing)

    async def _end_owned(self, tracked: Tracked, results: dict[int, ItemResult],
                         missing: str) -> int:
        job = tracked.job
        if not self.owned(tracked.partition):
            # Revoked while its status or results were fetched: the partition's new owner
            # reads the job back and ends it; emitting here too would answer twice.
            self.left_behind += 1
            log.info("batch_job_left_to_new_owner job_id=%s partition=%d", job.job_id,
                     tracked.partition)
            return 0
        outs, counts = self.builder.outputs(job, results, missing)
        await self.emit(outs)
        done = job.replace(state=EMITTED, revision=job.revision + 1, updated_at_ms=self.clock(),
                           provider_status=tracked.last_status, succeeded=counts.succeeded,
                           retried=counts.retried, failed=counts.failed, items=[],
                           request_ids=[request_key(r.request.tenant, r.request.request_id)
                                        for r in job.items])
        await self.emit([Out(self.jobs_topic, job.job_id, done, partition=tracked.partition)])
        self.book.finish(done)
        self.emitted_jobs += 1
        log.info("batch_job_ended job_id=%s deployment=%s provider_job_id=%s status=%s polls=%d "
                 "succeeded=%d retried=%d failed=%d waited_ms=%d", job.job_id, job.deployment,
                 job.provider_job_id, tracked.last_status, tracked.polls, counts.succeeded,
                 counts.retried, counts.failed, done.updated_at_ms - job.submitted_at_ms)
        return 1


class JobLog:
    """Reads llm.batch-jobs partitions from the beginning (no consumer group): the latest
    record per job is its state."""

    def __init__(self, bootstrap: str, topic: str, codec: Codec):
        self.bootstrap, self.topic, self.codec = bootstrap, topic, codec
        self.consumer = clients.consumer(bootstrap)
        self.partitions: set[int] = set()
        self.ends: dict[TopicPartition, int] = {}     # offsets to reach before caught up
        self.caught_up = asyncio.Event()

    async def start(self) -> None:
        await self.consumer.start()

    async def assign(self, partitions: set[int]) -> None:
        self.caught_up.clear()
        self.partitions = set(partitions)
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        self.ends = {}
        if tps:
            await self.consumer.seek_to_beginning(*tps)
            self.ends = await clients.end_offsets(self.bootstrap, tps)
        await self._check_caught_up()

    async def _check_caught_up(self) -> None:
        if not self.caught_up.is_set() and await clients.caught_up(self.consumer, self.ends):
            self.caught_up.set()

    async def read(self, timeout_ms: int) -> list[tuple[int, str, BatchJob | None]]:
        if not self.partitions:
            await asyncio.sleep(timeout_ms / 1000)
            return []
        got = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=500)
        out: list[tuple[int, str, BatchJob | None]] = []
        for tp, records in got.items():
            for rec in records:
                key = rec.key.decode(errors="replace") if rec.key else ""
                if rec.value is None:
                    out.append((tp.partition, key, None))
                    continue
                try:
                    out.append((tp.partition, key, self.codec.decode(rec.value, BatchJob)))
                except DecodeError as exc:
                    log.error("batch_job_record_unreadable partition=%d offset=%d reason=%s",
                              tp.partition, rec.offset, exc.reason)
        await self._check_caught_up()
        return out

    async def stop(self) -> None:
        await self.consumer.stop()


def register_batch_api(app: faust.App, runtime: Runtime, emitter: Emitter,
                       owner_topic: str) -> BatchOffload:
    """The offload dispatch calls, and the poller task of this worker. ``owner_topic`` is
    dispatch's source: its assigned partition numbers are the job partitions polled here."""
    s = runtime.settings
    config = load_batchapi_config()
    clients = make_clients(runtime, config)
    partitions = faust_partitions(prefixed(load_topic_specs(), s.topics.prefix))[s.topics.batch_jobs]
    book = JobBook(config.poll, config.max_wait_s, now_ms)
    owned: set[int] = set()
    changed = asyncio.Event()      # the assignment changed: re-read the owned job partitions
    restored = asyncio.Event()     # the owned job partitions are read up to their end
    offload = BatchOffload(clients, config, s.topics.batch_jobs, partitions, emitter.emit, book,
                           owned=lambda p: p in owned, restored=restored.wait)
    builder = ResultBuilder(runtime.catalog, runtime.deployments, s.topics)
    poller = BatchPoller(book, clients, builder, s.topics.batch_jobs, emitter.emit,
                         owned=lambda p: p in owned)

    @app.task
    async def batch_api_poller() -> None:
        joblog = JobLog(s.kafka_bootstrap, s.topics.batch_jobs, runtime.codec)
        await joblog.start()
        try:
            while True:
                try:
                    if changed.is_set():
                        changed.clear()
                        mine = set(owned)
                        gone = book.retain(mine)
                        try:
                            await joblog.assign(mine)
                        except BaseException:
                            changed.set()    # read the partitions back on the next turn
                            raise
                        log.info("batch_jobs_partitions partitions=%s dropped_jobs=%d",
                                 ",".join(map(str, sorted(mine))), len(gone))
                    due = book.next_due_ms()
                    wait = MAX_WAIT_MS if due is None else due - now_ms()
                    for partition, key, job in await joblog.read(
                            max(MIN_WAIT_MS, min(MAX_WAIT_MS, wait))):
                        if job is None:
                            book.forget(key)
                        elif partition in owned:
                            book.apply(job, partition)
                    if joblog.caught_up.is_set() and not changed.is_set() and not restored.is_set():
                        restored.set()
                        log.info("batch_jobs_restored jobs=%d", len(book.jobs))
                    await poller.poll_due()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("batch_poller_failed; retrying in 1s")
                    await asyncio.sleep(1.0)
        finally:
            await joblog.stop()
            await offload.aclose()

    @app.on_partitions_revoked.connect
    async def let_go_of_job_partitions(sender, revoked, **kwargs) -> None:
        # Stop ending jobs before the partitions can reach another worker; the assignment
        # that follows says which are ours again (and reads them back).
        await poller.release(owned.clear)

    @app.on_partitions_assigned.connect
    async def own_job_partitions(sender, assigned, **kwargs) -> None:
        owned.clear()
        owned.update(tp.partition for tp in assigned if tp.topic == owner_topic)
        restored.clear()
        changed.set()

    @app.page("/llmpipe/batchapi/jobs/")
    async def batch_jobs(web, request):
        """Provider batch jobs this worker polls: status, polls, progress, next check."""
        return web.json({"partitions": sorted(owned), "restored": restored.is_set(),
                         "jobs": book.snapshot(), "ended_here": poller.emitted_jobs,
                         "left_to_new_owner": poller.left_behind})

    return offload
