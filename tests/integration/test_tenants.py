"""Tenant policies on the embedded broker: a published policy reaches every running
directory without a restart, tombstones delete, a garbage record is skipped while later
ones apply, a directory outlives a missing broker, and `llmpipe tenants` round-trips.

Each test has its own topic prefix; every wait is for a condition, bounded by WAIT.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaProducer

from pipeline.embedded import EmbeddedBroker, free_port
from pipeline.events.codec import Codec
from pipeline.events.models import Budget, CanaryRule, TenantPolicy
from pipeline.kafka.topics import apply_topics, load_topic_specs, prefixed
from pipeline.tenancy.directory import (TenantDirectory, TenantTopicMissing, delete_policy,
                                        put_policy, read_policies)

pytestmark = pytest.mark.integration

WAIT = 15.0     # seconds; the embedded broker answers in milliseconds
codec = Codec()


def create_tenants_topic(bootstrap: str, prefix: str) -> str:
    [spec] = [s for s in prefixed(load_topic_specs(), prefix) if s.name.endswith("llm.tenants")]
    report = asyncio.run(apply_topics(bootstrap, [spec], timeout=WAIT))
    assert report.ok, report.format()
    return spec.name


@pytest.fixture
def topic(broker, topic_prefix) -> str:
    return create_tenants_topic(broker.bootstrap, topic_prefix)


@pytest.fixture
async def directory(broker, topic) -> AsyncIterator[TenantDirectory]:
    changes: list[tuple[str, TenantPolicy | None]] = []
    d = TenantDirectory(broker.bootstrap, topic, codec,
                        on_change=lambda tenant, policy: changes.append((tenant, policy)))
    d.changes = changes
    await d.start()
    try:
        assert await d.wait_ready(WAIT)
        yield d
    finally:
        await d.stop()


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def put(broker, topic: str, policy: TenantPolicy) -> TenantPolicy:
    return await put_policy(broker.bootstrap, topic, codec, policy, timeout_s=WAIT)


async def test_a_published_policy_and_its_updates_apply_live(broker, topic, directory):
    v1 = await put(broker, topic, TenantPolicy("acme", budgets=[Budget("month", hard_usd=Decimal("100"))]))
    assert v1.updated_at_ms > 0                      # stamped by the writer
    await until(lambda: directory.get("acme") == v1, "the first policy")

    v2 = await put(broker, topic, v1.replace(
        budgets=[Budget("month", soft_usd=Decimal("80"), hard_usd=Decimal("120.5"))],
        canary=CanaryRule("flash", 10, "gemini-2.5-flash")))
    await until(lambda: directory.get("acme") == v2, "the updated policy")

    assert directory.get("acme").budgets[0].hard_usd == Decimal("120.5")
    assert directory.snapshot() == {"acme": v2}
    assert directory.changes == [("acme", v1), ("acme", v2)]
    assert directory.get("nobody") is None


async def test_a_tombstone_deletes_live_and_for_a_directory_started_later(broker, topic, directory):
    a = await put(broker, topic, TenantPolicy("a", denied_models=["gpt-4o"]))
    b = await put(broker, topic, TenantPolicy("b", allowed_models=["deepseek-v3.2"]))
    await until(lambda: directory.snapshot() == {"a": a, "b": b}, "both policies")

    await delete_policy(broker.bootstrap, topic, "a", timeout_s=WAIT)
    await until(lambda: directory.get("a") is None, "the tombstone of a")
    assert directory.snapshot() == {"b": b}
    assert directory.changes[-1] == ("a", None)

    # a worker starting now replays the topic: once ready it has exactly the live policies
    late = TenantDirectory(broker.bootstrap, topic, codec)
    await late.start()
    try:
        assert await late.wait_ready(WAIT)
        assert late.snapshot() == {"b": b}
    finally:
        await late.stop()
    assert await read_policies(broker.bootstrap, topic, codec, WAIT) == {"b": b}


async def test_a_garbage_record_is_logged_and_skipped_and_later_records_apply(
        broker, topic, directory, caplog):
    caplog.set_level(logging.WARNING, logger="llmpipe.tenants")
    v1 = await put(broker, topic, TenantPolicy("acme", cache_ttl_s=60))
    await until(lambda: directory.get("acme") == v1, "the first policy")

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    async with asyncio.timeout(WAIT):
        await producer.start()
        try:
            garbage = await producer.send_and_wait(topic, key=b"acme", value=b"\x07not avro")
            impostor = await producer.send_and_wait(
                topic, key=b"acme", value=codec.encode(TenantPolicy("evil", cache_ttl_s=1), topic))
        finally:
            await producer.stop()
    marker = await put(broker, topic, TenantPolicy("marker"))
    await until(lambda: directory.get("marker") == marker, "a record published after the garbage")

    assert directory.get("acme") == v1                  # the previous policy stays
    assert directory.skipped == 2
    skipped = [r.getMessage() for r in caplog.records if "tenant_policy_undecodable" in r.getMessage()]
    assert len(skipped) == 2
    assert (f"tenant=acme partition={garbage.partition} offset={garbage.offset} "
            "reason=undecodable: unknown magic byte 0x07") in skipped[0]
    assert f"offset={impostor.offset}" in skipped[1] and "'evil', not its key" in skipped[1]

    v2 = await put(broker, topic, v1.replace(cache_ttl_s=120))
    await until(lambda: directory.get("acme") == v2, "a good record after the garbage")


async def test_a_directory_outlives_a_missing_broker_and_never_creates_the_topic(topic_prefix):
    port = free_port()                                  # nothing listens here yet
    bootstrap = f"127.0.0.1:{port}"
    topic = f"{topic_prefix}llm.tenants"
    directory = TenantDirectory(bootstrap, topic, codec, retry_s=0.1, max_retry_s=0.5)
    await directory.start()
    try:
        assert not await directory.wait_ready(0.5)
        assert "KafkaConnectionError" in directory.problem and directory.get("acme") is None

        with EmbeddedBroker(port=port, startup_timeout=20.0) as late_broker:
            await until(lambda: "does not exist" in (directory.problem or ""),
                        "the directory to find the broker without the topic")
            with pytest.raises(TenantTopicMissing, match="llmpipe topics apply"):
                await read_policies(bootstrap, topic, codec, WAIT)
            with pytest.raises(TenantTopicMissing):
                await put_policy(bootstrap, topic, codec, TenantPolicy("acme"), timeout_s=WAIT)

            await asyncio.to_thread(create_tenants_topic, late_broker.bootstrap, topic_prefix)
            policy = await put_policy(bootstrap, topic, codec, TenantPolicy("acme"), timeout_s=WAIT)
            assert await directory.wait_ready(WAIT)
            await until(lambda: directory.get("acme") == policy, "the policy on the late broker")
            assert directory.problem is None
            await directory.stop()      # before the broker: it lingers while clients are connected
    finally:
        await directory.stop()


# --- the CLI, run as an operator would --------------------------------------------------

def llmpipe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


POLICY_YAML = """\
allowed_models: [gpt-4, deepseek-chat]
denied_models: [claude-3]
budgets:
  - {period: month, soft_usd: 80, hard_usd: "100.25"}
  - {period: day, team: search, hard_usd: 5}
canary: {name: ds-trial, percent: 20, model: deepseek-chat}
"""


def test_cli_set_get_list_delete_round_trip(broker, topic, topic_prefix, tmp_path):
    env = {"LLMPIPE_TOPIC_PREFIX": topic_prefix}
    at = ("--bootstrap", broker.bootstrap)
    policy_file = tmp_path / "acme.yaml"
    policy_file.write_text(POLICY_YAML)

    stored = llmpipe("tenants", "set", "acme", "--file", str(policy_file), *at, env=env)
    assert stored.returncode == 0, stored.stderr
    assert "- gpt-4.1\n- deepseek-v3.2\n" in stored.stdout          # aliases normalised
    assert "hard_usd: '100.25'" in stored.stdout and "updated_at_ms: 1" in stored.stdout

    other = llmpipe("tenants", "set", "beta", "--json", '{"default_quality": 0.9}', *at, env=env)
    assert other.returncode == 0, other.stderr

    got = llmpipe("tenants", "get", "acme", "--format", "json", *at, env=env)
    assert got.returncode == 0, got.stderr
    policy = json.loads(got.stdout)
    assert policy["denied_models"] == ["claude-sonnet-4.5"]
    assert policy["budgets"][0] == {"period": "month", "team": None, "soft_usd": "80",
                                    "hard_usd": "100.25"}
    assert policy["canary"]["model"] == "deepseek-v3.2"

    # bootstrap from the environment, as every other command
    table = llmpipe("tenants", "list", env={**env, "LLMPIPE_KAFKA_BOOTSTRAP": broker.bootstrap})
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["TENANT", "BUDGETS", "ALLOWED", "DENIED", "CANARY"]
    assert lines[1].startswith("acme ") and "month soft $80 hard $100.25; day[search] hard $5" in lines[1]
    assert "gpt-4.1, deepseek-v3.2" in lines[1] and "ds-trial 20% -> deepseek-v3.2" in lines[1]
    assert lines[2].startswith("beta ") and " all " in lines[2]
    assert lines[3] == f"2 tenant(s) with a policy on {topic}"
    listed = llmpipe("tenants", "list", "--format", "json", *at, env=env)
    assert [p["tenant"] for p in json.loads(listed.stdout)] == ["acme", "beta"]

    deleted = llmpipe("tenants", "delete", "acme", *at, env=env)
    assert deleted.returncode == 0, deleted.stderr
    gone = llmpipe("tenants", "get", "acme", *at, env=env)
    assert gone.returncode == 1 and f"tenant acme has no policy on {topic}" in gone.stderr
    again = llmpipe("tenants", "delete", "acme", *at, env=env)
    assert again.returncode == 1 and "has no policy" in again.stderr
    assert json.loads(llmpipe("tenants", "list", "--format", "json", *at, env=env).stdout)[0][
        "tenant"] == "beta"


def test_cli_refuses_an_invalid_policy_and_publishes_nothing(broker, topic, topic_prefix):
    env = {"LLMPIPE_TOPIC_PREFIX": topic_prefix}
    at = ("--bootstrap", broker.bootstrap)

    bad = llmpipe("tenants", "set", "acme", "--json",
                  '{"budgets": [{"period": "day", "hard_usd": 1},'
                  ' {"period": "month", "soft_usd": 80, "hard_usd": 50}]}', *at, env=env)

    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == ("invalid policy for tenant acme: --json: "
                                  "budgets[1].hard_usd: must be >= soft_usd (50 < 80)")
    listed = llmpipe("tenants", "list", "--format", "json", *at, env=env)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_cli_without_the_topic_says_how_to_create_it(broker, topic_prefix):
    missing = llmpipe("tenants", "list", "--bootstrap", broker.bootstrap,
                      env={"LLMPIPE_TOPIC_PREFIX": topic_prefix})
    assert missing.returncode == 3
    assert f"topic {topic_prefix}llm.tenants does not exist" in missing.stderr
    assert "llmpipe topics apply" in missing.stderr


def test_cli_key_prints_a_key_once_and_stores_only_its_hash(broker, topic, topic_prefix):
    from pipeline.gateway.keys import hash_key

    env = {"LLMPIPE_TOPIC_PREFIX": topic_prefix}
    at = ("--bootstrap", broker.bootstrap)
    first = llmpipe("tenants", "key", "acme", *at, env=env)
    assert first.returncode == 0, first.stderr
    key1 = first.stdout.strip()
    assert key1.startswith("sk-llmp-") and "1 key(s) now" in first.stderr
    key2 = llmpipe("tenants", "key", "acme", *at, env=env).stdout.strip()
    stored = json.loads(llmpipe("tenants", "get", "acme", "--format", "json", *at, env=env).stdout)
    assert stored["api_keys"] == [hash_key(key1), hash_key(key2)]
    assert key1 not in json.dumps(stored) and key2 not in json.dumps(stored)
    third = llmpipe("tenants", "key", "acme", "--replace", *at, env=env)
    assert "1 key(s) now" in third.stderr
    stored = json.loads(llmpipe("tenants", "get", "acme", "--format", "json", *at, env=env).stdout)
    assert stored["api_keys"] == [hash_key(third.stdout.strip())]
