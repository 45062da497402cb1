"""Anthropic's native Messages API (``POST {base_url}/messages``) over httpx: system text
in its own field, alternating user/assistant turns, Anthropic's usage and error bodies
mapped to the project's completion and error codes.

Usage: Anthropic's ``input_tokens`` counts only the prompt tokens that were neither read
from nor written to the prompt cache. ``prompt_tokens`` here is the whole prompt,
``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``, so billing sees
every prompt token; ``cached_tokens`` is ``cache_read_input_tokens``. Cache writes are
priced as plain input (Anthropic charges them 1.25x; requests here set no cache_control,
so there are none unless a relay adds them).

Streamed (``"stream": true``), the answer comes as Anthropic's events: usage in
``message_start`` (and, cumulatively, in ``message_delta``, whose count wins), text in
``text_delta`` deltas, the stop reason in ``message_delta``, and ``message_stop`` last; an
``error`` event part-way is classified by its type as the same error before the stream
would be. A ``tool_use`` block streams as a ToolCallDelta with its id and name, then its
``input_json_delta`` pieces as arguments, numbered among the answer's tool calls (0, 1, ...)
rather than by Anthropic's block index; the structured-output answer tool's input streams
as text.

Blocks, tools, tool_choice and structured output: see anthropic_blocks.py. Anthropic has
no ``n``: a request for n > 1 choices is n calls made together and merged into one
completion (choices in call order, usage summed, provider time the longest); a streamed
one is refused, as the gateway refuses it before it gets here. No embeddings API either.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx

from pipeline import errors
from pipeline.errors import GatewayError
from pipeline.events.models import Choice, RoutedRequest, ToolCallDelta
from pipeline.providers.anthropic_blocks import (ANSWER_TOOL, REFUSED, finish_reason, message,
                                                 read_content, refuse_unsupported, tooling)
from pipeline.providers.base import Completion, OnDelta
from pipeline.providers.http import (HTTPAdapter, StreamError, StreamReader, code_for_status,
                                     event_json, json_object, mentions)
from pipeline.providers.turns import to_turns

API_VERSION = "2023-06-01"
MAX_TEMPERATURE = 1.0   # Anthropic takes 0..1 where OpenAI takes 0..2

# "prompt is too long: 208310 tokens > 200000 maximum" and "input length and `max_tokens`
# exceed context limit: 198000 + 8192 > 200000, ..." are Anthropic's two wordings.
CONTEXT_MARKERS = ("prompt is too long", "exceed context limit", "context window",
                   "context length")

# error.type -> code, where the type says more than the status does
ERROR_TYPES = {
    "rate_limit_error": errors.RATE_LIMITED,
    "overloaded_error": errors.OVERLOADED,
    "authentication_error": errors.AUTH_ERROR,
    "permission_error": errors.AUTH_ERROR,
}
# error.type -> the HTTP status Anthropic answers it with, for error events in a stream
ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class AnthropicAdapter(HTTPAdapter):
    def path(self) -> str:
        return "/messages"

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self._key.reveal(), "anthropic-version": API_VERSION}

    async def complete(self, routed: RoutedRequest, on_delta: OnDelta | None = None) -> Completion:
        n = routed.request.params.n
        if n <= 1:
            return await super().complete(routed, on_delta)
        if on_delta is not None:
            raise GatewayError(f"{self.deployment.id}: n > 1 cannot be streamed from "
                               f"Anthropic models", errors.INVALID_REQUEST)
        outcomes = await asyncio.gather(*(super(AnthropicAdapter, self).complete(routed)
                                          for _ in range(n)), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return merge_choices(outcomes)

    async def embed(self, routed: RoutedRequest) -> Completion:
        raise GatewayError(f"{self.deployment.id}: Anthropic has no embeddings API",
                           errors.INVALID_REQUEST)

    def payload(self, routed: RoutedRequest) -> dict:
        req = routed.request
        refuse_unsupported(req)
        conversation = to_turns(req.messages)
        body: dict = {
            "model": self.deployment.provider_model,
            "max_tokens": routed.max_tokens,
            "messages": [message(turn) for turn in conversation.turns],
        }
        if conversation.system:
            body["system"] = conversation.system
        p = req.params
        # Recent Claude models refuse temperature and top_p together ("use only one");
        # temperature is the one callers mean more often, so it wins.
        if p.temperature is not None:
            body["temperature"] = min(p.temperature, MAX_TEMPERATURE)
        elif p.top_p is not None:
            body["top_p"] = p.top_p
        if p.stop:
            body["stop_sequences"] = list(p.stop)
        if req.end_user:
            body["metadata"] = {"user_id": req.end_user}
        body.update(tooling(req))
        return body

    def stream_reader(self, routed: RoutedRequest | None = None) -> StreamReader:
        return AnthropicStream()

    def completion(self, data: dict[str, Any], provider_ms: int,
                   routed: RoutedRequest | None = None) -> Completion:
        prompt, completion, cached = usage_counts(data["usage"])
        text, calls, finish, refusal = read_content(data["content"], data.get("stop_reason"))
        return Completion(
            content=text,
            finish_reason=finish,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            provider_ms=provider_ms,
            tool_calls=calls,
            refusal=refusal)

    def error(self, resp: httpx.Response) -> GatewayError:
        body = json_object(resp)
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        message = self.excerpt(detail.get("message") if body else resp.text[:200])
        return self.failure(resp, message,
                            error_code(str(detail.get("type") or ""), resp.status_code, message))


class AnthropicStream(StreamReader):
    """The Messages API's events, named by their ``type``; ``ping`` and blocks other than
    text and tool use (thinking, say) add nothing here."""

    def __init__(self) -> None:
        super().__init__()
        self._usage: dict[str, Any] = {"input_tokens": 0, "output_tokens": 0}
        self._blocks: dict[int, _Block] = {}      # Anthropic's block index -> what it is
        self._calls = 0                           # tool calls so far (the answer not one)
        self._stop_reason: str | None = None

    def read(self, event: str, data: str) -> str:
        body = event_json(data)
        kind = body.get("type") or event
        if kind == "message_start":
            self._count(body["message"].get("usage") or {})
        elif kind == "content_block_start":
            return self._start(int(body["index"]), body["content_block"])
        elif kind == "content_block_delta":
            return self._delta(self._blocks.get(int(body["index"])), body["delta"])
        elif kind == "content_block_stop":
            return self._stop(self._blocks.get(int(body["index"])))
        elif kind == "message_delta":
            self._stop_reason = body["delta"].get("stop_reason")
            self.finish_reason = finish_reason(self._stop_reason, called=self._calls > 0)
            self._count(body.get("usage") or {})
        elif kind == "message_stop":
            self.finished = True
        elif kind == "error":
            raise stream_error(body)
        return ""

    def _start(self, index: int, block: dict[str, Any]) -> str:
        if block.get("type") == "text":
            self._blocks[index] = _Block("text")
            return block.get("text") or ""
        if block.get("type") == "tool_use" and block["name"] == ANSWER_TOOL:
            self._blocks[index] = _Block("answer")
        elif block.get("type") == "tool_use":
            self._blocks[index] = _Block("call", self._calls)
            self.tool_call_delta(ToolCallDelta(self._calls, id=block["id"], name=block["name"]))
            self._calls += 1
        return ""

    def _delta(self, block: _Block | None, delta: dict[str, Any]) -> str:
        if delta.get("type") == "text_delta":
            return delta.get("text") or ""
        if block is None or delta.get("type") != "input_json_delta" \
                or not delta.get("partial_json"):
            return ""
        block.has_input = True
        if block.kind == "answer":
            return delta["partial_json"]
        self.tool_call_delta(ToolCallDelta(block.call, arguments=delta["partial_json"]))
        return ""

    def _stop(self, block: _Block | None) -> str:
        """A tool use whose input never streamed (a call without arguments) is ``{}``, so
        the assembled arguments are JSON as they are unstreamed."""
        if block is None or block.kind == "text" or block.has_input:
            return ""
        if block.kind == "answer":
            return "{}"
        self.tool_call_delta(ToolCallDelta(block.call, arguments="{}"))
        return ""

    def completion(self, started: float) -> Completion:
        done = super().completion(started)
        if self._stop_reason == "refusal":
            return dataclasses.replace(done, refusal=done.content or REFUSED)
        return done

    def _count(self, usage: dict[str, Any]) -> None:
        """Counts are cumulative, so each report replaces the ones it names."""
        self._usage.update((name, n) for name, n in usage.items() if n is not None)
        self.prompt_tokens, self.completion_tokens, self.cached_tokens = \
            usage_counts(self._usage)


class _Block:
    """A content block of the answer being streamed: text, a tool call (its number among
    the answer's calls) or the structured-output answer."""

    def __init__(self, kind: str, call: int = 0):
        self.kind, self.call = kind, call
        self.has_input = False


def merge_choices(completions: list[Completion]) -> Completion:
    """The completions of a fanned-out n > 1 request as one: the first as choice 0, the
    others as choices 1..n-1, usage summed (each call was billed), the longest call's time."""
    first = completions[0]
    return dataclasses.replace(
        first,
        prompt_tokens=sum(c.prompt_tokens for c in completions),
        completion_tokens=sum(c.completion_tokens for c in completions),
        cached_tokens=sum(c.cached_tokens for c in completions),
        provider_ms=max(c.provider_ms for c in completions),
        more_choices=tuple(Choice(index=i, content=c.content, finish_reason=c.finish_reason,
                                  tool_calls=list(c.tool_calls), refusal=c.refusal)
                           for i, c in enumerate(completions[1:], start=1)))


def usage_counts(usage: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens, counted as the module docstring says."""
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    return (int(usage["input_tokens"]) + cache_read + cache_write, int(usage["output_tokens"]),
            cache_read)


def error_code(kind: str, status: int, message: str) -> str | None:
    """The code an error's type or message settles; None leaves it to the status."""
    code = ERROR_TYPES.get(kind)
    if code is None and status == 400 and mentions(message, CONTEXT_MARKERS):
        return errors.CONTEXT_LENGTH_EXCEEDED
    return code


def stream_error(body: dict[str, Any]) -> StreamError:
    """An ``error`` event, coded as the status its type comes with would be."""
    detail = body.get("error") if isinstance(body.get("error"), dict) else {}
    message = str(detail.get("message") or "")
    kind = str(detail.get("type") or "")
    status = ERROR_STATUSES.get(kind, 500)
    return StreamError(error_code(kind, status, message) or code_for_status(status), message)
