"""The live tenant-policy directory: every worker reads the whole compacted llm.tenants topic
(no consumer group: each partition from the beginning) and keeps the latest policy per
tenant in memory, so a policy published by ``llmpipe tenants set`` applies without a restart.

The last record per key wins and a tombstone (null value) deletes. A record that does not
decode is logged and skipped; the tenant keeps its previous policy. Connection trouble is
retried for as long as the directory runs: it never raises into the worker. The admin
helpers below (put, delete, read once) are what the CLI uses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord, RecordMetadata

from pipeline.clock import now_ms
from pipeline.events.codec import Codec, DecodeError
from pipeline.events.models import TenantPolicy
from pipeline.kafka import clients

log = logging.getLogger("llmpipe.tenants")

OnChange = Callable[[str, "TenantPolicy | None"], Any]


class TenantTopicMissing(LookupError):
    """The tenants topic does not exist (and must not be auto-created with the wrong layout)."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(f"topic {topic} does not exist on {bootstrap}: "
                         "create it with `llmpipe topics apply`")
        self.bootstrap, self.topic = bootstrap, topic


class TenantDirectory:
    """A read model of llm.tenants: ``get(tenant)`` is a dict lookup, safe on the hot path.

    ``on_change(tenant, policy_or_None)`` is called (synchronously, errors logged) whenever
    a tenant's policy is set, changed or deleted.
    """

    def __init__(self, bootstrap: str, topic: str, codec: Codec, *,
                 on_change: OnChange | None = None, retry_s: float = 1.0,
                 max_retry_s: float = 30.0, metadata_refresh_s: float = 30.0,
                 fetch_max_wait_ms: int = 500):
        self.bootstrap, self.topic, self.codec = bootstrap, topic, codec
        self.on_change = on_change
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self.metadata_refresh_s = metadata_refresh_s
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.skipped = 0                      # records that did not decode
        self.problem: str | None = None      # why the directory is not reading, if it is not
        self._policies: dict[str, TenantPolicy] = {}
        self._positions: dict[int, int] = {}         # partition -> next offset to apply
        self._targets: dict[int, int] | None = None  # end offsets seen at the first assignment
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None

    # --- the read side ---------------------------------------------------------------------

    def get(self, tenant: str) -> TenantPolicy | None:
        return self._policies.get(tenant)

    def snapshot(self) -> dict[str, TenantPolicy]:
        return dict(self._policies)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start reading in the background; returns at once (see ``wait_ready``)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"tenant-directory:{self.topic}")

    async def wait_ready(self, timeout_s: float) -> bool:
        """True once every partition has been read up to the end offsets it had when the
        directory first got hold of the topic; False if that took longer than ``timeout_s``."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    # --- the consuming loop ----------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.retry_s
        while True:
            consumer = None
            try:
                consumer = clients.consumer(
                    self.bootstrap, client_id="llmpipe-tenants",
                    fetch_max_wait_ms=self.fetch_max_wait_ms,
                    metadata_max_age_ms=int(self.metadata_refresh_s * 1000))
                await consumer.start()
                delay = self.retry_s
                await self._consume(consumer)
                continue        # the topic appeared: a fresh consumer learns its partitions
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # anything: the worker must keep running on old policies
                self.problem = f"{type(exc).__name__}: {exc}"
                log.warning("tenant_directory_error topic=%s bootstrap=%s error=%s retry_in_s=%.1f",
                            self.topic, self.bootstrap, self.problem, delay)
            finally:
                if consumer is not None:
                    await _stop_quietly(consumer)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_retry_s)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        """Read the topic until cancelled; return if the topic was missing at the start
        (the caller reconnects once it exists)."""
        partitions = consumer.partitions_for_topic(self.topic)  # from start()'s metadata
        if not partitions:
            await self._wait_for_topic(consumer)
            return
        while True:
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            if self._targets is None:
                # its own consumer, before assign(): a broker that answers one request per
                # connection at a time (Tansu) would queue this behind a long-polling fetch
                ends = await clients.end_offsets(self.bootstrap, tps)
                self._targets = {tp.partition: offset for tp, offset in ends.items()}
            consumer.assign(tps)
            for tp in tps:
                if tp.partition in self._positions:
                    consumer.seek(tp, self._positions[tp.partition])
            fresh = [tp for tp in tps if tp.partition not in self._positions]
            if fresh:
                await consumer.seek_to_beginning(*fresh)
            self.problem = None
            log.info("tenant_directory_reading topic=%s partitions=%d", self.topic, len(tps))
            while True:
                if not self._ready.is_set():
                    await self._check_ready(consumer, tps)
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, records in batch.items():
                    for record in records:
                        self._apply(record)
                    self._positions[tp.partition] = records[-1].offset + 1
                # refreshed every metadata_refresh_s for the assigned topic
                current = consumer.partitions_for_topic(self.topic) or set()
                if current - partitions:
                    log.info("tenant_directory_partitions_added topic=%s partitions=%d",
                             self.topic, len(current))
                    partitions = current
                    break           # re-assign, keeping the positions read so far

    async def _wait_for_topic(self, consumer: AIOKafkaConsumer) -> None:
        # Only ever ask for all topics: naming a missing one makes some brokers (Tansu,
        # auto.create.topics.enable) create it, uncompacted and with the wrong partitions.
        self.problem = str(TenantTopicMissing(self.bootstrap, self.topic))
        log.warning("tenant_directory_waiting topic=%s reason=%s", self.topic, self.problem)
        while True:
            await asyncio.sleep(self.retry_s)
            if self.topic in await consumer.topics():
                return

    async def _check_ready(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        targets = self._targets or {}
        for tp in tps:
            # the position also moves past offsets that hold no record (compaction gaps)
            position = await consumer.position(tp)
            self._positions[tp.partition] = max(self._positions.get(tp.partition, 0), position)
        if all(self._positions.get(p, 0) >= end for p, end in targets.items()):
            log.info("tenant_directory_ready topic=%s tenants=%d skipped=%d",
                     self.topic, len(self._policies), self.skipped)
            self._ready.set()

    def _apply(self, record: ConsumerRecord) -> None:
        where = f"partition={record.partition} offset={record.offset}"
        if record.key is None:
            self._skip("-", where, "record has no key (the key is the tenant id)")
            return
        tenant = record.key.decode("utf-8", errors="replace")
        if record.value is None:
            if self._policies.pop(tenant, None) is not None:
                log.info("tenant_policy_deleted tenant=%s %s", tenant, where)
                self._notify(tenant, None)
            return
        try:
            policy = self.codec.decode(record.value, TenantPolicy)
        except DecodeError as exc:
            self._skip(tenant, where, f"{exc.code}: {exc.reason}")
            return
        except Exception as exc:      # a codec bug must not stop the directory either
            self._skip(tenant, where, repr(exc))
            return
        if policy.tenant != tenant:
            self._skip(tenant, where, f"the policy is for tenant {policy.tenant!r}, not its key")
            return
        previous = self._policies.get(tenant)
        self._policies[tenant] = policy
        if previous != policy:
            log.log(logging.INFO if self._ready.is_set() else logging.DEBUG,
                    "tenant_policy_applied tenant=%s %s updated_at_ms=%d",
                    tenant, where, policy.updated_at_ms)
            self._notify(tenant, policy)

    def _skip(self, tenant: str, where: str, reason: str) -> None:
        self.skipped += 1
        log.warning("tenant_policy_undecodable tenant=%s %s reason=%s: the previous policy stays",
                    tenant, where, reason)

    def _notify(self, tenant: str, policy: TenantPolicy | None) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(tenant, policy)
        except Exception:
            log.exception("tenant_directory_on_change_failed tenant=%s", tenant)


async def _stop_quietly(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    try:
        await client.stop()
    except Exception as exc:
        log.debug("tenant_directory_stop_failed error=%r", exc)


# --- admin helpers (the CLI) ---------------------------------------------------------------

async def put_policy(bootstrap: str, topic: str, codec: Codec, policy: TenantPolicy, *,
                     timeout_s: float = 30.0, at_ms: int | None = None) -> TenantPolicy:
    """Publish ``policy`` (key: tenant id), stamped ``updated_at_ms`` = now (or ``at_ms``),
    and wait for the broker's ack. Returns the policy as stored."""
    stored = policy.replace(updated_at_ms=now_ms() if at_ms is None else at_ms)
    await _produce(bootstrap, topic, stored.tenant, codec.encode(stored, topic), timeout_s)
    return stored


async def delete_policy(bootstrap: str, topic: str, tenant: str, *, timeout_s: float = 30.0) -> None:
    """Publish the tenant's tombstone (null value): every directory forgets the policy, and
    compaction eventually drops it from the topic."""
    await _produce(bootstrap, topic, tenant, None, timeout_s)


async def read_policies(bootstrap: str, topic: str, codec: Codec,
                        timeout_s: float = 30.0) -> dict[str, TenantPolicy]:
    """Every tenant's current policy: the topic read once to its end.

    Raises TenantTopicMissing, or TimeoutError (naming the last problem seen) if the broker
    did not let the topic be read to its end in time."""
    async with asyncio.timeout(timeout_s):
        await _require_topic(bootstrap, topic)
    directory = TenantDirectory(bootstrap, topic, codec, retry_s=0.2)
    await directory.start()
    try:
        if not await directory.wait_ready(timeout_s):
            why = f": {directory.problem}" if directory.problem else ""
            raise TimeoutError(f"could not read {topic} on {bootstrap} to its end "
                               f"within {timeout_s:g}s{why}")
        return directory.snapshot()
    finally:
        await directory.stop()


async def _require_topic(bootstrap: str, topic: str) -> None:
    consumer = clients.consumer(bootstrap, client_id="llmpipe-tenants-admin")
    try:
        await consumer.start()
        if topic not in await consumer.topics():
            raise TenantTopicMissing(bootstrap, topic)
    finally:
        await _stop_quietly(consumer)


async def _produce(bootstrap: str, topic: str, tenant: str, value: bytes | None,
                   timeout_s: float) -> RecordMetadata:
    if not tenant:
        raise ValueError("the tenant id (the record key) must not be empty")
    # Not idempotent (clients.producer): a repeated policy record is harmless, the last one
    # per key wins.
    producer = clients.producer(bootstrap, client_id="llmpipe-tenants-admin")
    try:
        async with asyncio.timeout(timeout_s):
            await producer.start()
            cluster = await producer.client.fetch_all_metadata()
            if topic not in cluster.topics():
                raise TenantTopicMissing(bootstrap, topic)
            return await producer.send_and_wait(topic, key=tenant.encode(), value=value)
    finally:
        await _stop_quietly(producer)
