"""The simulator's Anthropic Messages shape: ``POST /v1/messages`` with ``x-api-key`` and
``anthropic-version``, answering with Anthropic's message body, usage and error bodies.

Cached prompt tokens follow the simulator's automatic prompt cache (real Anthropic caches
only prefixes marked with cache_control) and are reported as ``cache_read_input_tokens``,
with ``input_tokens`` the rest of the prompt, as Anthropic counts them. An overloaded
server error (status 503 in the fault) answers 529 ``overloaded_error``, Anthropic's
status for it.

Tool calls are ``tool_use`` content blocks with stop reason ``tool_use``; a stop sequence
that ended the text is stop reason ``stop_sequence`` naming it. The request is read in
anthropic_request.py.

Streamed (``"stream": true``), the answer is Anthropic's event sequence: ``message_start``
(usage with the input tokens), ``content_block_start``, ``ping``, a ``content_block_delta``
per piece of text (for a tool call, ``input_json_delta`` fragments of its input),
``content_block_stop``, ``message_delta`` (stop reason, output tokens) and
``message_stop``. Refusals come before the stream, as statuses; a malformed fault cuts
the stream part-way.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from pipeline.simulator.anthropic_request import parse_messages_request
from pipeline.simulator.answers import stream_steps
from pipeline.simulator.chat import ChatRequest, Choice
from pipeline.simulator.core import (CallPlan, InvalidRequest, Outcome, Simulator,
                                     claimed_completion_tokens, retry_seconds, truncated_json)
from pipeline.simulator.shape import NativeShape, PacedStream

API_VERSION_HEADER = "anthropic-version"
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def anthropic_routes(sim: Simulator) -> list[web.RouteDef]:
    return [web.post("/v1/messages", AnthropicShape(sim).handle)]


def anthropic_error(status: int, kind: str, message: str,
                    headers: dict[str, str] | None = None) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status, headers=headers)


class AnthropicShape(NativeShape):
    def api_key(self, request: web.Request) -> str | None:
        return request.headers.get("x-api-key", "").strip() or None

    def model_of(self, request: web.Request, body: Any) -> str | None:
        return body.get("model") if isinstance(body, dict) else None

    def parse(self, request: web.Request, body: dict[str, Any], model: str | None) -> ChatRequest:
        if not request.headers.get(API_VERSION_HEADER):
            raise InvalidRequest(f"{API_VERSION_HEADER}: header is required")
        return parse_messages_request(body)

    def missing_key(self) -> web.Response:
        return anthropic_error(401, "authentication_error", "x-api-key header is required")

    def bad_key(self, api_key: str) -> web.Response:
        return anthropic_error(401, "authentication_error", "invalid x-api-key")

    def invalid(self, message: str) -> web.Response:
        return anthropic_error(400, "invalid_request_error", message)

    def unsupported(self, model: str, feature: str) -> web.Response:
        return anthropic_error(400, "invalid_request_error", f"{model} does not support "
                               f"{'image input' if feature == 'vision' else feature}")

    def unknown_model(self, model: str) -> web.Response:
        return anthropic_error(404, "not_found_error", f"model: {model}")

    def shutting_down(self) -> web.Response:
        return anthropic_error(529, "overloaded_error", "Overloaded")

    def render(self, plan: CallPlan, headers: dict[str, str]) -> web.Response:
        if plan.outcome is Outcome.COMPLETION:
            return web.json_response(message_body(plan), headers=headers)
        if plan.outcome is Outcome.MALFORMED:
            return truncated_json(message_body(plan), headers)
        if plan.outcome is Outcome.UNAUTHORIZED:
            return anthropic_error(401, "authentication_error", "invalid x-api-key",
                                   headers=headers)
        if plan.outcome is Outcome.RATE_LIMITED:
            retry = plan.retry_after_s or 0.0
            return anthropic_error(
                429, "rate_limit_error",
                f"This request would exceed the rate limit for your organization of requests "
                f"per minute for {plan.model}. Please retry after {retry_seconds(retry)} seconds.",
                headers={**headers, "retry-after": retry_seconds(retry)})
        if plan.outcome is Outcome.OUTPUT_TOO_LARGE:
            return anthropic_error(
                400, "invalid_request_error",
                f"max_tokens: {plan.requested_completion_tokens} > "
                f"{plan.profile.max_output_tokens}, which is the maximum allowed number of "
                f"output tokens for {plan.model}", headers=headers)
        if plan.outcome is Outcome.CONTEXT_LENGTH:
            return anthropic_error(400, "invalid_request_error", context_length_message(plan),
                                   headers=headers)
        if plan.status == 503:
            return anthropic_error(529, "overloaded_error", "Overloaded", headers=headers)
        return anthropic_error(plan.status, "api_error", "Internal server error", headers=headers)

    async def stream(self, stream: PacedStream) -> None:
        plan = stream.plan
        choice = plan.choices[0]
        opening = {**message_body(plan), "content": [], "stop_reason": None,
                   "stop_sequence": None}
        opening["usage"] = {**opening["usage"], "output_tokens": 1}
        await stream.send(event("message_start", message=opening))
        block = 0
        if not choice.tool_calls:
            await stream.send(event("content_block_start", index=0,
                                    content_block={"type": "text", "text": ""}))
        await stream.send(event("ping"))
        async for step, _ in stream.paced(stream_steps(plan.choices[:1])):
            if step.start is not None:
                if step.call > 0:
                    await stream.send(event("content_block_stop", index=block))
                block = step.call
                await stream.send(event("content_block_start", index=block, content_block={
                    "type": "tool_use", "id": step.start.id, "name": step.start.name,
                    "input": {}}))
            elif step.arguments is not None:
                await stream.send(event("content_block_delta", index=block, delta={
                    "type": "input_json_delta", "partial_json": step.arguments}))
            else:
                await stream.send(event("content_block_delta", index=0,
                                        delta={"type": "text_delta", "text": step.text}))
        block_stop = event("content_block_stop", index=block)
        if stream.cut:
            return await stream.cut_short(block_stop)
        await stream.send(block_stop)
        await stream.send(event("message_delta",
                                delta={"stop_reason": stop_reason(choice),
                                       "stop_sequence": choice.stop_sequence},
                                usage={"output_tokens": plan.completion_tokens}))
        await stream.send(event("message_stop"))


def event(kind: str, **fields: Any) -> str:
    """One server-sent event as Anthropic frames it: named, its data typed the same."""
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n"


def message_body(plan: CallPlan) -> dict[str, Any]:
    return {
        "id": "msg_" + plan.call_id.partition("-")[2],
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": content_blocks(plan.choices[0]),
        "stop_reason": stop_reason(plan.choices[0]),
        "stop_sequence": plan.choices[0].stop_sequence,
        "usage": {"input_tokens": plan.prompt_tokens - plan.cached_tokens,
                  "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": plan.cached_tokens,
                  "output_tokens": plan.completion_tokens,
                  "service_tier": "standard"},
    }


def content_blocks(choice: Choice) -> list[dict[str, Any]]:
    if not choice.tool_calls:
        return [{"type": "text", "text": choice.content or ""}]
    blocks = []
    for call in choice.tool_calls:
        try:
            arguments = json.loads(call.arguments)
        except ValueError:                 # cut by max_tokens: what was written is lost
            arguments = {}
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name,
                       "input": arguments})
    return blocks


def stop_reason(choice: Choice) -> str:
    return "stop_sequence" if choice.stop_sequence else _STOP_REASONS[choice.finish_reason]


def context_length_message(plan: CallPlan) -> str:
    window = plan.profile.context_window
    if plan.prompt_tokens > window:
        return f"prompt is too long: {plan.prompt_tokens} tokens > {window} maximum"
    return (f"input length and `max_tokens` exceed context limit: {plan.prompt_tokens} + "
            f"{claimed_completion_tokens(plan)} > {window}, decrease input length or "
            f"`max_tokens` and try again")
