"""A streamed chat answer as server-sent events in OpenAI's chunk shape: the role first,
then the text and tool-call pieces of the first stream seen (in order), then — from the
Response, which holds the whole answer and may overtake the last chunks — whatever the
chunks have not carried yet, the refusal, the finish reason (with the choice's logprobs,
which chunks do not carry), the usage if asked for, and ``[DONE]``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from pipeline import errors
from pipeline.events.models import OK, Chunk, Response, ToolCall, ToolCallDelta
from pipeline.gateway import wire
from pipeline.gateway.replies import Waiter


@dataclass
class Carried:
    """What a stream has carried so far: its text, and each tool call's pieces joined."""
    text: str = ""
    calls: dict[int, ToolCallDelta] = field(default_factory=dict)

    def add(self, chunk: Chunk) -> None:
        self.text += chunk.delta
        for piece in chunk.tool_calls:
            call = self.calls.setdefault(piece.index, ToolCallDelta(piece.index))
            call.id = call.id if piece.id is None else piece.id
            call.name = call.name if piece.name is None else piece.name
            call.arguments += piece.arguments


def rest_of_calls(calls: list[ToolCall], carried: dict[int, ToolCallDelta]
                  ) -> list[ToolCallDelta] | None:
    """The pieces that complete ``calls`` (the Response's) after what a stream carried: a
    call never started comes whole, a started one with the rest of its arguments. None
    when what was carried is not the start of them (a call re-done after a crash answered
    differently). The id is not compared: a caller answers the id it was sent."""
    if any(i >= len(calls) for i in carried):
        return None
    rest = []
    for i, call in enumerate(calls):
        sent = carried.get(i)
        if sent is None:
            rest.append(ToolCallDelta(i, call.id, call.name, call.arguments))
            continue
        if sent.name not in (None, call.name) or not call.arguments.startswith(sent.arguments):
            return None
        piece = ToolCallDelta(i, call.id if sent.id is None else None,
                              call.name if sent.name is None else None,
                              call.arguments[len(sent.arguments):])
        if piece.id is not None or piece.name is not None or piece.arguments:
            rest.append(piece)
    return rest


async def events(first: Chunk | Response, waiter: Waiter, chat: wire.Chat, deadline: float,
                 forget: Callable[[Waiter], None], on_gone: Callable[[], None]
                 ) -> AsyncIterator[bytes]:
    """The stream's events, ``first`` and then what ``waiter`` receives until ``deadline``
    (monotonic). If the client goes away first (Starlette cancels the stream), ``on_gone``
    is called."""
    r = chat.request
    created = int(time.time())
    model = r.model or wire.AUTO
    carried, stream_id, seq = Carried(), None, 0
    event: Chunk | Response = first
    finished = False
    try:
        yield wire.sse(wire.chunk_body(r.request_id, created, model,
                                       {"role": "assistant", "content": ""}))
        while True:
            if isinstance(event, Chunk):
                if stream_id is None:
                    stream_id = event.stream_id
                    model = wire.chunk_model(event, r.model)
                if event.stream_id == stream_id and event.seq == seq:
                    seq += 1
                    carried.add(event)
                    yield wire.sse(wire.chunk_body(r.request_id, created, model,
                                                   _delta(event.delta, event.tool_calls)))
            else:
                finished = True
                for part in ending(event, carried, created, model, chat.include_usage):
                    yield part
                return
            try:
                event = await waiter.next(deadline - time.monotonic())
            except asyncio.TimeoutError:
                finished = True
                yield wire.sse(wire.error_body(errors.TIMEOUT, "no complete answer in time"))
                yield wire.sse("[DONE]")
                return
    finally:
        forget(waiter)
        if not finished:
            on_gone()


def ending(response: Response, carried: Carried, created: int, model: str,
           include_usage: bool) -> list[bytes]:
    model = response.model or model

    def chunk(delta: dict, reason: str | None = None, logprobs: dict | None = None) -> bytes:
        return wire.sse(wire.chunk_body(response.request_id, created, model, delta, reason,
                                        logprobs))

    rest = response.rest_after(carried.text)
    calls = rest_of_calls(response.tool_calls, carried.calls) if response.status == OK else []
    parts = [chunk({"content": rest})] if rest else []
    if response.status != OK:
        assert response.error is not None
        parts.append(wire.sse(wire.error_body(response.error.code, response.error.message)))
    elif rest is None or calls is None:
        # the chunks came from a call that was re-done after a crash: its answer differs
        parts.append(wire.sse(wire.error_body(
            errors.PROVIDER_ERROR, "the stream was interrupted (the call was re-done after a "
            "worker restart); retry the request")))
    else:
        if calls:
            parts.append(chunk(_delta("", calls)))
        if response.refusal:
            parts.append(chunk({"refusal": response.refusal}))
        parts.append(chunk({}, wire.finish_reason(response.finish_reason, response.tool_calls),
                           wire.logprobs_body(response.logprobs)))
        if include_usage:
            parts.append(wire.sse(wire.usage_chunk(response, created, model)))
    return parts + [wire.sse("[DONE]")]


def _delta(text: str, pieces: list[ToolCallDelta]) -> dict:
    if not pieces:
        return {"content": text}
    delta: dict = {"content": text} if text else {}
    delta["tool_calls"] = wire.tool_call_deltas(pieces)
    return delta
