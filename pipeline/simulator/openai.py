"""OpenAI chat completions (``POST /v1/chat/completions``, ``GET /v1/models``) over the
simulator's core: request parsing, bodies, usage and OpenAI's error shape, and streamed
answers (``"stream": true``) as ``chat.completion.chunk`` events ending in ``[DONE]``,
with a usage chunk before it when ``stream_options.include_usage`` asks for one."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from typing import Any

from aiohttp import web

from pipeline.simulator.core import (_ROLES, CLIENT_CLOSED, DRAWN_LATENCY_HEADER, LATENCY_HEADER,
                                     NO_MODEL, CallPlan, ChatRequest, ClientGone, InvalidRequest,
                                     Message, Outcome, Simulator, bearer_key, json_body,
                                     key_fingerprint, masked_key, retry_seconds, truncated_json)
from pipeline.simulator.shape import STREAMED, PacedStream

log = logging.getLogger("llmpipe.simulator")



def openai_routes(sim: Simulator) -> list[web.RouteDef]:
    shape = OpenAIShape(sim)
    return [web.post("/v1/chat/completions", shape.chat_completions),
            web.get("/v1/models", shape.list_models)]


def openai_error(status: int, message: str, kind: str, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


class OpenAIShape:
    def __init__(self, sim: Simulator):
        self.sim = sim

    async def list_models(self, request: web.Request) -> web.Response:
        if bearer_key(request) is None:
            return missing_key()
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "llmpipe-simulator"}
                for name in self.sim.config.model_names()]
        return web.json_response({"object": "list", "data": data})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        api_key = bearer_key(request)
        fingerprint = key_fingerprint(api_key)
        body = await json_body(request)
        model = body.get("model") if isinstance(body, dict) else None
        with self.sim.stats.track(model if isinstance(model, str) else NO_MODEL,
                                  fingerprint) as call:
            try:
                response = await self._answer(request, api_key, fingerprint, body)
            except ClientGone as gone:
                return gone.response        # status left unset: recorded as client closed
            call.status = response.status
            return response

    async def _answer(self, request: web.Request, api_key: str | None, fingerprint: str,
                      body: Any) -> web.StreamResponse:
        if api_key is None:
            return missing_key()
        if not isinstance(body, dict):
            return openai_error(400, "We could not parse the JSON body of your request. "
                                "(The OpenAI API expects a JSON payload.)", "invalid_request_error")
        try:
            chat, include_usage = parse_chat_request(body)
        except InvalidRequest as exc:
            return openai_error(400, exc.message, "invalid_request_error", param=exc.param)
        if self.sim.config.profile(chat.model) is None:
            return openai_error(
                404, f"The model `{chat.model}` does not exist or you do not have access to it.",
                "invalid_request_error", code="model_not_found")

        plan = self.sim.plan(chat, fingerprint)
        log.debug("sim.call model=%s key=%s call=%d outcome=%s status=%d latency_ms=%d",
                  plan.model, fingerprint, plan.call_index, plan.outcome.value, plan.status,
                  plan.reported_latency_ms)
        if plan.hang_s is not None and not await self.sim.hold(request, plan.hang_s):
            if not self.sim.closing:
                raise ClientGone(web.Response(status=CLIENT_CLOSED))
            return openai_error(503, "The server is shutting down.", "server_error")
        headers = {LATENCY_HEADER: str(plan.reported_latency_ms),
                   DRAWN_LATENCY_HEADER: str(round(plan.drawn_latency_ms))}
        if chat.stream and plan.outcome in STREAMED:
            return await PacedStream(request, plan, headers).answer(
                functools.partial(stream_events, include_usage=include_usage))
        await asyncio.sleep(plan.latency_ms / 1000)
        return self.render(plan, headers, chat.stream, api_key)

    def render(self, plan: CallPlan, headers: dict[str, str], stream: bool,
               api_key: str | None = None) -> web.Response:
        """Every outcome but a hang or a stream. ``stream`` is unused: streamed answers,
        cut ones included, are written by ``stream_events``; it stays because
        batchstore.py passes it."""
        if plan.outcome is Outcome.COMPLETION:
            return web.json_response(completion_body(plan), headers=headers)
        if plan.outcome is Outcome.MALFORMED:
            return truncated_json(completion_body(plan), headers)
        if plan.outcome is Outcome.UNAUTHORIZED:
            # Like OpenAI: the key masked but for its head and last four characters.
            return openai_error(401, f"Incorrect API key provided: {masked_key(api_key)}. You can "
                                "find your API key at https://platform.openai.com/account/api-keys.",
                                "invalid_request_error", code="invalid_api_key", headers=headers)
        if plan.outcome is Outcome.RATE_LIMITED:
            retry = plan.retry_after_s or 0.0
            headers = {**headers, "retry-after": retry_seconds(retry),
                       "retry-after-ms": str(round(retry * 1000))}
            return openai_error(
                429, f"Rate limit reached for {plan.model} on requests per min (RPM). "
                f"Please try again in {retry_seconds(retry)}s.", "requests",
                code="rate_limit_exceeded", headers=headers)
        if plan.outcome is Outcome.OUTPUT_TOO_LARGE:
            asked = plan.requested_completion_tokens
            return openai_error(
                400, f"max_tokens is too large: {asked}. This model supports at most "
                f"{plan.profile.max_output_tokens} completion tokens, whereas you provided "
                f"{asked}.", "invalid_request_error", param="max_tokens", headers=headers)
        if plan.outcome is Outcome.CONTEXT_LENGTH:
            return openai_error(400, context_length_message(plan), "invalid_request_error",
                                code="context_length_exceeded", param="messages", headers=headers)
        overloaded = plan.status == 503
        message = ("The engine is currently overloaded, please try again later." if overloaded
                   else "The server had an error while processing your request. Sorry about that!")
        return openai_error(plan.status, message, "server_error", headers=headers)



async def stream_events(stream: PacedStream, include_usage: bool) -> None:
    """A role chunk, a chunk per piece, the finish, then usage (if asked) and ``[DONE]``."""
    plan = stream.plan
    base = {"id": plan.call_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": plan.model, "system_fingerprint": "fp_simulator"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        body = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                     "finish_reason": finish}]}
        if include_usage:
            body["usage"] = None
        return f"data: {json.dumps(body)}\n\n"

    await stream.send(chunk({"role": "assistant", "content": "", "refusal": None}))
    async for piece, _ in stream.pieces():
        await stream.send(chunk({"content": piece}))
    finish = chunk({}, plan.finish_reason)
    if stream.cut:
        return await stream.cut_short(finish)
    await stream.send(finish)
    if include_usage:
        final = {**base, "choices": [], "usage": usage_body(plan)}
        await stream.send(f"data: {json.dumps(final)}\n\n")
    await stream.send("data: [DONE]\n\n")


def parse_chat_request(body: dict[str, Any]) -> tuple[ChatRequest, bool]:
    """The OpenAI request body as a ChatRequest, plus whether a stream should end with usage."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", "model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("'messages' must be a non-empty array", "messages")
    messages = []
    for i, raw in enumerate(raw_messages):
        if not isinstance(raw, dict) or raw.get("role") not in _ROLES:
            raise InvalidRequest(f"Invalid value for 'messages[{i}].role': expected one of "
                                 f"{sorted(_ROLES)}.", f"messages.[{i}].role")
        messages.append(Message(raw["role"], _content_text(raw.get("content"), i)))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise InvalidRequest(f"Invalid 'max_tokens': integer below minimum value. Expected a "
                             f"value >= 1, but got {max_tokens!r} instead.", "max_tokens")
    temperature = body.get("temperature")
    if temperature is not None and (isinstance(temperature, bool)
                                    or not isinstance(temperature, (int, float))
                                    or not 0 <= temperature <= 2):
        raise InvalidRequest(f"Invalid 'temperature': expected a number 0..2, got "
                             f"{temperature!r}.", "temperature")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("Invalid 'stream': expected a boolean.", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise InvalidRequest("The 'stream_options' parameter is only allowed when 'stream' "
                                 "is enabled.", "stream_options")
        if not isinstance(options, dict):
            raise InvalidRequest("Invalid 'stream_options': expected an object.", "stream_options")
    include_usage = bool((options or {}).get("include_usage", False))
    return ChatRequest(model, tuple(messages), max_tokens, stream), include_usage


def _content_text(content: Any, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content
                       if isinstance(part, dict) and part.get("type") == "text")
    raise InvalidRequest(f"Invalid type for 'messages[{index}].content': expected a string or "
                         f"an array of content parts.", f"messages.[{index}].content")


def completion_body(plan: CallPlan) -> dict[str, Any]:
    return {
        "id": plan.call_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.model,
        "choices": [{"index": 0,
                     "message": {"role": "assistant", "content": plan.content, "refusal": None},
                     "logprobs": None,
                     "finish_reason": plan.finish_reason}],
        "usage": usage_body(plan),
        "system_fingerprint": "fp_simulator",
    }


def usage_body(plan: CallPlan) -> dict[str, Any]:
    return {"prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "total_tokens": plan.prompt_tokens + plan.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": plan.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": 0}}


def context_length_message(plan: CallPlan) -> str:
    window = plan.profile.context_window
    if plan.requested_completion_tokens == 0 and plan.prompt_tokens > window:
        return (f"This model's maximum context length is {window} tokens. However, your "
                f"messages resulted in {plan.prompt_tokens} tokens. Please reduce the length "
                f"of the messages.")
    # An injected fault may hit a request that fits: claim a completion that does not.
    completion = max(plan.requested_completion_tokens, window - plan.prompt_tokens + 1)
    return (f"This model's maximum context length is {window} tokens. However, you requested "
            f"{plan.prompt_tokens + completion} tokens ({plan.prompt_tokens} in the messages, "
            f"{completion} in the completion). Please reduce the length of the messages or "
            f"completion.")


def missing_key() -> web.Response:
    return openai_error(401, "You didn't provide an API key. You need to provide your API key "
                        "in an Authorization header using Bearer auth (i.e. Authorization: "
                        "Bearer YOUR_KEY).", "invalid_request_error", code="invalid_api_key")
