"""One request flowing end to end on the embedded stack: Kafka -> intake -> dispatch ->
provider simulator over HTTP -> one Response and one usage row in ClickHouse."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaConsumer

from pipeline.catalog import load_catalog, nanos_to_usd
from pipeline.agents.inline import batches_partition
from pipeline.client import GatewayClient, make_request
from pipeline.events.codec import Codec
from pipeline.events.models import Chunk, DeadLetter, Response, RoutingHints
from pipeline.kafka.clients import read_to_end
from pipeline.kafka.topics import faust_partitions, load_topic_specs

catalog = load_catalog()
codec = Codec()
TIMEOUT = 60


async def test_three_tenants_each_request_one_response_one_exact_usage_row(pipeline_stack):
    stack = pipeline_stack
    prompts = ["Translate 'good morning' into Spanish.", "总结一下这段话：物流延迟三天。",
               "Analyse the architecture trade-offs of sharding a ledger by tenant."]
    requests = [make_request(tenant, prompts[i % 3], team="t", max_tokens=128,
                             model=["gpt-4", None, "deepseek-chat"][i % 3])
                for i, tenant in enumerate(["acme", "globex", "initech"] * 10)]
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        responses = await asyncio.gather(*(gw.request(r, timeout=TIMEOUT) for r in requests))
    by_id = {r.request_id: r for r in responses}
    assert set(by_id) == {r.request_id for r in requests}
    assert all(r.status == "ok" and r.content for r in responses), [r.error for r in responses]
    for req in requests:
        assert by_id[req.request_id].tenant == req.tenant      # never another tenant's answer

    worker = stack.workers[0]
    ids = [r.request_id for r in requests]
    counts = worker.wait_for_usage(ids)
    assert counts == {rid: 1 for rid in ids}
    rows = worker.usage_rows(ids)
    assert len(rows) == len(ids)
    for row in rows:
        expected = catalog.cost_nanos(row["served_model"], row["prompt_tokens"],
                                      row["completion_tokens"], row["cached_tokens"])
        assert Decimal(row["cost_usd"]) == nanos_to_usd(expected), row
        assert by_id[row["request_id"]].cost_nanos == expected
        assert row["price_version"] == catalog.price_version and row["status"] == "ok"

    # What a failing test prints for a request that went astray: its path over the topics.
    # Batched: through llm.routed and llm.batches; a request that found its deployment quiet
    # (a burst's first few) skips the window and is dispatched in intake.
    batched = ("llm.requests", "llm.routed", "llm.batches", "llm.responses", "llm.usage")
    shapes = {tuple(step.split("[", 1)[0].removeprefix(stack.topics.prefix) for step in path)
              for path in stack.trail(ids).values()}
    assert batched in shapes and shapes <= {batched, ("llm.requests", "llm.responses",
                                                      "llm.usage")}, shapes


async def test_interactive_is_dispatched_in_intake_one_response_one_usage_no_batches_hop(
        pipeline_stack):
    """An interactive request skips llm.batches too: intake dispatches it in the same step
    (pipeline/agents/inline.py). A burst of standard ones to the same deployment is batched
    (its first few may find the deployment quiet and skip the window), and its Batches land
    on the partition intake computed for the deployment (its ownership test)."""
    stack = pipeline_stack
    interactive = [make_request(tenant, f"Quick: what is {i} + {i}?", model="deepseek-chat",
                                max_tokens=16, hints=RoutingHints(priority="interactive"))
                   for i, tenant in enumerate(["acme", "globex"] * 5)]
    standard = [make_request("acme", f"Summarise: parcel {i} is late.", model="deepseek-chat",
                             max_tokens=16) for i in range(8)]      # a burst: mostly batched
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        responses = await asyncio.gather(*(gw.request(r, timeout=TIMEOUT)
                                           for r in interactive + standard))
        duplicates = gw.duplicates_dropped
    assert all(r.status == "ok" and r.content for r in responses), [r.error for r in responses]
    assert [r.tenant for r in responses] == [r.tenant for r in interactive + standard]
    assert duplicates == 0
    ids = [r.request_id for r in interactive + standard]
    assert stack.workers[0].wait_for_usage(ids) == {rid: 1 for rid in ids}

    trails = stack.trail(ids)
    for r in interactive:
        hops = [step.split("[", 1)[0].removeprefix(stack.topics.prefix)
                for step in trails[r.request_id]]
        assert hops == ["llm.requests", "llm.responses", "llm.usage"], trails[r.request_id]
    batch = next(step for r in standard for step in trails[r.request_id]
                 if "llm.batches[" in step)
    partition = int(batch.split("[", 1)[1].split("]", 1)[0])
    deployment = batch.split()[3]             # "<topic>[p]@o batch <id> <deployment> ..."
    count = faust_partitions(load_topic_specs())["llm.batches"]
    assert partition == batches_partition(deployment, count), batch


def test_a_ready_worker_fetches_its_streams_not_the_changelogs_it_writes(pipeline_stack):
    """Faust's pause reaches aiokafka (pipeline/kafka/faust_tuning.py): once recovered, a
    lone worker (no standby replicas to keep) fetches none of its table changelogs, which
    it used to fetch back and drop, record by record."""
    body = pipeline_stack.workers[0].health()
    fetching = body["fetching_partitions"]
    assert fetching["changelogs"] == 0, body
    assert 0 < fetching["streams"] < body["assigned_partitions"], body


async def test_bad_inputs_end_in_dead_letters_or_error_responses_and_good_ones_complete(pipeline_stack):
    stack = pipeline_stack
    topics = stack.topics
    good = [make_request("acme", f"valid request {i}", max_tokens=32) for i in range(4)]
    unknown_model = make_request("acme", "hi", model="gpt-17")
    negative = make_request("acme", "hi", max_tokens=-5)
    missing_field_id = str(uuid.uuid4())
    garbage = b"\x13\x37this is not an event"
    missing_field = json.dumps({"request_id": missing_field_id, "tenant": "acme"}).encode()
    async with GatewayClient(stack.bootstrap, topics) as gw:
        waited = good + [unknown_model, negative]
        for r in waited:
            gw.expect(r)
        sequence = [gw.encode(good[0]), garbage, gw.encode(good[1]), missing_field,
                    gw.encode(good[2]), codec.encode_json(unknown_model), gw.encode(good[3]),
                    gw.encode(negative)]
        await stack.publish_raw([(topics.requests, b"acme", value) for value in sequence])
        results = {r.request_id: await gw.wait(r, TIMEOUT) for r in waited}

    assert all(results[r.request_id].status == "ok" for r in good)
    bad_model = results[unknown_model.request_id]
    assert bad_model.status == "error" and bad_model.error.code == "unknown_model"
    assert "gpt-17" in bad_model.error.message
    bad_tokens = results[negative.request_id]
    assert bad_tokens.error.code == "invalid_request" and "max_tokens" in bad_tokens.error.message

    letters = await read_all(stack.bootstrap, topics.dead_letter, DeadLetter, expect=2)
    by_value = {dl.value: dl for dl in letters}
    assert by_value[garbage].reason_code == "undecodable" and "magic byte" in by_value[garbage].reason
    assert by_value[garbage].source_topic == topics.requests
    missing = by_value[missing_field]
    assert missing.reason_code == "schema_violation" and "messages" in missing.reason
    assert missing.request_id == missing_field_id


async def test_poison_usage_event_is_dead_lettered_and_the_ledger_keeps_going(pipeline_stack):
    stack = pipeline_stack
    poison = b"\x00\x00\x00\x00\x01 not a usage event"
    await stack.publish_raw([(stack.topics.usage, b"acme", poison)])
    after = make_request("acme", "still billed after the poison?", max_tokens=16)
    async with GatewayClient(stack.bootstrap, stack.topics) as gw:
        assert (await gw.request(after, timeout=TIMEOUT)).status == "ok"
    worker = stack.workers[0]
    assert worker.wait_for_usage([after.request_id]) == {after.request_id: 1}
    assert worker.alive()
    letters = await read_all(stack.bootstrap, stack.topics.dead_letter, DeadLetter, expect=3)
    (dl,) = [d for d in letters if d.value == poison]
    assert dl.agent == "ledger" and dl.source_topic == stack.topics.usage
    assert dl.reason_code == "unknown_schema" and "schema id 1" in dl.reason


async def read_all(bootstrap: str, topic: str, cls, expect: int, timeout: float = 30.0):
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < expect:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out += [codec.decode(r.value, cls) for r in records]
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return out


async def test_plain_json_bytes_get_a_json_response(pipeline_stack):
    """Exactly what the README's kcat command puts on the topic: a JSON line, keyed by tenant."""
    stack = pipeline_stack
    rid = str(uuid.uuid4())
    line = json.dumps({"request_id": rid, "tenant": "json-tenant",
                       "messages": [{"role": "user", "content": "Say hello in Chinese."}],
                       "params": {"max_tokens": 64}}).encode()
    await stack.publish_raw([(stack.topics.requests, b"json-tenant", line)])
    consumer = AIOKafkaConsumer(stack.topics.responses, bootstrap_servers=stack.bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found = None
    try:
        async with asyncio.timeout(TIMEOUT):
            while found is None:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found = next((r for r in records if r.key == rid.encode()), found)
    finally:
        await consumer.stop()
    assert found.value[:1] == b"{"                       # JSON in, JSON out
    response = json.loads(found.value)
    assert response["request_id"] == rid and response["status"] == "ok"
    assert response["tenant"] == "json-tenant"


KCAT = [sys.executable, "-m", "pipeline.cli", "kcat"]


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat (Debian package) is not installed")
def test_plain_json_from_kcat_gets_a_json_response(pipeline_stack):
    """The README's commands: kcat produces a JSON line keyed by tenant; the JSON response
    arrives on llm.responses keyed by the request id."""
    stack = pipeline_stack
    rid = str(uuid.uuid4())
    body = json.dumps({"request_id": rid, "tenant": "kcat-tenant",
                       "messages": [{"role": "user", "content": "Say hello in Chinese."}],
                       "params": {"max_tokens": 64}})
    subprocess.run([*KCAT, "-P", "-b", stack.bootstrap, "-t", stack.topics.requests, "-K", "\t",
                    "-X", "topic.partitioner=murmur2_random"],
                   input=f"kcat-tenant\t{body}\n", text=True, check=True, timeout=30)
    seen = None
    deadline = time.monotonic() + TIMEOUT
    while seen is None and time.monotonic() < deadline:
        out = subprocess.run([*KCAT, "-C", "-b", stack.bootstrap, "-t", stack.topics.responses,
                              "-o", "beginning", "-e", "-q", "-f", "%k\t%s\n"],
                             capture_output=True, timeout=30)      # other replies are Avro: bytes
        assert out.returncode == 0, out.stderr
        lines = out.stdout.decode("utf-8", "replace").splitlines()
        seen = next((line for line in lines if line.startswith(rid)), None)
        if seen is None:
            time.sleep(0.5)
    assert seen is not None, "no response for the kcat request"
    response = json.loads(seen.split("\t", 1)[1])      # the reply is JSON, like the request
    assert response["request_id"] == rid and response["status"] == "ok"
    assert Response.from_dict(response).tenant == "kcat-tenant"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4.5"])
async def test_a_kafka_caller_streams_chunks_then_the_response(pipeline_stack, model):
    """stream=True over Kafka: the SDK yields the answer's Chunks in order as dispatch
    publishes them, then the Response, whose text they add up to; one usage row."""
    stack = pipeline_stack
    async with GatewayClient(stack.bootstrap, stack.topics, streams=True) as gw:
        req = make_request("acme", "Tell me about the sea in three sentences.", model=model,
                           max_tokens=80)
        events = [e async for e in gw.stream(req, timeout=TIMEOUT)]
    *chunks, response = events
    assert isinstance(response, Response) and response.status == "ok", response
    assert chunks and [c.seq for c in chunks] == list(range(len(chunks)))
    assert len({c.stream_id for c in chunks}) == 1
    if chunks[0].stream_id == "response":
        # The Response overtook every chunk: they travel on two topics, and a loaded machine
        # can deliver the responses partition first (the SDK then yields the text as one
        # chunk made from the Response, as documented). Dispatch must still have streamed.
        published = [Codec().decode(r.value, Chunk)
                     for r in await read_to_end(stack.bootstrap, stack.topics.chunks)]
        mine = [c for c in published if c.request_id == req.request_id]
        assert mine and all(c.stream_id != "response" for c in mine), \
            "dispatch published no chunks of its own"
    assert "".join(c.delta for c in chunks) == response.content
    counts = stack.workers[0].wait_for_usage([req.request_id])
    assert counts[req.request_id] == 1
