"""Property-based fuzzing of llm.requests on the embedded stack: whatever hostile records a
producer writes, every record ends in exactly one outcome and no valid neighbour is lost.

Hypothesis generates bursts of hostile records — garbage bytes, broken Avro and JSON,
schema violations, out-of-range numbers, strings that are not Unicode, hostile names,
foreign and invalid reply topics, wrong keys and partitions, oversize bodies, repeated
records — mixed with valid requests of the same tenants, pinned to the same deployments
(so they share partitions and micro-batches). Each burst is produced at once; then:

- every record has exactly one outcome: a Response for its request id (answer, error, or
  duplicate notice) or a DeadLetter naming it (by request id, or by source partition and
  offset when its bytes are not a request);
- every request that got a Response other than a duplicate notice has one usage row;
- every valid neighbour is answered ``ok``; the worker is alive at the end.

Runs ``EXAMPLES`` bursts of ``HOSTILE`` hostile records and ``NEIGHBOURS`` valid ones
(1,100 records by default; LLMPIPE_FUZZ_EXAMPLES scales it). Derandomized so CI sees the
same records every run; LLMPIPE_FUZZ_RANDOM=1 explores new ones. No shrinking: each burst
needs the live stack, so a failure lists the records involved instead.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass

import pytest
from aiokafka import TopicPartition
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from pipeline.client import make_request
from pipeline.events.codec import Codec, DecodeError
from pipeline.events.models import DeadLetter, Request, Response
from pipeline.kafka import clients
from pipeline.intake.validation import tenant_partition
from tests.integration.conftest import worker_stack

codec = Codec()
EXAMPLES = int(os.environ.get("LLMPIPE_FUZZ_EXAMPLES", "10"))
HOSTILE, NEIGHBOURS = 100, 10
TENANTS = ["fz-a", "fz-b", "fz-c"]
MODELS = ["deepseek-chat", "gemini-pro", "gpt-4"]
PARTITIONS = 6                       # llm.requests (topics.yaml, tenant group)
OUTCOME_TIMEOUT = 90.0
REQUEST_PATH_AGENTS = {"intake", "batcher", "dispatch"}   # a ledger dead letter is about a row


# --- hostile values ------------------------------------------------------------------------

lone_surrogate = st.characters(categories=["Cs"])
control = st.characters(categories=["Cc", "Cf"])
weird_text = st.one_of(
    st.text(max_size=40),
    st.text(st.one_of(st.characters(), lone_surrogate, control), max_size=40),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=10), lone_surrogate, st.text(max_size=10)),
    st.sampled_from(["", " ", "*", "\x00", "\x1f", "x" * 300, "名" * 200, "a\nb", "\u202e", "ok"]),
)
hostile_name = st.one_of(st.sampled_from(TENANTS), weird_text)
extreme_int = st.one_of(
    st.integers(-2**63, 2**63 - 1),
    st.sampled_from([-2**63, 2**63 - 1, 2**62, -2**62, 10**15, -10**15, 0, -1, 2**31, -2**31]),
)
hostile_float = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                          st.sampled_from([-1.0, 2.5, 1e308, math.nan, math.inf]))
reply_topic = st.one_of(st.none(), st.sampled_from(["not a topic!!", "llm.usage", "llm.tenants",
                                                   "x" * 260, "", "..", "acme.replies"]),
                        weird_text)


class Record:
    """One record to produce (a plain class: its repr stays short in Hypothesis' reports)."""

    def __init__(self, kind: str, key: bytes | None, value: bytes, partition: int | None = None):
        self.kind, self.key, self.value = kind, key, value
        self.partition = partition    # None: the producer's partitioner (murmur2 of the key)

    def __repr__(self) -> str:
        return (f"Record({self.kind}, key={self.key[:40] if self.key else None!r}, "
                f"partition={self.partition}, value={self.value[:160]!r}{'...' if len(self.value) > 160 else ''})")


def request_dict(tenant: str, model: str | None) -> dict:
    return {"request_id": str(uuid.uuid4()), "tenant": tenant, "model": model,
            "messages": [{"role": "user", "content": "fuzz: name a colour"}],
            "params": {"max_tokens": 8}, "created_at_ms": int(time.time() * 1000)}


@st.composite
def mutated_json(draw) -> Record:
    """A JSON request with one to three hostile fields (JSON carries any value: a lone
    surrogate as \\udXXX, NaN, integers past 64 bits). One in five also breaks the schema
    (a dead letter); the rest decode and meet intake's bounds."""
    tenant = draw(st.sampled_from(TENANTS))
    data = request_dict(tenant, draw(st.sampled_from(MODELS)))
    typed = {
        "tenant": hostile_name,
        "team": weird_text, "end_user": weird_text, "model": weird_text,
        "created_at_ms": extreme_int,
        "reply_topic": reply_topic,
        "metadata": st.dictionaries(weird_text, weird_text, max_size=5) | st.just(
            {f"k{i}": "v" * 400 for i in range(80)}),
        "messages": st.one_of(
            st.just([]),
            st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "wizard",
                                                                     "assistant", "tool"]) | weird_text,
                                            "content": weird_text}), min_size=1, max_size=4),
            st.integers(1025, 1500).map(lambda n: [{"role": "user", "content": "x"}] * n),
            st.sampled_from([[{"role": "user", "content": "word " * 190_000}],        # ~950 KB
                             [{"role": "user", "content": "hi", "name": "b\u0007b"}]])),
        "params": st.fixed_dictionaries({}, optional={
            "max_tokens": extreme_int, "temperature": hostile_float,
            "top_p": hostile_float, "seed": extreme_int, "stop": st.lists(weird_text, max_size=20)}),
        "hints": st.fixed_dictionaries({}, optional={
            "priority": st.sampled_from(["interactive", "standard", "batch"]) | weird_text,
            "required_quality": hostile_float, "max_latency_ms": extreme_int,
            "budget_per_mtok": st.sampled_from(["1.5", "-3", 0.25, "0.000000001"])}),
    }
    untyped = {
        "surprise": st.just("an unknown field"),
        "request_id": st.sampled_from(["not-a-uuid", "", "{" + str(uuid.uuid4()) + "}"]),
        "messages": st.sampled_from([[{"role": "user"}], [{"role": "user", "content": 7}]]),
        "params": st.fixed_dictionaries({"max_tokens": st.just(2**70), "stop": st.just(42)}),
        "hints": st.fixed_dictionaries({"budget_per_mtok": st.sampled_from(["1e30", "NaN", "abc"])}),
    }
    for name in draw(st.lists(st.sampled_from(sorted(typed)), min_size=1, max_size=3, unique=True)):
        data[name] = draw(typed[name])
    if draw(st.integers(1, 5)) == 5:         # Hypothesis favours small values: 1 = typed
        name = draw(st.sampled_from(sorted(untyped)))
        data[name] = draw(untyped[name])
    raw = json.dumps(data, ensure_ascii=True, allow_nan=True).encode()
    key_choice = draw(st.sampled_from(["tenant"] * 6 + ["none", "other", "bytes"]))
    tenant_key = data["tenant"].encode("utf-8", "surrogatepass")
    key = {"tenant": tenant_key, "none": None, "other": b"fz-other",
           "bytes": draw(st.binary(max_size=16))}[key_choice]
    partition = None
    if draw(st.integers(1, 10)) == 10 and data["tenant"] in TENANTS:
        partition = (tenant_partition(data["tenant"], PARTITIONS) + 1) % PARTITIONS   # a wrong one
    return Record("json", key, raw, partition)


@st.composite
def mutated_avro(draw) -> Record:
    """A well-typed Avro request with hostile values, or its bytes corrupted."""
    tenant = draw(st.sampled_from(TENANTS))
    name = draw(st.one_of(st.sampled_from(TENANTS),
                          st.text(st.characters(exclude_categories=["Cs"]), max_size=300)))
    request = make_request(name, draw(st.text(st.characters(exclude_categories=["Cs"]), max_size=60)) or "x",
                           model=draw(st.sampled_from(MODELS)), max_tokens=8)
    request = request.replace(created_at_ms=draw(st.one_of(st.none(), extreme_int)),
                              team=draw(st.none() | st.text(st.characters(exclude_categories=["Cs"]), max_size=200)))
    raw = codec.encode(request, "llm.requests")
    if draw(st.booleans()):
        corrupt = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(corrupt) - 1))
            corrupt[i] = draw(st.integers(0, 255))
        raw = bytes(corrupt)
        return Record("avro-corrupt", tenant.encode(), raw)
    return Record("avro", name.encode(), raw)


garbage = st.one_of(
    st.binary(max_size=300).map(lambda b: Record("garbage", b"fz-a", b)),
    st.binary(min_size=5, max_size=120).map(lambda b: Record("bad-avro", b"fz-b", b"\x00" + b)),
    st.text(max_size=200).map(lambda t: Record("broken-json", b"fz-c", ("{" + t).encode("utf-8", "surrogatepass"))),
    st.builds(lambda n: Record("truncated-json", b"fz-a", json.dumps(request_dict("fz-a", None)).encode()[:n]),
              st.integers(1, 150)),
    st.just(Record("huge-garbage", b"fz-b", b"\x07" + b"\xfe" * 999_000)),
    st.just(Record("empty", b"fz-c", b"")),
)
# Mostly decodable requests with hostile values (the paths past the decoder), then Avro and
# plain garbage.
hostile = st.one_of(mutated_json(), mutated_json(), mutated_json(), mutated_avro(), garbage)


def neighbour(tenant: str, model: str) -> Request:
    return make_request(tenant, f"valid neighbour of {tenant}: name a fruit.", model=model,
                        max_tokens=8)


# --- outcomes ------------------------------------------------------------------------------

async def end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = clients.consumer(bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for topic in topics
               for p in sorted(await clients.partitions_of(consumer, topic))]
        return await clients.end_offsets(bootstrap, tps)     # the broker's own answer falls short
    finally:
        await consumer.stop()


class Outcomes:
    """Responses and dead letters published since ``start``, read as they arrive."""

    def __init__(self, stack, start: dict[TopicPartition, int]):
        self.stack, self.start = stack, start
        self.responses: dict[str, list[Response]] = defaultdict(list)
        self.letters: list[DeadLetter] = []

    async def read_until(self, done, timeout: float) -> None:
        consumer = clients.consumer(self.stack.bootstrap, fetch_max_wait_ms=100)
        await consumer.start()
        try:
            consumer.assign(list(self.start))
            for tp, offset in self.start.items():
                consumer.seek(tp, offset)
            deadline = time.monotonic() + timeout
            while not done(self) and time.monotonic() < deadline:
                for tp, batch in (await consumer.getmany(timeout_ms=300)).items():
                    for rec in batch:
                        if tp.topic == self.stack.topics.responses:
                            try:
                                r = codec.decode(rec.value, Response)
                            except DecodeError:
                                continue
                            self.responses[r.request_id].append(r)
                        else:
                            try:
                                self.letters.append(codec.decode(rec.value, DeadLetter))
                            except DecodeError:
                                continue
        finally:
            await consumer.stop()


@dataclass
class Expect:
    record: Record
    position: tuple[int, int]
    request: Request | None           # what intake decodes, if anything


def accounted(expects: list[Expect], outcomes: Outcomes, requests_topic: str) -> list[str]:
    """What is wrong: records whose outcomes are not exactly one each."""
    letters_by_source = Counter((d.source_partition, d.source_offset) for d in outcomes.letters
                                if d.source_topic == requests_topic)
    letters_by_id = Counter(d.request_id for d in outcomes.letters
                            if d.request_id and d.agent in REQUEST_PATH_AGENTS
                            and d.source_topic != requests_topic)
    by_id: dict[str, list[Expect]] = defaultdict(list)
    problems = []
    for e in expects:
        if e.request is None:
            if letters_by_source[e.position] != 1:
                problems.append(f"{letters_by_source[e.position]} dead letters for {e.record!r}")
        else:
            by_id[e.request.request_id].append(e)
    for rid, group in by_id.items():
        at_source = sum(letters_by_source[e.position] for e in group)
        got = len(outcomes.responses.get(rid, [])) + at_source + letters_by_id[rid]
        if got != len(group):
            problems.append(f"{got} outcomes for {len(group)} record(s) of request {rid}: "
                            f"responses {[(r.status, r.error and r.error.code) for r in outcomes.responses.get(rid, [])]}; "
                            f"first record {group[0].record!r}")
    return problems


def decoded(record: Record) -> Request | None:
    try:
        return codec.decode(record.value, Request)
    except DecodeError:
        return None


# --- the property --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_stack(broker, tmp_path_factory):
    with worker_stack(broker, tmp_path_factory, "fuzz", seed=3, latency_scale="0.02") as stack:
        yield stack


TOTALS: Counter = Counter()


@settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.generate],
          derandomize=os.environ.get("LLMPIPE_FUZZ_RANDOM") != "1", database=None,
          suppress_health_check=list(HealthCheck))
@given(records=st.lists(hostile, min_size=HOSTILE, max_size=HOSTILE),
       repeats=st.lists(st.integers(0, HOSTILE - 1), max_size=5),
       shuffle=st.randoms(use_true_random=False))
def test_every_hostile_record_ends_in_one_outcome_and_neighbours_are_answered(
        fuzz_stack, records, repeats, shuffle: random.Random):
    stack = fuzz_stack
    neighbours = [neighbour(TENANTS[i % 3], MODELS[i % 3]) for i in range(NEIGHBOURS)]
    burst = list(records) + [records[i] for i in repeats]      # the same record twice
    burst += [Record("neighbour", r.tenant.encode(), codec.encode(r, stack.topics.requests))
              for r in neighbours]
    shuffle.shuffle(burst)
    outcomes_topics = [stack.topics.responses, stack.topics.dead_letter]
    start = asyncio.run(end_offsets(stack.bootstrap, outcomes_topics))
    positions = asyncio.run(stack.publish_raw([(stack.topics.requests, r.key, r.value) for r in burst],
                                              partitions=[r.partition for r in burst]))
    expects = [Expect(r, p, decoded(r)) for r, p in zip(burst, positions)]
    outcomes = Outcomes(stack, start)
    asyncio.run(outcomes.read_until(
        lambda o: not accounted(expects, o, stack.topics.requests), OUTCOME_TIMEOUT))
    problems = accounted(expects, outcomes, stack.topics.requests)
    assert not problems, f"{len(problems)} records not accounted for:\n" + "\n".join(problems[:15])

    by_id = {r.request_id: r for r in neighbours}
    lost = {rid: [(x.status, x.error) for x in outcomes.responses.get(rid, [])]
            for rid in by_id if [x.status for x in outcomes.responses.get(rid, [])] != ["ok"]}
    assert not lost, f"valid neighbours not answered ok exactly once: {lost}"

    answered = {rid for rid, rs in outcomes.responses.items()
                if any(not (x.error and x.error.code == "duplicate") for x in rs)}
    worker = stack.workers[0]
    counts = worker.wait_for_usage(sorted(answered), timeout=60)
    wrong = {rid: n for rid, n in counts.items() if n != 1}
    assert not wrong, f"usage rows per answered request, where not 1: {wrong}"
    assert worker.alive()

    TOTALS["records"] += len(burst)
    TOTALS["neighbours"] += len(neighbours)
    TOTALS["dead_letters"] += sum(1 for e in expects if e.request is None)
    for rs in outcomes.responses.values():
        for x in rs:
            TOTALS["ok" if x.status == "ok" else f"error:{x.error.code}"] += 1
    print(f"fuzz so far: {dict(sorted(TOTALS.items()))}")
