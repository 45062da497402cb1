"""OpenAI chat completions (``POST /v1/chat/completions``) over the simulator's core:
bodies with every choice (text, tool calls, logprobs), usage counting all choices,
OpenAI's error shape, and streamed answers (``"stream": true``) as
``chat.completion.chunk`` events ending in ``[DONE]``, with a usage chunk before it when
``stream_options.include_usage`` asks for one. Tool calls stream as OpenAI streams them:
a ``delta.tool_calls`` entry with the id, name and empty arguments, then the arguments in
fragments. The request is read in openai_request.py."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from typing import Any

from aiohttp import web

from pipeline.simulator.answers import Step, stream_steps, token_logprobs
from pipeline.simulator.chat import Choice
from pipeline.simulator.core import (CLIENT_CLOSED, DRAWN_LATENCY_HEADER, LATENCY_HEADER, NO_MODEL,
                                     CallPlan, ClientGone, InvalidRequest, Outcome, Simulator,
                                     bearer_key, json_body, key_fingerprint, masked_key,
                                     retry_seconds, truncated_json)
from pipeline.simulator.openai_request import parse_chat_request
from pipeline.simulator.shape import STREAMED, PacedStream

log = logging.getLogger("llmpipe.simulator")



def openai_routes(sim: Simulator) -> list[web.RouteDef]:
    return [web.post("/v1/chat/completions", OpenAIShape(sim).chat_completions)]


def openai_error(status: int, message: str, kind: str, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


class OpenAIShape:
    def __init__(self, sim: Simulator):
        self.sim = sim

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        api_key = bearer_key(request)
        fingerprint = key_fingerprint(api_key)
        body = await json_body(request)
        self.sim.requests.append(body)
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
        refused = key_refusal(self.sim, api_key)
        if refused is not None:
            return refused
        if not isinstance(body, dict):
            return openai_error(400, "We could not parse the JSON body of your request. "
                                "(The OpenAI API expects a JSON payload.)", "invalid_request_error")
        try:
            chat, include_usage = parse_chat_request(body)
        except InvalidRequest as exc:
            return openai_error(400, exc.message, "invalid_request_error", param=exc.param)
        profile = self.sim.config.profile(chat.model)
        if profile is None:
            return unknown_model(chat.model)
        if profile.kind != "chat":
            return openai_error(404, "This is not a chat model and thus not supported in the "
                                "v1/chat/completions endpoint.", "invalid_request_error",
                                param="model")
        for feature in sorted(chat.features - profile.features):
            return unsupported(chat.model, feature)

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
            return bad_key(api_key, headers)
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
    """A role chunk per choice, a chunk per step (text piece, tool call start, arguments
    fragment), each choice's finish, then usage (if asked) and ``[DONE]``."""
    plan = stream.plan
    base = {"id": plan.call_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": plan.model, "system_fingerprint": "fp_simulator"}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None,
              logprobs: Any = None) -> str:
        body = {**base, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                     "finish_reason": finish}]}
        if include_usage:
            body["usage"] = None
        return f"data: {json.dumps(body)}\n\n"

    logprobs = [choice_logprobs(plan, i, c) for i, c in enumerate(plan.choices)]
    sent = [0] * len(plan.choices)
    for index, choice in enumerate(plan.choices):
        await stream.send(chunk(index, {"role": "assistant",
                                        "content": None if choice.tool_calls else "",
                                        "refusal": None}))
    async for step, _ in stream.paced(stream_steps(plan.choices)):
        await stream.send(chunk(step.choice, _delta(step),
                                logprobs=_piece_logprobs(logprobs[step.choice], sent, step)))
    finishes = [chunk(i, {}, c.finish_reason) for i, c in enumerate(plan.choices)]
    if stream.cut:
        return await stream.cut_short(finishes[0])
    for finish in finishes:
        await stream.send(finish)
    if include_usage:
        final = {**base, "choices": [], "usage": usage_body(plan)}
        await stream.send(f"data: {json.dumps(final)}\n\n")
    await stream.send("data: [DONE]\n\n")


def _delta(step: Step) -> dict[str, Any]:
    if step.start is not None:
        return {"tool_calls": [{"index": step.call, "id": step.start.id, "type": "function",
                                "function": {"name": step.start.name, "arguments": ""}}]}
    if step.arguments is not None:
        return {"tool_calls": [{"index": step.call, "function": {"arguments": step.arguments}}]}
    return {"content": step.text}


def _piece_logprobs(whole: dict[str, Any] | None, sent: list[int], step: Step) -> Any:
    """The logprobs of the step's text piece (None when not asked or not text)."""
    if whole is None or step.text is None:
        return None
    position = sent[step.choice]
    sent[step.choice] += 1
    return {"content": whole["content"][position:position + 1], "refusal": None}


def choice_logprobs(plan: CallPlan, index: int, choice: Choice) -> dict[str, Any] | None:
    if plan.top_logprobs is None:
        return None
    return {"content": token_logprobs(choice.content or "", plan.top_logprobs,
                                      f"{plan.call_id}:{index}"), "refusal": None}


def completion_body(plan: CallPlan) -> dict[str, Any]:
    return {
        "id": plan.call_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.model,
        "choices": [{"index": i, "message": _message(c),
                     "logprobs": choice_logprobs(plan, i, c),
                     "finish_reason": c.finish_reason} for i, c in enumerate(plan.choices)],
        "usage": usage_body(plan),
        "system_fingerprint": "fp_simulator",
    }


def _message(choice: Choice) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.content, "refusal": None}
    if choice.tool_calls:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in choice.tool_calls]
    return message


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


def unknown_model(model: str) -> web.Response:
    return openai_error(404, f"The model `{model}` does not exist or you do not have access to "
                        f"it.", "invalid_request_error", code="model_not_found")


def bad_key(api_key: str | None, headers: dict[str, str] | None = None) -> web.Response:
    # Like OpenAI: the key masked but for its head and last four characters.
    return openai_error(401, f"Incorrect API key provided: {masked_key(api_key)}. You can find "
                        "your API key at https://platform.openai.com/account/api-keys.",
                        "invalid_request_error", code="invalid_api_key", headers=headers)


def key_refusal(sim: Simulator, api_key: str | None) -> web.Response | None:
    """The 401 for a missing key or one the simulator was not configured with, else None."""
    if api_key is None:
        return missing_key()
    return None if sim.config.accepts_key(api_key) else bad_key(api_key)


_UNSUPPORTED = {
    "vision": ("Invalid content type. image_url is only supported by certain models.",
               "messages", None),
    "tools": ("Unsupported parameter: 'tools' is not supported with this model.", "tools",
              "unsupported_parameter"),
    "json_object": ("Invalid parameter: 'response_format' of type 'json_object' is not "
                    "supported with this model.", "response_format", None),
    "json_schema": ("Invalid parameter: 'response_format' of type 'json_schema' is not "
                    "supported with this model.", "response_format", None),
    "n": ("Unsupported value: 'n' does not support values other than 1 with this model.", "n",
          "unsupported_value"),
    "logprobs": ("Unsupported parameter: 'logprobs' is not supported with this model.",
                 "logprobs", "unsupported_parameter"),
}


def unsupported(model: str, feature: str) -> web.Response:
    message, param, code = _UNSUPPORTED[feature]
    return openai_error(400, f"{message} (model: {model})", "invalid_request_error", code=code,
                        param=param)
