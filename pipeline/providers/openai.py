"""OpenAI-compatible chat completions (OpenAI, DeepSeek, relays, vLLM, and the
OpenAI-compatible endpoints of Anthropic and Gemini) over httpx, with explicit timeouts
and provider errors mapped to the project's error codes.

Streamed, the call asks for usage at the end (``stream_options.include_usage``) and is
complete at ``data: [DONE]``, or at a finish reason for relays that leave ``[DONE]`` out
(then without usage should it not have come yet). An error inside the stream
(``data: {"error": ...}``) is classified by its code: OpenAI's names, or the HTTP status
that vLLM and other relays put there.

Beyond text, a request carries through as OpenAI names it (each field only when the
request set it, so a plain request's body is what it always was): content parts, tool
calls and tool results, ``tools``, ``tool_choice``, ``parallel_tool_calls``,
``response_format``, ``n``, penalties and logprobs. Every choice is read back; a stream
hands on ``delta.tool_calls`` pieces as they come (choice 0 only: a streamed n > 1 is
refused before it gets here) and gathers ``delta.refusal``.

Embeddings: ``POST /embeddings`` with float vectors, read back in ``data[i].index`` order."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import httpx

from pipeline import errors
from pipeline.errors import GatewayError
from pipeline.events.models import (ChatMessage, Choice, ContentPart, Request, RoutedRequest,
                                    ToolCall, ToolCallDelta, IMAGE_URL)
from pipeline.providers.base import Completion
from pipeline.providers.http import (HTTPAdapter, StreamError, StreamReader, code_for_status,
                                     event_json, json_object, mentions)
from pipeline.providers.turns import parse_json, untied_tool_result

CONTEXT_MARKERS = ("maximum context length", "context_length_exceeded", "context window")
DONE = "[DONE]"

# error.code or error.type -> code, for errors that arrive inside a stream (no status)
STREAM_ERRORS = {
    "rate_limit_exceeded": errors.RATE_LIMITED,
    "insufficient_quota": errors.RATE_LIMITED,
    "invalid_api_key": errors.AUTH_ERROR,
    "context_length_exceeded": errors.CONTEXT_LENGTH_EXCEEDED,
    "invalid_request_error": errors.INVALID_REQUEST,
    "server_error": errors.PROVIDER_ERROR,
}
# The legacy single function call's reason, in today's vocabulary
FINISH_REASONS = {"function_call": "tool_calls"}


class OpenAIAdapter(HTTPAdapter):
    def path(self) -> str:
        return "/chat/completions"

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key.reveal()}"}

    def payload(self, routed: RoutedRequest) -> dict:
        req = routed.request
        body: dict = {
            "model": self.deployment.provider_model,
            "messages": [message(m) for m in req.messages],
            "max_tokens": routed.max_tokens,
        }
        p = req.params
        if p.temperature is not None:
            body["temperature"] = p.temperature
        if p.top_p is not None:
            body["top_p"] = p.top_p
        if p.stop:
            body["stop"] = p.stop
        if p.seed is not None:
            body["seed"] = p.seed
        if p.n != 1:
            body["n"] = p.n
        if p.presence_penalty is not None:
            body["presence_penalty"] = p.presence_penalty
        if p.frequency_penalty is not None:
            body["frequency_penalty"] = p.frequency_penalty
        if p.logprobs:
            body["logprobs"] = True
        if p.top_logprobs is not None:
            body["top_logprobs"] = p.top_logprobs
        if req.end_user:
            body["user"] = req.end_user
        body.update(tooling(req))
        return body

    def stream_payload(self, routed: RoutedRequest) -> dict:
        return {**super().stream_payload(routed), "stream_options": {"include_usage": True}}

    def stream_reader(self, routed: RoutedRequest | None = None) -> StreamReader:
        return OpenAIStream()

    def completion(self, data: dict[str, Any], provider_ms: int,
                   routed: RoutedRequest | None = None) -> Completion:
        choices = sorted(data["choices"], key=lambda c: c.get("index") or 0)
        first, more = read_choice(choices[0], 0), choices[1:]
        prompt, completion, cached = usage_counts(data.get("usage") or {})
        return Completion(
            content=first.content or "",
            finish_reason=first.finish_reason,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            provider_ms=provider_ms,
            tool_calls=tuple(first.tool_calls),
            refusal=first.refusal,
            logprobs=first.logprobs,
            more_choices=tuple(read_choice(c, i) for i, c in enumerate(more, start=1)))

    def embed_path(self) -> str:
        return "/embeddings"

    def embed_payload(self, routed: RoutedRequest) -> dict:
        req = routed.request
        if req.embedding is None:
            raise GatewayError(f"{self.deployment.id}: not an embedding request",
                               errors.INVALID_REQUEST)
        body: dict = {"model": self.deployment.provider_model,
                      "input": list(req.embedding.inputs), "encoding_format": "float"}
        if req.embedding.dimensions is not None:
            body["dimensions"] = req.embedding.dimensions
        if req.end_user:
            body["user"] = req.end_user
        return body

    def embeddings(self, data: dict[str, Any], routed: RoutedRequest,
                   provider_ms: int) -> Completion:
        rows = sorted(data["data"], key=lambda row: int(row["index"]))
        vectors = tuple([float(x) for x in row["embedding"]] for row in rows)
        if len(vectors) != len(routed.request.embedding.inputs):
            raise ValueError("one vector per input")
        usage = data.get("usage") or {}
        return Completion(content="", finish_reason=None,
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=0, cached_tokens=0, provider_ms=provider_ms,
                          embeddings=vectors)

    def error(self, resp: httpx.Response) -> GatewayError:
        body = json_object(resp)
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        if body:
            message = self.excerpt(detail.get("message", ""))
        else:
            message = self.excerpt(resp.text[:200])
        code = str(detail.get("code") or "")
        if resp.status_code == 400 and (code == "context_length_exceeded"
                                        or mentions(message, CONTEXT_MARKERS)):
            return self.failure(resp, message, errors.CONTEXT_LENGTH_EXCEEDED)
        return self.failure(resp, message)


class OpenAIStream(StreamReader):
    """``chat.completion.chunk`` events: text in ``choices[0].delta.content``, function-call
    pieces in ``delta.tool_calls``, the tokens' logprobs in ``choices[0].logprobs``, the
    finish reason on the last choice, usage in a final chunk without choices, then
    ``[DONE]``."""

    def __init__(self) -> None:
        super().__init__()
        self._logprobs: dict[str, list] | None = None     # "content"/"refusal" -> entries

    def read(self, event: str, data: str) -> str:
        if data == DONE:
            self.finished = True
            return ""
        chunk = event_json(data)
        if "error" in chunk:
            detail = chunk["error"] if isinstance(chunk["error"], dict) else {}
            raise StreamError(stream_error_code(detail), detail.get("message"))
        if chunk.get("usage"):
            self.prompt_tokens, self.completion_tokens, self.cached_tokens = \
                usage_counts(chunk["usage"])
        choice = next((c for c in chunk.get("choices") or [] if not c.get("index")), None)
        if choice is None:
            return ""
        if choice.get("finish_reason"):
            self.finish_reason = finish_reason(choice["finish_reason"])
            self.finished = True
        delta = choice.get("delta") or {}
        for piece in delta.get("tool_calls") or []:
            function = piece.get("function") or {}
            self.tool_call_delta(ToolCallDelta(index=int(piece.get("index") or 0),
                                               id=piece.get("id"), name=function.get("name"),
                                               arguments=function.get("arguments") or ""))
        if delta.get("refusal"):
            self.refusal.append(delta["refusal"])
        if choice.get("logprobs"):
            self._logprobs = self._logprobs or {"content": [], "refusal": []}
            for kind, entries in self._logprobs.items():
                entries.extend(choice["logprobs"].get(kind) or [])
        return delta.get("content") or ""

    def completion(self, started: float) -> Completion:
        """With the logprobs of every piece as one object, as an unstreamed answer has them."""
        done = super().completion(started)
        if self._logprobs is None:
            return done
        whole = {kind: entries or None for kind, entries in self._logprobs.items()}
        return dataclasses.replace(done, logprobs=json.dumps(whole))


# -- the request's messages and tooling, as OpenAI takes them

def message(m: ChatMessage) -> dict:
    if m.role == "tool" and not m.tool_call_id:
        return untied_tool_message(m)
    out: dict[str, Any] = {"role": m.role, "content": content(m)}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": c.arguments}}
                             for c in m.tool_calls]
        if not m.parts and not m.content:
            out["content"] = None
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def untied_tool_message(m: ChatMessage) -> dict:
    """A tool message without a ``tool_call_id`` (an older request) answers no call OpenAI
    knows of, and OpenAI refuses it as a tool message: it goes as the user's text labelled
    with the tool's name, as the native adapters send it (turns.py)."""
    return {"role": "user", "content": untied_tool_result(m)}


def content(m: ChatMessage) -> str | list[dict]:
    if not m.parts:
        return m.content
    return [content_part(p) for p in m.parts]


def content_part(part: ContentPart) -> dict:
    if part.type == IMAGE_URL:
        image: dict[str, Any] = {"url": part.url}
        if part.detail:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    return {"type": "text", "text": part.text}


def tooling(req: Request) -> dict:
    """``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``response_format``, for
    those the request set."""
    body: dict[str, Any] = {}
    if req.tools:
        body["tools"] = []
        for tool in req.tools:
            function: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                function["description"] = tool.description
            parameters = parse_json(tool.parameters, f"tool {tool.name}'s parameters")
            if parameters:
                function["parameters"] = parameters
            if tool.strict:
                function["strict"] = True
            body["tools"].append({"type": "function", "function": function})
    choice = req.tool_choice
    if choice is not None:
        body["tool_choice"] = ({"type": "function", "function": {"name": choice.name}}
                               if choice.mode == "function" else choice.mode)
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    fmt = req.response_format
    if fmt is not None:
        body["response_format"] = {"type": fmt.type}
        if fmt.type == "json_schema":
            schema: dict[str, Any] = {"name": fmt.name or "response"}
            if fmt.schema is not None:
                schema["schema"] = parse_json(fmt.schema, "response_format's schema")
            schema["strict"] = fmt.strict
            body["response_format"]["json_schema"] = schema
    return body


# -- the answer

def read_choice(choice: dict[str, Any], index: int) -> Choice:
    msg = choice["message"]
    logprobs = choice.get("logprobs")
    return Choice(index=index, content=msg.get("content"),
                  finish_reason=finish_reason(choice.get("finish_reason")),
                  tool_calls=[ToolCall(c["id"], c["function"]["name"],
                                       c["function"].get("arguments") or "")
                              for c in msg.get("tool_calls") or []
                              if c.get("type", "function") == "function"],
                  refusal=msg.get("refusal"),
                  logprobs=None if logprobs is None else json.dumps(logprobs))


def finish_reason(reason: str | None) -> str | None:
    return FINISH_REASONS.get(reason, reason) if reason else reason


def usage_counts(usage: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens of an OpenAI usage object."""
    details = usage.get("prompt_tokens_details") or {}
    return (int(usage["prompt_tokens"]), int(usage["completion_tokens"]),
            int(details.get("cached_tokens") or 0))


def stream_error_code(detail: dict[str, Any]) -> str:
    code = detail.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        kind = code_for_status(code)
    else:
        kind = (STREAM_ERRORS.get(str(code or ""))
                or STREAM_ERRORS.get(str(detail.get("type") or ""), errors.PROVIDER_ERROR))
    if kind == errors.INVALID_REQUEST and mentions(str(detail.get("message") or ""),
                                                   CONTEXT_MARKERS):
        return errors.CONTEXT_LENGTH_EXCEEDED
    return kind
