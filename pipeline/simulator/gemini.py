"""The simulator's Gemini shape: ``POST /v1beta/models/{model}:generateContent`` (and the
same under ``/v1``), key in ``x-goog-api-key`` or ``?key=``, answering with Google's
candidates, usage metadata and error bodies.

As Google does, an invalid key is a 400 ``INVALID_ARGUMENT`` whose details carry the
reason ``API_KEY_INVALID`` (a missing one a 403), and a rate limit says when to retry in a
``RetryInfo`` detail rather than a Retry-After header.

Several candidates (``candidateCount``) are listed each with its index; a tool call is a
``functionCall`` part (finish reason ``STOP``, as Gemini gives it). The request is read in
gemini_request.py.

``:streamGenerateContent?alt=sse`` streams the answer as Gemini 2.x does: one ``data:``
event per piece of text (a functionCall whole, in one event), each a whole response whose
usage metadata counts the prompt; a candidate's last piece carries its finish reason and
the last event the full usage. Events end in CRLF pairs, as
Google's do. Without ``alt=sse`` Google streams a JSON array instead, which is not
simulated (400). Refusals come before the stream, as statuses; a malformed fault cuts the
stream part-way.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from pipeline.simulator.answers import stream_steps
from pipeline.simulator.chat import ChatRequest, Choice
from pipeline.simulator.core import (CallPlan, InvalidRequest, Outcome, Simulator,
                                     claimed_completion_tokens, retry_seconds, truncated_json)
from pipeline.simulator.gemini_request import parse_generate_request
from pipeline.simulator.shape import NativeShape, PacedStream

KEY_HEADER = "x-goog-api-key"
API_VERSIONS = ("v1beta", "v1")
METHODS = ("generateContent", "streamGenerateContent")
STREAM_METHOD = ":streamGenerateContent"
_FINISH_REASONS = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "INVALID_ARGUMENT",
                 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "INTERNAL",
                 503: "UNAVAILABLE"}
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def gemini_routes(sim: Simulator) -> list[web.RouteDef]:
    shape = GeminiShape(sim)
    return [web.post(f"/{version}/models/{{model}}:{method}", shape.handle)
            for version in API_VERSIONS for method in METHODS]


def google_error(status: int, message: str, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message,
                             "status": _STATUS_NAMES.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=status, headers=headers)


class GeminiShape(NativeShape):
    def api_key(self, request: web.Request) -> str | None:
        key = request.headers.get(KEY_HEADER) or request.query.get("key") or ""
        return key.strip() or None

    def model_of(self, request: web.Request, body: Any) -> str | None:
        return request.match_info["model"]

    def parse(self, request: web.Request, body: dict[str, Any], model: str | None) -> ChatRequest:
        stream = request.path.endswith(STREAM_METHOD)
        if stream and request.query.get("alt") != "sse":
            raise InvalidRequest("streamGenerateContent without alt=sse (a JSON array) is not "
                                 "simulated; add ?alt=sse")
        return parse_generate_request(body, model or "", stream)

    def missing_key(self) -> web.Response:
        return google_error(403, "Method doesn't allow unregistered callers (callers without "
                            "established identity). Please use API Key or other form of API "
                            "consumer identity to call this API.")

    def bad_key(self, api_key: str, headers: dict[str, str] | None = None) -> web.Response:
        return google_error(400, "API key not valid. Please pass a valid API key.", [
            {"@type": ERROR_INFO, "reason": "API_KEY_INVALID", "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com"}}], headers=headers)

    def invalid(self, message: str) -> web.Response:
        return google_error(400, message)

    def unsupported(self, model: str, feature: str) -> web.Response:
        return google_error(400, f"{feature} is not supported by models/{model}.")

    def unknown_model(self, model: str) -> web.Response:
        return google_error(404, f"models/{model} is not found for API version v1beta, or is "
                            f"not supported for generateContent. Call ListModels to see the "
                            f"list of available models and their supported methods.")

    def shutting_down(self) -> web.Response:
        return google_error(503, "The service is currently unavailable.")

    def render(self, plan: CallPlan, headers: dict[str, str]) -> web.Response:
        if plan.outcome is Outcome.COMPLETION:
            return web.json_response(generate_body(plan), headers=headers)
        if plan.outcome is Outcome.MALFORMED:
            return truncated_json(generate_body(plan), headers)
        if plan.outcome is Outcome.UNAUTHORIZED:
            return self.bad_key("", headers)
        if plan.outcome is Outcome.RATE_LIMITED:
            retry = retry_seconds(plan.retry_after_s or 0.0)
            return google_error(
                429, f"You exceeded your current quota, please check your plan and billing "
                f"details. Please retry in {retry}s.",
                [{"@type": RETRY_INFO, "retryDelay": f"{retry}s"}], headers=headers)
        if plan.outcome is Outcome.OUTPUT_TOO_LARGE:
            return google_error(
                400, f"Unable to submit request because it has a maxOutputTokens value of "
                f"{plan.requested_completion_tokens} but the supported range is from 1 "
                f"(inclusive) to {plan.profile.max_output_tokens + 1} (exclusive). Update the "
                f"value and try again.", headers=headers)
        if plan.outcome is Outcome.CONTEXT_LENGTH:
            return google_error(400, context_length_message(plan), headers=headers)
        if plan.status == 503:
            return google_error(503, "The model is overloaded. Please try again later.",
                                headers=headers)
        return google_error(plan.status, "An internal error has occurred. Please retry or "
                            "report in https://developers.generativeai.google/guide/"
                            "troubleshooting", headers=headers)

    async def stream(self, stream: PacedStream) -> None:
        plan = stream.plan
        response_id = plan.call_id.partition("-")[2]
        # Gemini sends a functionCall whole, at its start: no argument fragments.
        steps = [s for s in stream_steps(plan.choices) if s.arguments is None]
        last_of = {step.choice: i for i, step in enumerate(steps)}
        position = 0
        async for step, last in stream.paced(steps):
            position += 1
            if step.start is not None:
                part = {"functionCall": _call_json(step.start)}
            else:
                part = {"text": step.text}
            choice = plan.choices[step.choice]
            finish = ({"finishReason": _FINISH_REASONS[choice.finish_reason]}
                      if last_of[step.choice] == position - 1 else {})
            candidate = {"content": {"parts": [part], "role": "model"}, **finish,
                         "index": step.choice}
            await stream.send(sse({"candidates": [candidate],
                                   "usageMetadata": usage_metadata(plan, final=last),
                                   "modelVersion": plan.model, "responseId": response_id}))
        if stream.cut:
            await stream.cut_short(sse(generate_body(plan)))


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\r\n\r\n"


def generate_body(plan: CallPlan) -> dict[str, Any]:
    return {
        "candidates": [{"content": {"parts": _parts(c), "role": "model"},
                        "finishReason": _FINISH_REASONS[c.finish_reason], "index": i}
                       for i, c in enumerate(plan.choices)],
        "usageMetadata": usage_metadata(plan),
        "modelVersion": plan.model,
        "responseId": plan.call_id.partition("-")[2],
    }


def _parts(choice: Choice) -> list[dict[str, Any]]:
    if not choice.tool_calls:
        return [{"text": choice.content or ""}]
    return [{"functionCall": _call_json(call)} for call in choice.tool_calls]


def _call_json(call: Any) -> dict[str, Any]:
    try:
        args = json.loads(call.arguments)
    except ValueError:                     # cut by max_tokens
        args = {}
    return {"name": call.name, "args": args}


def usage_metadata(plan: CallPlan, final: bool = True) -> dict[str, Any]:
    """The call's usage; mid-stream (``final`` False) only the prompt is counted yet."""
    completion = plan.completion_tokens if final else 0
    usage: dict[str, Any] = {"promptTokenCount": plan.prompt_tokens}
    if final:
        usage["candidatesTokenCount"] = completion
    usage["totalTokenCount"] = plan.prompt_tokens + completion
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": plan.prompt_tokens}]
    if plan.cached_tokens:
        usage["cachedContentTokenCount"] = plan.cached_tokens
    return usage


def context_length_message(plan: CallPlan) -> str:
    window = plan.profile.context_window
    # Gemini limits the input alone; when only prompt + max_tokens overflows (or a fault
    # fired on a request that fits), the refusal claims the total as the input.
    tokens = plan.prompt_tokens
    if tokens <= window:
        tokens += claimed_completion_tokens(plan)
    return (f"The input token count ({tokens}) exceeds the maximum number of tokens allowed "
            f"({window}).")
