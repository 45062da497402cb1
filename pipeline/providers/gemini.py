"""Google's native Gemini API (``POST {base_url}/models/{model}:generateContent``) over
httpx: system instruction, user/model turns and a generation config out; candidates, usage
metadata and Google's error bodies mapped to the project's completion and error codes.

The key travels in the ``x-goog-api-key`` header, never as ``?key=`` (URLs end up in
logs). Gemini's ``candidatesTokenCount`` leaves out a thinking model's thought tokens,
which are billed as output, so ``completion_tokens`` adds ``thoughtsTokenCount``;
``promptTokenCount`` already includes ``cachedContentTokenCount``.

Streamed, the call goes to ``:streamGenerateContent?alt=sse``: each event is a whole
GenerateContentResponse holding the next piece of text. Usage metadata may ride on every
event and the last one with counts is the answer's (Vertex sends some without counts,
which change nothing); there is no closing event, so the stream is complete once a
candidate carries its finish reason (or the prompt was blocked). An ``error`` object in
an event is classified as Google's error body would be.

The chat API in Gemini's terms: images as ``inlineData`` (data: URLs) or ``fileData``
parts (an image's ``detail`` has no Gemini equivalent), assistant tool calls as
``functionCall`` parts and tool results as ``functionResponse`` parts named by the call
they answer; tools as ``functionDeclarations`` and ``toolConfig``; ``n`` as
``candidateCount``; penalties as Gemini's own. Schemas go as JSON Schema, in
``parametersJsonSchema`` and ``responseJsonSchema`` rather than the OpenAPI-subset
``parameters``/``responseSchema``: those refuse ``additionalProperties``, ``$ref``/``$defs``
and more, which pydantic and OpenAI strict schemas always carry, while the JSON Schema
fields take them as they are. Gemini gives function calls no ids, so each gets one here
(``call_`` and 24 hex digits, unique, as tool results must name it later). Gemini cannot be
told to call one function at a time: with ``parallel_tool_calls`` false only each
candidate's first call is kept. Logprobs are not offered for Gemini (routing keeps such
requests away; one that arrives is refused).

Embeddings: ``:batchEmbedContents``, one request per input. Its answer has no usage, so
``prompt_tokens`` is intake's offline estimate of the inputs' tokens
(``RoutedRequest.estimated_prompt_tokens``: text only, an embedding input has no chat
framing).
"""

from __future__ import annotations

import json
import mimetypes
import uuid
from typing import Any
from urllib.parse import quote

import httpx

from pipeline import errors
from pipeline.errors import GatewayError
from pipeline.events.models import TEXT, Choice, Request, RoutedRequest, ToolCall, ToolCallDelta
from pipeline.providers.base import Completion
from pipeline.providers.http import (HTTPAdapter, StreamError, StreamReader, code_for_status,
                                     event_json, json_object, mentions)
from pipeline.resilience.retry import retry_after
from pipeline.providers.turns import ASSISTANT, Block, ToolResult, data_url, parse_json, to_turns

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "FINISH_REASON_UNSPECIFIED": None,
}
FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                      "IMAGE_SAFETY", "LANGUAGE"})
CONTENT_FILTER = "content_filter"
TOOL_CALLS = "tool_calls"
MODES = {"auto": "AUTO", "required": "ANY", "function": "ANY", "none": "NONE"}

# "The input token count (1054016) exceeds the maximum number of tokens allowed (1048576)."
CONTEXT_MARKERS = ("input token count", "exceeds the maximum number of tokens",
                   "context window", "context length")

# error.status -> code, where the status name says more than the HTTP status does
STATUSES = {
    "RESOURCE_EXHAUSTED": errors.RATE_LIMITED,
    "UNAUTHENTICATED": errors.AUTH_ERROR,
    "PERMISSION_DENIED": errors.AUTH_ERROR,
    "UNAVAILABLE": errors.OVERLOADED,
    "DEADLINE_EXCEEDED": errors.TIMEOUT,
}
# An invalid key is a 400 INVALID_ARGUMENT whose details name this reason.
KEY_INVALID_REASON = "API_KEY_INVALID"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


class GeminiAdapter(HTTPAdapter):
    def path(self) -> str:
        return f"{self._model_path()}:generateContent"

    def stream_path(self) -> str:
        return f"{self._model_path()}:streamGenerateContent?alt=sse"

    def _model_path(self) -> str:
        model = self.deployment.provider_model.removeprefix("models/")
        return f"/models/{quote(model, safe='')}"

    def stream_payload(self, routed: RoutedRequest) -> dict:
        return self.payload(routed)     # the path says "stream", not the body

    def stream_reader(self, routed: RoutedRequest | None = None) -> StreamReader:
        return GeminiStream(one_call=routed is not None
                            and routed.request.parallel_tool_calls is False)

    def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._key.reveal()}

    def payload(self, routed: RoutedRequest) -> dict:
        req = routed.request
        conversation = to_turns(req.messages)
        p = req.params
        if p.logprobs or p.top_logprobs is not None:
            raise GatewayError("logprobs are not supported by Gemini models",
                               errors.INVALID_REQUEST)
        config: dict[str, Any] = {"maxOutputTokens": routed.max_tokens}
        if p.temperature is not None:
            config["temperature"] = p.temperature
        if p.top_p is not None:
            config["topP"] = p.top_p
        if p.stop:
            config["stopSequences"] = list(p.stop)
        if p.seed is not None:
            config["seed"] = p.seed
        if p.n != 1:
            config["candidateCount"] = p.n
        if p.presence_penalty is not None:
            config["presencePenalty"] = p.presence_penalty
        if p.frequency_penalty is not None:
            config["frequencyPenalty"] = p.frequency_penalty
        config.update(response_config(req))
        body: dict = {
            "contents": [{"role": "model" if turn.role == ASSISTANT else "user",
                          "parts": [part(b) for b in turn.blocks]}
                         for turn in conversation.turns],
            "generationConfig": config,
        }
        if conversation.system:
            body["systemInstruction"] = {"parts": [{"text": conversation.system}]}
        body.update(tooling(req))
        return body

    def completion(self, data: dict[str, Any], provider_ms: int,
                   routed: RoutedRequest | None = None) -> Completion:
        prompt, completion, cached = usage_counts(data["usageMetadata"])
        one_call = routed is not None and routed.request.parallel_tool_calls is False
        candidates = sorted(data.get("candidates") or [], key=lambda c: c.get("index") or 0)
        if candidates:
            choices = [read_candidate(c, i, one_call) for i, c in enumerate(candidates)]
        else:
            if not _blocked(data):
                raise KeyError("candidates")
            choices = [Choice(0, "", CONTENT_FILTER)]
        first = choices[0]
        return Completion(
            content=first.content or "",
            finish_reason=first.finish_reason,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            provider_ms=provider_ms,
            tool_calls=tuple(first.tool_calls),
            more_choices=tuple(choices[1:]))

    def embed_path(self) -> str:
        return f"{self._model_path()}:batchEmbedContents"

    def embed_payload(self, routed: RoutedRequest) -> dict:
        embedding = routed.request.embedding
        if embedding is None:
            raise GatewayError(f"{self.deployment.id}: not an embedding request",
                               errors.INVALID_REQUEST)
        model = f"models/{self.deployment.provider_model.removeprefix('models/')}"
        requests = []
        for text in embedding.inputs:
            one: dict[str, Any] = {"model": model, "content": {"parts": [{"text": text}]}}
            if embedding.dimensions is not None:
                one["outputDimensionality"] = embedding.dimensions
            requests.append(one)
        return {"requests": requests}

    def embeddings(self, data: dict[str, Any], routed: RoutedRequest,
                   provider_ms: int) -> Completion:
        inputs = routed.request.embedding.inputs
        vectors = tuple([float(x) for x in e["values"]] for e in data["embeddings"])
        if len(vectors) != len(inputs):
            raise ValueError("one vector per input")
        return Completion(content="", finish_reason=None,
                          prompt_tokens=routed.estimated_prompt_tokens,
                          completion_tokens=0, cached_tokens=0, provider_ms=provider_ms,
                          embeddings=vectors)

    def error(self, resp: httpx.Response) -> GatewayError:
        body = json_object(resp)
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        message = self.excerpt(detail.get("message") if body else resp.text[:200])
        details = [d for d in detail.get("details") or [] if isinstance(d, dict)]
        code = _error_code(detail, details, resp.status_code, message)
        return self.failure(resp, message, code, _retry_delay(details))


class GeminiStream(StreamReader):
    """Each event a whole GenerateContentResponse: the next text of candidate 0 (a streamed
    n > 1 is refused before it gets here), and its function calls, each whole in one event."""

    def __init__(self, one_call: bool = False) -> None:
        super().__init__()
        self._one_call = one_call
        self._calls = 0

    def read(self, event: str, data: str) -> str:
        body = event_json(data)
        if isinstance(body.get("error"), dict):
            raise _stream_error(body["error"])
        usage = body.get("usageMetadata") or {}
        if "promptTokenCount" in usage:
            self.prompt_tokens, self.completion_tokens, self.cached_tokens = usage_counts(usage)
        candidates = [c for c in body.get("candidates") or [] if not c.get("index")]
        if not candidates:
            if _blocked(body):
                self.finish_reason, self.finished = CONTENT_FILTER, True
            return ""
        candidate = candidates[0]
        for call in _function_calls(candidate):
            if self._one_call and self._calls:
                break
            self.tool_call_delta(ToolCallDelta(self._calls, id=call.id, name=call.name,
                                               arguments=call.arguments))
            self._calls += 1
        if candidate.get("finishReason"):
            self.finish_reason = _finish_reason(candidate["finishReason"], self._calls > 0)
            self.finished = True
        return _text(candidate)


# -- the request in Gemini's terms

def part(block: Block) -> dict:
    if isinstance(block, ToolResult):
        if not block.name:
            raise GatewayError(f"tool result {block.call_id} answers no earlier tool call "
                               f"and names no function (Gemini needs the function's name)",
                               errors.INVALID_REQUEST)
        return {"functionResponse": {"name": block.name, "response": {"content": block.content}}}
    if isinstance(block, ToolCall):
        return {"functionCall": {"name": block.name,
                                 "args": parse_json(block.arguments or "{}",
                                                    f"tool call {block.id}'s arguments")}}
    if block.type == TEXT:
        return {"text": block.text}
    inline = data_url(block.url)
    if inline is not None:
        return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
    file: dict[str, Any] = {"fileUri": block.url}
    mime_type, _ = mimetypes.guess_type(str(block.url))
    if mime_type:
        file["mimeType"] = mime_type
    return {"fileData": file}


def tooling(req: Request) -> dict:
    body: dict[str, Any] = {}
    if req.tools:
        declarations = []
        for tool in req.tools:
            declaration: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                declaration["description"] = tool.description
            schema = parse_json(tool.parameters, f"tool {tool.name}'s parameters")
            if schema:
                declaration["parametersJsonSchema"] = schema
            declarations.append(declaration)
        body["tools"] = [{"functionDeclarations": declarations}]
    choice = req.tool_choice
    if choice is not None:
        config: dict[str, Any] = {"mode": MODES[choice.mode]}
        if choice.mode == "function":
            config["allowedFunctionNames"] = [choice.name]
        body["toolConfig"] = {"functionCallingConfig": config}
    return body


def response_config(req: Request) -> dict:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return {}
    config: dict[str, Any] = {"responseMimeType": "application/json"}
    if fmt.type == "json_schema" and fmt.schema is not None:
        config["responseJsonSchema"] = parse_json(fmt.schema, "response_format's schema")
    return config


# -- the answer

def read_candidate(candidate: dict[str, Any], index: int, one_call: bool = False) -> Choice:
    calls = _function_calls(candidate)[:1 if one_call else None]
    return Choice(index=index, content=_text(candidate),
                  finish_reason=_finish_reason(candidate.get("finishReason"), bool(calls)),
                  tool_calls=calls)


def _function_calls(candidate: dict[str, Any]) -> list[ToolCall]:
    parts = (candidate.get("content") or {}).get("parts") or []
    return [ToolCall(part["functionCall"].get("id") or new_call_id(),
                     part["functionCall"]["name"],
                     json.dumps(part["functionCall"].get("args") or {}, ensure_ascii=False))
            for part in parts if "functionCall" in part]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def usage_counts(usage: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens, thought tokens counted as output."""
    return (int(usage["promptTokenCount"]),
            int(usage.get("candidatesTokenCount") or 0) + int(usage.get("thoughtsTokenCount") or 0),
            int(usage.get("cachedContentTokenCount") or 0))


def _text(candidate: dict[str, Any]) -> str:
    """A candidate's answer text, without a thinking model's thoughts."""
    parts = (candidate.get("content") or {}).get("parts") or []
    return "".join(part.get("text", "") for part in parts if not part.get("thought"))


def _blocked(data: dict[str, Any]) -> bool:
    """The prompt itself was blocked: no candidates, only the reason why."""
    return bool((data.get("promptFeedback") or {}).get("blockReason"))


def _error_code(detail: dict[str, Any], details: list[dict], status: int,
                message: str) -> str | None:
    """The code Google's error body settles; None leaves it to the HTTP status."""
    if any(d.get("reason") == KEY_INVALID_REASON for d in details):
        return errors.AUTH_ERROR
    code = STATUSES.get(str(detail.get("status") or ""))
    if code is None and status == 400 and mentions(message, CONTEXT_MARKERS):
        return errors.CONTEXT_LENGTH_EXCEEDED
    return code


def _stream_error(detail: dict[str, Any]) -> StreamError:
    """An error object inside the stream: its ``code`` is the HTTP status it stands for."""
    details = [d for d in detail.get("details") or [] if isinstance(d, dict)]
    message = str(detail.get("message") or "")
    status = detail.get("code") if isinstance(detail.get("code"), int) else 500
    return StreamError(_error_code(detail, details, status, message) or code_for_status(status),
                       message)


def _finish_reason(reason: str | None, called: bool = False) -> str | None:
    """OpenAI's name for it: a STOP after function calls is "tool_calls"."""
    if reason is None:
        return None
    if reason in FILTERED:
        return CONTENT_FILTER
    if reason == "STOP" and called:
        return TOOL_CALLS
    return FINISH_REASONS.get(reason, reason.lower())


def _retry_delay(details: list[dict]) -> float | None:
    """Google says when to retry in a RetryInfo detail (``"retryDelay": "37s"``) rather
    than a Retry-After header; None when absent, so the header still counts."""
    for d in details:
        if d.get("@type") == RETRY_INFO:
            return retry_after(str(d.get("retryDelay") or "").removesuffix("s"))
    return None
