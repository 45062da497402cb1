"""A streamed answer on its way to the caller: the provider's deltas as Chunk events on the
request's chunk topic, in order, before its Response.

Text and function-call pieces travel alike. The first delta is published at once (it is the time to first token); after each chunk the
stream gathers deltas for ``interval_s`` (20 ms) and sends what came as the next chunk, so
a fast provider costs a few Kafka records per answer, not one per token (each record is
worker and broker CPU), while the caller still sees text at least every ~20 ms. :meth:`ChunkStream.finish` returns once every chunk is
on the broker, so a request's Response never overtakes its chunks (call it on every path,
success or failure: a caller billed for delivered text sees all of it).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Awaitable, Callable

from pipeline.events.models import Chunk, RoutedRequest, ToolCallDelta
from pipeline.outputs import Out
from pipeline.settings import Topics

Publish = Callable[[list[Out]], Awaitable[None]]
CHUNK_INTERVAL_S = 0.02     # after a chunk, gather deltas this long before the next


class ChunkStream:
    def __init__(self, routed: RoutedRequest, publish: Publish, topics: Topics,
                 clock: Callable[[], int], interval_s: float = CHUNK_INTERVAL_S):
        r = routed.request
        self.routed, self.publish, self.clock = routed, publish, clock
        self.topic = r.chunk_topic or topics.chunks
        self.stream_id = str(uuid.uuid4())
        self.delivered = ""                 # text on the broker or on its way
        self.first_at_ms = 0                # wall time of the first delta
        self.chunks = 0
        self.interval_s = interval_s
        self._pending = ""
        self._pending_calls: list[ToolCallDelta] = []
        self.delivered_calls = 0            # tool-call pieces on the broker or on their way
        self._sender: asyncio.Task | None = None
        self._finishing = asyncio.Event()   # the call ended: send the rest now, no gathering

    @property
    def started(self) -> bool:
        """A delta reached the stream: the caller may have seen text, so the call can no
        longer be retried or failed over without the caller noticing."""
        return bool(self.delivered or self._pending or self.delivered_calls
                    or self._pending_calls)

    async def on_delta(self, text: str, tool_calls: Sequence[ToolCallDelta] = ()) -> None:
        if not text and not tool_calls:
            return
        if not self.first_at_ms:
            self.first_at_ms = self.clock()
        self._pending += text
        for piece in tool_calls:
            _gather(self._pending_calls, piece)
        if self._sender is None or self._sender.done():
            if self._sender is not None:
                self._sender.result()       # a failed publish surfaces here, not silently
            self._sender = asyncio.create_task(self._send())

    async def _send(self) -> None:
        while self._pending or self._pending_calls:
            text, self._pending = self._pending, ""
            calls, self._pending_calls = self._pending_calls, []
            r = self.routed.request
            chunk = Chunk(request_id=r.request_id, tenant=r.tenant, stream_id=self.stream_id,
                          seq=self.chunks, delta=text, at_ms=self.clock(),
                          model=self.routed.route.model, tool_calls=calls)
            self.chunks += 1
            self.delivered += text
            self.delivered_calls += len(calls)
            await self.publish([Out(self.topic, r.request_id, chunk, self.routed.reply_format)])
            if self.interval_s > 0 and not self._finishing.is_set():
                try:
                    await asyncio.wait_for(self._finishing.wait(), self.interval_s)
                except asyncio.TimeoutError:
                    pass

    async def finish(self) -> None:
        """Every delta so far is on the broker."""
        self._finishing.set()
        if self._sender is not None:
            await self._sender
        if self._pending or self._pending_calls:
            await self._send()


def _gather(pending: list[ToolCallDelta], piece: ToolCallDelta) -> None:
    """Add a function-call piece, joining arguments onto the previous piece of the same call
    (one piece per call per chunk, as OpenAI's own chunks mostly are)."""
    last = pending[-1] if pending else None
    if last is not None and last.index == piece.index and piece.id is None and piece.name is None:
        pending[-1] = last.replace(arguments=last.arguments + piece.arguments)
    else:
        pending.append(piece)
