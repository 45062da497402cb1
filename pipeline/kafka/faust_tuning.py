"""Corrections to how Faust drives aiokafka, applied when this module is imported
(pipeline.agents.app does, before any consumer exists).

**Fetch wait.** Faust hard-codes its consumer's fetch_max_wait_ms to 1500 ms. Brokers that
do not wake a waiting fetch when data arrives (the embedded Tansu broker holds it for the
full wait) then add ~0.75 s per hop on average. This sets the wait from settings instead
(LLMPIPE_FETCH_MAX_WAIT_MS): aiokafka reads the attribute for every fetch it builds.

**Fetch minimum.** LLMPIPE_FETCH_MIN_BYTES (default 1: answer with the first record)
reaches the consumer the same way. A worker on no request's path (the ledger) asks for 64
KiB within a 250 ms wait, so it reads a few large fetches a second instead of a fetch, and
a hop through Faust's consumer thread, for every record or two (pipeline/dev/stack.py
``LEDGER_FETCH``).

**Idle back-off.** On such a broker the wait is also the idle cost: one fetch of every
partition the worker reads per wait, decoded in Python — ~5-6% of a
core at 20 ms, and ~20% of the broker's. After LLMPIPE_IDLE_FETCH_AFTER_S without a record
the wait becomes LLMPIPE_IDLE_FETCH_WAIT_MS (200 ms), and the first fetch that brings one
restores the short wait. The price: the first record after an idle spell waits up to the
long wait on its first hop (on Apache Kafka a fetch returns as soon as data arrives, so
there it costs nothing).

**A record lost on a rebalance.** During a rebalance Faust may fetch records of a partition
it then drops, because the partition is not active yet (faust/transport/consumer.py), and
relies on seeking back to the committed offsets afterwards (faust/tables/recovery.py) to
read them again. aiokafka's ``seek_to_committed`` skips every partition whose committed
offset is None or 0 (``if offset and offset > 0``), so on a partition nothing was ever
committed on, the records fetched and dropped were never read again: the first Batch on
such a partition could go unanswered (found by looping tests/integration/test_batcher.py's
rebalance test: 2 lost in 32 runs). Here a partition with no committed offset is sought to
its beginning — what ``auto_offset_reset="earliest"`` would have read; a record read twice
this way is handled like any re-delivery (at-least-once, idempotent consumers). Table
changelogs are left to Faust's recovery, which keeps its own offsets.

**Recovery to the real end of a changelog.** Faust's table recovery reads each changelog
partition up to its end offset (the consumer's ``highwaters``). The embedded broker names
one past the first record of the partition's last batch, so the rest of that batch was
never applied: at a restart a table lost the last rows flushed together (found by a flaky
alerting test, pipeline/kafka/clients.py ``end_offsets``). The end offsets here are read
to the last record.

**Pause that reaches the fetcher.** Faust pauses a partition only in its own bookkeeping
(``Consumer.pause_partitions``): aiokafka keeps fetching it, and Faust drops what comes
back. So every worker fetched back, decoded and dropped every table-changelog record it
had just written (a request writes nine), and the broker served them; and stream
partitions paused during a rebalance were still fetched, their records dropped while the
fetch position moved past them (what the seek above repairs). Here Faust's pause and resume
are also applied to the aiokafka consumer, in its own thread's loop and in call order, so
a paused partition is not fetched at all; records aiokafka already holds for it are
discarded without moving its position (aiokafka's ``check_assignment``), so nothing is
skipped.

**A livelock check that cost a task per partition.** Every 2.5 commit intervals Faust checks
each assigned partition for stalled streams (``verify_all_partitions_active``), yielding
with ``Service.sleep(0)`` before each: a ``wait_for`` on a new task, ~5 loop callbacks.
A worker holding ~90 partitions ran ~150 of its ~285 loop callbacks a second on it while
idle. The same checks now yield every ``_CHECKS_PER_YIELD`` partitions."""

from __future__ import annotations

import asyncio
import logging
import time

from collections.abc import Iterable

from aiokafka.consumer.consumer import AIOKafkaConsumer
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.structs import TopicPartition
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from pipeline.kafka import clients, redelivery  # redelivery's corrections apply on import

_original = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
_seek_to_committed = AIOKafkaConsumer.seek_to_committed
_original_proc_fetch_request = Fetcher._proc_fetch_request
_highwaters = faust_aiokafka.Consumer.highwaters
_faust_pause = FaustConsumer.pause_partitions
_faust_resume = FaustConsumer.resume_partitions
_fetch_max_wait_ms = 1500     # set_fetch_waits: the short wait, the idle one, after how long
_idle_fetch_wait_ms = 0
_idle_after_s = 2.0
_fetch_min_bytes = 1          # set_fetch_waits: what a fetch waits for, up to the wait
_CHECKS_PER_YIELD = 64        # verify_all_partitions_active: partitions checked per yield
log = logging.getLogger("llmpipe.worker")


def set_fetch_waits(active_ms: int, idle_ms: int, idle_after_s: float,
                    min_bytes: int = 1) -> None:
    """The fetch wait while records arrive, the one after ``idle_after_s`` without any
    (``idle_ms`` <= ``active_ms``: no back-off), and the bytes a fetch waits for within
    its wait (1: answer with the first record)."""
    global _fetch_max_wait_ms, _idle_fetch_wait_ms, _idle_after_s, _fetch_min_bytes
    _fetch_max_wait_ms, _idle_fetch_wait_ms, _idle_after_s = active_ms, idle_ms, idle_after_s
    _fetch_min_bytes = min_bytes


def _create_worker_consumer(self, transport):
    consumer = _original(self, transport)
    active = _fetch_max_wait_ms
    consumer._fetch_max_wait_ms = active
    consumer._fetch_min_bytes = _fetch_min_bytes
    if _idle_fetch_wait_ms > active:
        start = consumer.start

        async def start_adaptive():
            await start()
            consumer._fetcher._llmpipe_wait = AdaptiveWait(active, _idle_fetch_wait_ms,
                                                           _idle_after_s)
        consumer.start = start_adaptive
    return consumer


class AdaptiveWait:
    """The short wait after a fetch that brought records, the long one once none came for
    ``idle_after_s`` (aiokafka reads ``_fetch_max_wait_ms`` for every fetch it builds)."""

    def __init__(self, active_ms: int, idle_ms: int, idle_after_s: float):
        self.active_ms, self.idle_ms, self.idle_after_s = active_ms, idle_ms, idle_after_s
        self.last_data = time.monotonic()

    def after_fetch(self, fetcher, got_records: bool) -> None:
        now = time.monotonic()
        if got_records:
            self.last_data = now
            fetcher._fetch_max_wait_ms = self.active_ms
        elif now - self.last_data > self.idle_after_s:
            fetcher._fetch_max_wait_ms = self.idle_ms


async def _proc_fetch_request(self, assignment, node_id, request):
    got = await _original_proc_fetch_request(self, assignment, node_id, request)
    wait = getattr(self, "_llmpipe_wait", None)
    if wait is not None:
        wait.after_fetch(self, got)
    return got


async def _real_highwaters(self, *partitions):
    """End offsets for Faust's table recovery, read to the last record (clients.end_offsets)."""
    ends = await _highwaters(self, *partitions)
    if self.in_transaction:
        return ends
    bootstrap = [f"{url.host}:{url.port or 9092}" for url in self.app.conf.broker]
    return await clients.end_offsets(bootstrap, list(partitions), reported=dict(ends))


async def seek_to_committed(self: AIOKafkaConsumer, *partitions):
    committed = await _seek_to_committed(self, *partitions)
    # only the pipeline's own topics: table changelogs are positioned by Faust's recovery,
    # which keeps its own offsets, and the assignor's topic is not data
    never = [tp for tp, offset in committed.items() if not offset
             and not tp.topic.endswith(("-changelog", "__leader"))]
    if never:
        await self.seek_to_beginning(*never)
        log.info("rewound_uncommitted partitions=%s", ",".join(
            f"{tp.topic}[{tp.partition}]" for tp in sorted(never)))
    return committed


def _in_fetcher(consumer: FaustConsumer, method: str, tps: list) -> None:
    """Apply aiokafka's ``pause`` or ``resume`` to ``tps`` in the consumer thread's loop
    (aiokafka's pause makes a future of that loop), after whatever was queued before it;
    partitions no longer assigned by then are left out."""
    if not tps:
        return
    wanted = [TopicPartition(tp.topic, tp.partition) for tp in tps]

    def apply(client: AIOKafkaConsumer) -> None:
        assigned = client.assignment()
        mine = [tp for tp in wanted if tp in assigned]
        if mine:
            getattr(client, method)(*mine)
    redelivery.in_consumer_thread(consumer, apply)


def pause_partitions(self: FaustConsumer, tps: Iterable) -> None:
    tps = list(tps)
    _faust_pause(self, tps)
    _in_fetcher(self, "pause", tps)


def resume_partitions(self: FaustConsumer, tps: Iterable) -> None:
    tps = list(tps)
    _faust_resume(self, tps)
    _in_fetcher(self, "resume", tps)


async def verify_all_partitions_active(self: FaustConsumer) -> None:
    """Faust's livelock check of every assigned partition (``verify_event_path`` logs a
    stalled stream), yielding every ``_CHECKS_PER_YIELD`` partitions instead of before each."""
    now = time.monotonic()
    for n, tp in enumerate(self.assignment()):
        if n and not n % _CHECKS_PER_YIELD:
            await asyncio.sleep(0)
        if self.should_stop:
            return
        self.verify_event_path(now, tp)


def fetching(consumer: FaustConsumer | None) -> dict[str, int] | None:
    """Assigned partitions aiokafka fetches now (not paused), table changelogs apart, for
    the health view; None without a threaded aiokafka consumer."""
    client = getattr(getattr(consumer, "_thread", None), "_consumer", None)
    if client is None:
        return None
    live = client.assignment() - client.paused()
    changelogs = sum(tp.topic.endswith("-changelog") for tp in live)
    return {"streams": len(live) - changelogs, "changelogs": changelogs}


faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
faust_aiokafka.Consumer.highwaters = _real_highwaters
FaustConsumer.pause_partitions = pause_partitions
FaustConsumer.resume_partitions = resume_partitions
FaustConsumer.verify_all_partitions_active = verify_all_partitions_active
AIOKafkaConsumer.seek_to_committed = seek_to_committed
Fetcher._proc_fetch_request = _proc_fetch_request
