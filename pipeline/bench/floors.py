"""The floors `llmpipe bench latency` prints beside the pipeline (issue 17), driven by the
same load generator on the same simulator and broker in the same run:

- ``Direct``: the bench request POSTed straight to the simulator in OpenAI's shape, with
  the key and base URL the worker uses, over an httpx client set up like the worker's
  adapters (over aiohttp: httpx's own pool would make the load generator the bottleneck). What a caller pays without any gateway: the floor every gateway is measured
  against.
- ``BrokerEcho``: an Avro request's bytes passed produce → consume → produce … through
  fresh topics on the same embedded broker, as many hops as a request takes through the
  pipeline, by tiny echo tasks in the bench process. What Kafka alone costs on that path,
  with no decoding, routing, batching or provider call.

A target is an async context manager with ``name``, ``call(i)`` (one request; returns a
reference unique within a phase, raises on failure) and ``provider_ms(refs)`` (the provider
time the ledger recorded per reference; the floors have no ledger)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from typing import Any, Protocol

import httpx
from aiokafka import AIOKafkaConsumer

from pipeline.catalog import load_catalog
from pipeline.client import make_request
from pipeline.dev.stack import DevStack
from pipeline.events.models import Request, RoutingHints
from pipeline.kafka import clients
from pipeline.kafka.topics import TopicSpec, apply_topics
from pipeline.providers.deployments import load_deployments
from pipeline.providers.transport import AiohttpTransport

# A request's path through the pipeline, one produce → consume hop per topic:
#   client → llm.requests → intake → llm.routed → batcher → llm.batches → dispatch →
#   llm.responses → client
# (pipeline/agents/intake.py, batcher.py, dispatch.py). llm.usage is published beside the
# response, off the caller's path. That is a standard request's path; interactive has no
# window and skips llm.routed (pipeline/batching/alone.py), and intake dispatches it
# itself (pipeline/agents/inline.py): client → llm.requests → intake → llm.responses.
PIPELINE_HOPS = ("llm.requests", "llm.routed", "llm.batches", "llm.responses")
INTERACTIVE_HOPS = ("llm.requests", "llm.responses")
ECHO_TOPIC_PREFIX = "bench.echo."
# As GatewayClient: the caller's producer lingers 1 ms, its response reader waits up to
# 20 ms per fetch (pipeline/client.py).
CALLER_LINGER_MS = 1
CALLER_FETCH_WAIT_MS = 20
# As the worker's Faust producer (faust's producer_linger default: 0).
RELAY_LINGER_MS = 0
# As the worker's provider adapters (pipeline/providers/http.py).
HTTP_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=64)


class CallFailed(Exception):
    """A request answered, but not with success; the message says how (an error code)."""


class Target(Protocol):
    name: str

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: Any) -> None: ...

    async def call(self, i: int) -> str: ...

    async def provider_ms(self, refs: list[str]) -> dict[str, float]: ...


def bench_request(i: int, priority: str = "standard") -> Request:
    """The request every phase sends (or the direct call's body and the echo's payload
    stand for): a short prompt, 16 tokens out, one of 8 tenants."""
    return make_request(f"bench-{i % 8}", f"benchmark request {i}: say hi", max_tokens=16,
                        hints=RoutingHints(priority=priority))


def openai_body(request: Request, provider_model: str) -> dict[str, Any]:
    """The chat-completions body the worker's OpenAI adapter sends for ``request``
    (pipeline/providers/openai.py: model, messages, max_tokens; the bench request sets no
    other parameter)."""
    return {"model": provider_model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.params.max_tokens}


class Direct:
    """The bench requests POSTed to ``url`` with ``api_key``, one HTTP call each."""

    name = "direct"

    def __init__(self, url: str, api_key: str, provider_model: str, timeout_s: float):
        self.url, self.provider_model, self.timeout_s = url, provider_model, timeout_s
        self.api_key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._http: httpx.AsyncClient | None = None

    def body_bytes(self) -> int:
        """Size of one request body as sent (httpx's JSON encoding)."""
        body = openai_body(bench_request(0), self.provider_model)
        return len(httpx.Request("POST", self.url, json=body).content)

    async def __aenter__(self) -> "Direct":
        self._http = httpx.AsyncClient(timeout=self.timeout_s, limits=HTTP_LIMITS,
                                       transport=AiohttpTransport(HTTP_LIMITS))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._http is not None
        await self._http.aclose()

    async def call(self, i: int) -> str:
        assert self._http is not None
        resp = await self._http.post(self.url, json=openai_body(bench_request(i), self.provider_model),
                                     headers=self._headers)
        if resp.status_code != 200:
            raise CallFailed(f"HTTP {resp.status_code}")
        resp.json()["choices"][0]["message"]       # read the answer, as the adapter does
        return str(i)

    async def provider_ms(self, refs: list[str]) -> dict[str, float]:
        return {}


def direct_to(stack: DevStack, deployment_id: str, timeout_s: float) -> Direct:
    """A Direct floor calling what the worker calls for ``deployment_id``: its base URL as
    the worker's environment resolves it (the simulator), its provider-side model and the
    stack's key for it. Only OpenAI-shaped deployments (adapter ``openai``)."""
    env = stack.worker_env(stack.settings())
    deployment = load_deployments(load_catalog(), env=env).by_id[deployment_id]
    if deployment.adapter != "openai" or deployment.api_key_env is None:
        raise ValueError(f"the pipeline routed the bench request to {deployment_id} "
                         f"(adapter {deployment.adapter}); the direct floor speaks only the "
                         "OpenAI shape with a key from the environment")
    return Direct(f"{deployment.base_url}/chat/completions",
                  stack.provider_keys[deployment.api_key_env], deployment.provider_model, timeout_s)


def echo_topics(template: TopicSpec, hops: int) -> list[TopicSpec]:
    """``hops`` throwaway topics laid out like ``template`` (partitions, replication,
    configs), under a prefix of their own and a name fresh to this call, so a phase never
    reads an earlier phase's records."""
    run = uuid.uuid4().hex[:8]
    return [dataclasses.replace(template, name=f"{ECHO_TOPIC_PREFIX}{run}.hop{n}",
                                description=f"llmpipe bench latency: bare-broker hop {n}")
            for n in range(1, hops + 1)]


class BrokerEcho:
    """Bench requests as bare records: the caller produces an Avro request's bytes to the
    first topic; an echo task per further topic consumes each record and produces it, as
    it is, to the next; the caller consumes the last topic. Correlated by record key."""

    def __init__(self, bootstrap: str, topics: list[TopicSpec], payload: bytes,
                 fetch_max_wait_ms: int, timeout_s: float):
        """``fetch_max_wait_ms``: the echo consumers' fetch wait (the worker's setting)."""
        self.name = f"broker {len(topics)} hop{'s' if len(topics) != 1 else ''}"
        self.bootstrap, self.topics, self.payload = bootstrap, topics, payload
        self.fetch_max_wait_ms, self.timeout_s = fetch_max_wait_ms, timeout_s
        self._keys = itertools.count()
        self._pending: dict[bytes, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> "BrokerEcho":
        report = await apply_topics(self.bootstrap, self.topics)
        if not report.ok:
            raise RuntimeError(report.format())
        names = [t.name for t in self.topics]
        self._caller = clients.producer(self.bootstrap, linger_ms=CALLER_LINGER_MS)
        self._relay = clients.producer(self.bootstrap, linger_ms=RELAY_LINGER_MS)
        self._hops = [(clients.consumer(self.bootstrap, source, fetch_max_wait_ms=self.fetch_max_wait_ms),
                       dest) for source, dest in zip(names, names[1:])]
        self._replies = clients.consumer(self.bootstrap, names[-1],
                                         fetch_max_wait_ms=CALLER_FETCH_WAIT_MS)
        for client in (self._caller, self._relay, self._replies, *(c for c, _ in self._hops)):
            await client.start()
        self._tasks = [asyncio.create_task(self._echo(source, dest)) for source, dest in self._hops]
        self._tasks.append(asyncio.create_task(self._read_replies()))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in (self._replies, *(c for c, _ in self._hops), self._relay, self._caller):
            await client.stop()

    async def _echo(self, source: AIOKafkaConsumer, dest: str) -> None:
        """One hop. Each record is handed to the producer without awaiting the broker's
        acknowledgement before reading on: the worker's agents await it per message, in
        a task of their own, so neither holds up the next record."""
        while True:
            for records in (await source.getmany(timeout_ms=200)).values():
                for record in records:
                    await self._relay.send(dest, record.value, key=record.key)

    async def _read_replies(self) -> None:
        while True:
            for records in (await self._replies.getmany(timeout_ms=200)).values():
                for record in records:
                    waiter = self._pending.pop(record.key, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)

    async def call(self, i: int) -> str:
        key = str(next(self._keys)).encode()
        waiter = self._pending[key] = asyncio.get_running_loop().create_future()
        try:
            await self._caller.send_and_wait(self.topics[0].name, self.payload, key=key)
            await asyncio.wait_for(waiter, self.timeout_s)
        finally:
            self._pending.pop(key, None)
        return key.decode()

    async def provider_ms(self, refs: list[str]) -> dict[str, float]:
        return {}
