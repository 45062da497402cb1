"""Declared topics against the embedded broker: created as declared, re-applied as a no-op,
drift reported and never "fixed", and usable for a produce/consume round trip.

Each test works under its own topic prefix. Every wait is bounded by asyncio.timeout.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pipeline.embedded import BrokerStartError, EmbeddedBroker, free_port
from pipeline.kafka.topics import (
    Drift,
    TopicsError,
    apply_topics,
    load_topic_specs,
    prefixed,
)

pytestmark = pytest.mark.integration

WAIT = 15.0     # seconds; the embedded broker answers in milliseconds


@asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    async with asyncio.timeout(WAIT):
        await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def partition_counts(bootstrap: str, prefix: str) -> dict[str, int]:
    """Partitions per topic under ``prefix``, from a metadata request for all topics (naming
    a missing topic would make the embedded broker auto-create it)."""
    async with admin_client(bootstrap) as admin, asyncio.timeout(WAIT):
        topics = await admin.describe_topics()
    return {t["topic"]: len(t["partitions"]) for t in topics if t["topic"].startswith(prefix)}


async def topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    async with admin_client(bootstrap) as admin, asyncio.timeout(WAIT):
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)])
    [resource] = response.to_object()["resources"]
    return {e["config_names"]: e["config_value"] for e in resource["config_entries"]}


async def test_apply_creates_every_declared_topic_with_its_partition_count(broker, topic_prefix):
    specs = prefixed(load_topic_specs(), topic_prefix)

    report = await apply_topics(broker.bootstrap, specs, timeout=WAIT)

    assert report.ok, report.format()
    assert sorted(report.created) == sorted(s.name for s in specs)
    assert report.unchanged == [] and report.drift == []
    assert await partition_counts(broker.bootstrap, topic_prefix) == \
        {s.name: s.partitions for s in specs}
    # Declared configs travel with CreateTopics (Tansu stores them, though it does not
    # enforce compaction or retention).
    configs = await topic_configs(broker.bootstrap, f"{topic_prefix}llm.tenants")
    assert configs["cleanup.policy"] == "compact"
    assert configs["retention.ms"] == "-1"


async def test_reapply_reports_every_topic_unchanged(broker, topic_prefix):
    specs = prefixed(load_topic_specs(), topic_prefix)
    await apply_topics(broker.bootstrap, specs, timeout=WAIT)

    again = await apply_topics(broker.bootstrap, specs, timeout=WAIT)

    assert again.ok, again.format()
    assert again.created == [] and again.drift == []
    assert sorted(again.unchanged) == sorted(s.name for s in specs)
    assert again.configs_not_checked == []
    assert f"0 created, {len(specs)} unchanged, 0 drifted" in again.format()


async def test_existing_topic_with_wrong_partition_count_is_drift_and_left_alone(
        broker, topic_prefix):
    specs = prefixed(load_topic_specs(), topic_prefix)
    usage = next(s for s in specs if s.name.endswith("llm.usage"))
    async with admin_client(broker.bootstrap) as admin, asyncio.timeout(WAIT):
        await admin.create_topics([NewTopic(usage.name, 2, 1, topic_configs=dict(usage.config))])

    report = await apply_topics(broker.bootstrap, specs, timeout=WAIT)

    assert not report.ok
    assert report.drift == [Drift(usage.name, "partitions", str(usage.partitions), "2")]
    assert usage.name not in report.created + report.unchanged
    assert sorted(report.created) == sorted(s.name for s in specs if s is not usage)
    assert f"DRIFT      {usage.name}: partitions is 2, declared {usage.partitions}" in report.format()
    # apply never alters: the topic keeps its 2 partitions
    assert (await partition_counts(broker.bootstrap, topic_prefix))[usage.name] == 2


async def test_existing_topic_with_wrong_cleanup_policy_is_drift(broker, topic_prefix):
    specs = prefixed(load_topic_specs(), topic_prefix)
    tenants = next(s for s in specs if s.name.endswith("llm.tenants"))
    async with admin_client(broker.bootstrap) as admin, asyncio.timeout(WAIT):
        await admin.create_topics([NewTopic(tenants.name, tenants.partitions, 1,
                                            topic_configs={"cleanup.policy": "delete"})])

    report = await apply_topics(broker.bootstrap, specs, timeout=WAIT)

    assert set(report.drift) == {
        Drift(tenants.name, "cleanup.policy", "compact", "delete"),
        # Tansu reports only configs set at creation, so the missing one reads "not set"
        Drift(tenants.name, "retention.ms", "-1", "not set"),
    }
    assert report.drifted == [tenants.name]


async def test_keyed_round_trip_on_a_created_topic(broker, topic_prefix):
    specs = prefixed(load_topic_specs(), topic_prefix)
    await apply_topics(broker.bootstrap, specs, timeout=WAIT)
    topic = f"{topic_prefix}llm.requests"

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    async with asyncio.timeout(WAIT):
        await producer.start()
        try:
            sent = await producer.send_and_wait(topic, key=b"tenant-a", value=b"hello")
        finally:
            await producer.stop()
    assert 0 <= sent.partition < 6

    # assign(), not a consumer group: the round trip, not the group join, is under test
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    received = []
    async with asyncio.timeout(WAIT):
        await consumer.start()
        try:
            tp = TopicPartition(topic, sent.partition)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while not received:
                batch = await consumer.getmany(tp, timeout_ms=500)
                received += batch.get(tp, [])
        finally:
            await consumer.stop()
    assert [(m.key, m.value, m.offset) for m in received] == [(b"tenant-a", b"hello", sent.offset)]


async def test_apply_against_no_broker_fails_clearly(topic_prefix):
    port = free_port()          # nothing listens here
    specs = prefixed(load_topic_specs(), topic_prefix)
    async with asyncio.timeout(WAIT):
        with pytest.raises(TopicsError, match=f"cannot apply topics on 127.0.0.1:{port}"):
            await apply_topics(f"127.0.0.1:{port}", specs, timeout=5.0)


# -- the broker fixture itself ----------------------------------------------------------

def test_broker_stop_kills_the_process_and_frees_the_port():
    broker = EmbeddedBroker().start()
    pid, port = broker.pid, broker.port
    assert broker.startup_seconds is not None and broker.startup_seconds < 5.0

    broker.stop()

    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))      # would raise EADDRINUSE if still held
    broker.stop()                            # idempotent


def test_broker_on_a_taken_port_fails_with_its_log(broker):
    intruder = EmbeddedBroker(port=broker.port, startup_timeout=5.0)
    with pytest.raises(BrokerStartError) as err:
        intruder.start()
    # Tansu logs AddrInUse and exits; the session broker's answer is not mistaken for its own
    assert "AddrInUse" in str(err.value)
    assert not intruder.running
    assert intruder.log_path is not None and intruder.log_path.exists()
    intruder.log_path.unlink()
    assert broker.running


def test_broker_dies_with_its_parent_process(tmp_path):
    """No orphan even when the parent is SIGKILLed (atexit cannot run then)."""
    script = ("import sys, time; from pipeline.embedded import EmbeddedBroker; "
              "b = EmbeddedBroker(log_path=sys.argv[1]).start(); print(b.pid, flush=True); "
              "time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "broker.log")], stdout=subprocess.PIPE, env=env)
    try:
        ready, _, _ = select.select([parent.stdout], [], [], WAIT)
        line = parent.stdout.readline() if ready else b""
        assert line, "the child did not start a broker"
        broker_pid = int(line)
    finally:
        parent.kill()
        parent.wait(10)
        parent.stdout.close()
    deadline = time.monotonic() + 5.0
    while _alive(broker_pid):
        if time.monotonic() > deadline:
            os.kill(broker_pid, signal.SIGKILL)
            pytest.fail(f"broker pid {broker_pid} outlived its SIGKILLed parent")
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie awaiting a reaper that may never come."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
