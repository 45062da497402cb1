"""Python client SDK: publish a request to llm.requests and await its terminal Response.

    async with GatewayClient("127.0.0.1:9092") as gw:
        response = await gw.request(make_request("acme", "Summarise this ..."), timeout=30)

Responses are correlated by tenant and request id (an id is unique only within its tenant:
another tenant's response to the same id is never handed over). Delivery is at-least-once,
so a response may be delivered twice after a worker crash; the client hands each request's
first response to its caller and drops repeats. Only this client's own pending requests are
surfaced.
With ``GatewayClient(..., streams=True)``, ``async for event in gw.stream(request)`` yields
the answer's Chunks as the provider streams them, then the Response.
Re-sending a request id the gateway has seen is answered with a duplicate notice: while the
original is in flight the caller keeps waiting for its response; once it has completed the
caller gets DuplicateRequest. Either way the copy is not processed or billed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from typing import Any, AsyncIterator

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.kafka import clients

from pipeline import errors
from pipeline.clock import now_ms
from pipeline.events.codec import Codec, DecodeError
from pipeline.events.models import (ChatMessage, Chunk, GenerationParams, Request, Response,
                                    RoutingHints)
from pipeline.settings import Topics

log = logging.getLogger("llmpipe.client")


class ResponseTimeout(TimeoutError):
    def __init__(self, request_id: str, timeout: float):
        super().__init__(f"no response for request {request_id} within {timeout:.1f}s "
                         "(is a worker running and consuming llm.requests?)")
        self.request_id = request_id


class DuplicateRequest(RuntimeError):
    """The request id was already used and its original request has completed: the gateway
    did not process (or bill) this copy. ``response`` is the gateway's notice."""

    def __init__(self, response: Response):
        super().__init__(response.error.message if response.error else "duplicate request id")
        self.response = response


def make_request(tenant: str, prompt: str | list[ChatMessage], *, model: str | None = None,
                 team: str | None = None, end_user: str | None = None,
                 max_tokens: int | None = None, temperature: float | None = None,
                 hints: RoutingHints | None = None, reply_topic: str | None = None,
                 metadata: dict[str, str] | None = None, request_id: str | None = None) -> Request:
    messages = [ChatMessage("user", prompt)] if isinstance(prompt, str) else list(prompt)
    return Request(
        request_id=request_id or str(uuid.uuid4()), tenant=tenant, messages=messages, team=team,
        end_user=end_user, created_at_ms=now_ms(), model=model,
        params=GenerationParams(max_tokens=max_tokens, temperature=temperature),
        hints=hints or RoutingHints(), reply_topic=reply_topic, metadata=metadata or {})


class GatewayClient:
    def __init__(self, bootstrap: str, topics: Topics | None = None, *, codec: Codec | None = None,
                 fmt: str = "avro", reply_topic: str | None = None, streams: bool = False):
        """``streams``: also read the chunk topic (llm.chunks), for :meth:`stream`."""
        if fmt not in ("avro", "json"):
            raise ValueError("fmt must be 'avro' or 'json'")
        self.bootstrap, self.topics = bootstrap, topics or Topics()
        self.codec, self.fmt = codec or Codec(), fmt
        self.reply_topic = reply_topic or self.topics.responses
        self.chunk_topic = self.topics.chunks if streams else None
        self._streams: dict[tuple[str, str], asyncio.Queue] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        # keyed by (tenant, request id)
        self._pending: dict[tuple[str, str], asyncio.Future[Response]] = {}
        self._done: OrderedDict[tuple[str, str], None] = OrderedDict()   # recent, to drop repeats
        self._reader: asyncio.Task | None = None
        self.duplicates_dropped = 0
        self.duplicate_notices = 0
        self.remember = 100_000

    async def __aenter__(self) -> "GatewayClient":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def start(self) -> None:
        self._producer = clients.producer(self.bootstrap, linger_ms=1)
        await self._producer.start()
        self._consumer = clients.consumer(self.bootstrap, auto_offset_reset="latest",
                                          fetch_max_wait_ms=20)
        await self._consumer.start()
        tps = []
        for topic in filter(None, (self.reply_topic, self.chunk_topic)):
            partitions = await self._producer.partitions_for(topic)
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:                       # resolve positions now, before anything is sent
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(self._read_responses())

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for fut in self._pending.values():
            fut.cancel()
        if self._consumer:
            await self._consumer.stop()
        if self._producer:
            await self._producer.stop()

    def encode(self, request: Request) -> bytes:
        if self.fmt == "json":
            return self.codec.encode_json(request)
        return self.codec.encode(request, self.topics.requests)

    async def send(self, request: Request) -> None:
        """Fire and forget: returns once the broker has the request."""
        assert self._producer, "call start() first"
        await self._producer.send_and_wait(self.topics.requests, self.encode(request),
                                           key=request.tenant.encode())

    async def request(self, request: Request, timeout: float = 30.0) -> Response:
        """Publish and wait for the terminal Response; ResponseTimeout after ``timeout``."""
        self.expect(request)
        await self.send(request)
        return await self.wait(request, timeout)

    def expect(self, request: Request) -> asyncio.Future[Response]:
        """A future for ``request``'s Response: call it before sending, so a fast answer is
        not missed."""
        key = (request.tenant, request.request_id)
        fut = self._pending.get(key)
        if fut is None:
            fut = self._pending[key] = asyncio.get_running_loop().create_future()
        return fut

    async def wait(self, request: Request, timeout: float) -> Response:
        """``request``'s Response (expected with :meth:`expect` before it was sent)."""
        fut = self.expect(request)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            raise ResponseTimeout(request.request_id, timeout) from None
        finally:
            if fut.done():
                self._pending.pop((request.tenant, request.request_id), None)

    async def _read_responses(self) -> None:
        assert self._consumer
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for record in records:
                    if tp.topic == self.chunk_topic:
                        self._on_chunk(record.value)
                    else:
                        self._on_record(record.value)

    async def stream(self, request: Request, timeout: float = 30.0
                     ) -> AsyncIterator[Chunk | Response]:
        """Publish ``request`` streamed and yield its Chunks as dispatch publishes them (the
        first provider stream seen, in order), then its Response, last, which holds the
        whole text. Chunks and Responses travel on two topics, so the Response can arrive
        before the last chunks: the text they had not carried yet is then yielded as one
        more Chunk made from the Response, so the deltas always add up to its content
        (unless a call re-done after a crash answered differently: trust the Response).
        ResponseTimeout if no Response within ``timeout``. Needs
        ``GatewayClient(streams=True)``."""
        if self.chunk_topic is None:
            raise RuntimeError("create the client with streams=True to read chunks")
        request = request.replace(stream=True, chunk_topic=self.chunk_topic)
        key = (request.tenant, request.request_id)
        events = self._streams[key] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.expect(request)
        stream_id, seq, sent = None, 0, ""
        try:
            await self.send(request)
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), max(deadline - loop.time(), 0))
                except asyncio.TimeoutError:
                    raise ResponseTimeout(request.request_id, timeout) from None
                if isinstance(event, Response):
                    rest = event.rest_after(sent)
                    if rest:
                        yield Chunk(request_id=event.request_id, tenant=event.tenant,
                                    stream_id=stream_id or "response", seq=seq, delta=rest,
                                    at_ms=event.completed_at_ms, model=event.model)
                    yield event
                    return
                stream_id = stream_id or event.stream_id
                if event.stream_id == stream_id and event.seq == seq:
                    seq += 1
                    sent += event.delta
                    yield event
        finally:
            self._streams.pop(key, None)
            self._pending.pop(key, None)

    def _on_chunk(self, value: bytes | None) -> None:
        try:
            chunk = self.codec.decode(value, Chunk)
        except DecodeError as exc:
            log.warning("undecodable_chunk reason=%s", exc.reason)
            return
        events = self._streams.get((chunk.tenant, chunk.request_id))
        if events is not None:
            events.put_nowait(chunk)

    def _on_record(self, value: bytes | None) -> None:
        try:
            response = self.codec.decode(value, Response)
        except DecodeError as exc:
            log.warning("undecodable_response reason=%s", exc.reason)
            return
        key = (response.tenant, response.request_id)
        if response.error and response.error.code == errors.DUPLICATE:
            self._on_duplicate_notice(response)
            return
        if key in self._done:
            self.duplicates_dropped += 1
            return
        fut = self._pending.get(key)
        if fut is not None and not fut.done():
            self._done[key] = None
            while len(self._done) > self.remember:
                self._done.popitem(last=False)
            fut.set_result(response)
            if key in self._streams:
                self._streams[key].put_nowait(response)

    def _on_duplicate_notice(self, notice: Response) -> None:
        """A copy of a request id was refused. While the original is in flight its response
        is still to come, so a waiting caller keeps waiting; once it completed, a caller
        waiting on the copy gets DuplicateRequest rather than a timeout."""
        self.duplicate_notices += 1
        key = (notice.tenant, notice.request_id)
        fut = self._pending.get(key)
        answered = key in self._done or notice.metadata.get(errors.DUPLICATE_STATE) == "completed"
        if fut is not None and not fut.done() and answered:
            self._pending.pop(key, None)
            fut.set_exception(DuplicateRequest(notice))
