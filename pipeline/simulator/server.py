"""The provider simulator's HTTP server: answers on loopback like an LLM provider so the
dev stack, integration tests and benchmarks run without keys or network.

A shape-neutral core (``Simulator``) decides what each call does — latency, usage, text,
injected faults — from a seeded RNG; wire shapes render that plan. OpenAI chat
completions lives here; Anthropic Messages (``anthropic.py``) and Gemini generateContent
(``gemini.py``) build on ``NativeShape`` and render the same ``CallPlan`` in their
providers' bodies and error shapes. ``/_sim/*`` is the control plane tests use (faults,
stats, reset).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import re
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from enum import Enum
from typing import Any, Awaitable, Callable

from aiohttp import web

from pipeline.config import ConfigError
from pipeline.routing.tokens import estimate_prompt_tokens
from pipeline.secrets import Secret
from pipeline.simulator.profiles import (ANY_MODEL, FaultKind, FaultSpec, ModelProfile,
                                         SimulatorConfig, parse_faults)

log = logging.getLogger("pipeline.simulator")

LATENCY_HEADER = "x-sim-latency-ms"            # simulated provider time of this response
DRAWN_LATENCY_HEADER = "x-sim-drawn-latency-ms"  # the profile's draw before scale/fixed
CLIENT_CLOSED = 499          # status recorded for a call whose client left (nginx's code)
NO_MODEL = "(none)"          # stats bucket for calls whose body names no model
MAX_CALL_TIMES = 10_000      # call times kept per (model, key) for rate measurements
PROMPT_CACHE_ENTRIES = 10_000
MAX_BODY_BYTES = 64 * 2**20  # a 1M-token prompt is ~4 MB of JSON
POLL_S = 0.05                # how often a hanging call checks for its client


# --------------------------------------------------------------------------- the core

class Outcome(Enum):
    COMPLETION = "completion"
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    OUTPUT_TOO_LARGE = "output_too_large"
    CONTEXT_LENGTH = "context_length"
    SERVER_ERROR = "server_error"
    MALFORMED = "malformed"


# A provider refuses these before doing any work, so they come back at once.
IMMEDIATE = frozenset({Outcome.UNAUTHORIZED, Outcome.RATE_LIMITED,
                       Outcome.OUTPUT_TOO_LARGE, Outcome.CONTEXT_LENGTH})


@dataclass(frozen=True)
class Message:
    role: str
    text: str


@dataclass(frozen=True)
class ChatRequest:
    """A chat call in no particular wire shape."""
    model: str                     # provider-side name as sent
    messages: tuple[Message, ...]
    max_tokens: int | None
    stream: bool = False


@dataclass(frozen=True)
class CallPlan:
    """What one call does, decided up front so every shape renders it the same way."""
    model: str
    profile: ModelProfile
    call_index: int                # n-th call to this model since start or reset
    call_id: str
    outcome: Outcome
    status: int
    hang_s: float | None           # held before anything else; inf = until the client leaves
    latency_ms: float              # provider time after any hang (0 for immediate outcomes)
    ttft_ms: float                 # first streamed chunk, within latency_ms
    drawn_latency_ms: float        # the profile draw, before latency_scale / fixed latency
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    requested_completion_tokens: int   # max_tokens as asked (for context-length messages)
    finish_reason: str
    content: str
    retry_after_s: float | None = None

    @property
    def reported_latency_ms(self) -> int:
        hang = self.hang_s if self.hang_s is not None and math.isfinite(self.hang_s) else 0.0
        return round(hang * 1000 + self.latency_ms)


class Simulator:
    """Shared state of one simulator: faults, per-model call counters, stats, prompt cache."""

    def __init__(self, config: SimulatorConfig):
        self.config = config
        self.faults: dict[str, FaultSpec] = dict(config.faults)
        self.stats = CallStats()
        self.closing = False
        self._calls: Counter[str] = Counter()
        self._prompt_cache = PromptCache(config, PROMPT_CACHE_ENTRIES)

    # -- control plane

    def set_faults(self, faults: dict[str, FaultSpec]) -> None:
        unknown = set(faults) - set(self.config.model_names()) - {ANY_MODEL}
        if unknown:
            raise KeyError(f"faults for unknown models {sorted(unknown)}")
        self.faults = dict(faults)

    def reset(self) -> None:
        """Forget stats, call counters and cached prompts: the next calls replay from the
        start of the seeded sequence. Faults stay."""
        self.stats.clear()
        self._calls.clear()
        self._prompt_cache.clear()

    def fault_for(self, model: str, profile: ModelProfile) -> FaultSpec | None:
        return self.faults.get(model) or self.faults.get(profile.name) or self.faults.get(ANY_MODEL)

    # -- one call

    def plan(self, request: ChatRequest, key_fingerprint: str) -> CallPlan:
        profile = self.config.profile(request.model)
        if profile is None:
            raise KeyError(f"no profile for model {request.model!r}")
        index = self._calls[request.model]
        self._calls[request.model] += 1
        # Draws happen in a fixed order whatever the outcome, so the same sequence of calls
        # gets the same answers whichever faults are switched on.
        rng = random.Random(f"{self.config.seed}:{request.model}:{index}")
        drawn_ms = rng.lognormvariate(*profile.lognormal())
        error_draw, fault_draw, length_draw = rng.random(), rng.random(), rng.random()
        call_id = f"chatcmpl-{rng.getrandbits(96):024x}"
        text_rng = random.Random(rng.getrandbits(64))

        prompt_tokens = estimate_prompt_tokens(m.text for m in request.messages)
        fault = self.fault_for(request.model, profile)
        fired = (fault if fault is not None and fault_draw < fault.rate
                 and fault.applies_to(key_fingerprint) else None)
        kind = fired.kind if fired is not None else None

        room = profile.context_window - prompt_tokens
        limit = request.max_tokens if request.max_tokens is not None else min(
            profile.max_output_tokens, max(room, 0))
        lengths = self.config.completion_tokens
        wanted = _log_uniform(length_draw, lengths.min_tokens, lengths.max_tokens)
        completion_tokens = min(wanted, limit)

        outcome, status = self._outcome(request, profile, fired, room, error_draw)
        latency_ms, ttft_ms = self._latency(profile, drawn_ms)
        if outcome in IMMEDIATE:
            latency_ms = ttft_ms = 0.0
        hang_s = None
        if kind is FaultKind.HANG:
            hang_s = fired.hang_s if fired.hang_s is not None else math.inf

        cached_tokens, content = 0, ""
        if outcome in (Outcome.COMPLETION, Outcome.MALFORMED):
            cached_tokens = self._prompt_cache.lookup_and_store(
                profile.name, key_fingerprint, request.messages)
            chinese = _mostly_chinese(_last_user_text(request.messages))
            content = filler_text(text_rng, completion_tokens, chinese=chinese,
                                  truncated=wanted > limit)
        return CallPlan(
            model=request.model, profile=profile, call_index=index, call_id=call_id,
            outcome=outcome, status=status, hang_s=hang_s, latency_ms=latency_ms,
            ttft_ms=ttft_ms, drawn_latency_ms=drawn_ms, prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens, completion_tokens=completion_tokens,
            requested_completion_tokens=request.max_tokens or 0,
            finish_reason="length" if wanted > limit else "stop", content=content,
            retry_after_s=fired.retry_after_s if kind is FaultKind.RATE_LIMIT else None)

    def _outcome(self, request: ChatRequest, profile: ModelProfile, fired: FaultSpec | None,
                 room: int, error_draw: float) -> tuple[Outcome, int]:
        """Checked in a provider's order: key, rate limit, request limits, then the work."""
        kind = fired.kind if fired is not None else None
        if kind is FaultKind.UNAUTHORIZED:
            return Outcome.UNAUTHORIZED, 401
        if kind is FaultKind.RATE_LIMIT:
            return Outcome.RATE_LIMITED, 429
        if request.max_tokens is not None and request.max_tokens > profile.max_output_tokens:
            return Outcome.OUTPUT_TOO_LARGE, 400
        if (kind is FaultKind.CONTEXT_LENGTH or room <= 0
                or (request.max_tokens is not None and request.max_tokens > room)):
            return Outcome.CONTEXT_LENGTH, 400
        if kind is FaultKind.SERVER_ERROR:
            return Outcome.SERVER_ERROR, fired.status
        if kind is FaultKind.MALFORMED:
            return Outcome.MALFORMED, 200
        if self.config.base_errors and error_draw < profile.error_rate:
            return Outcome.SERVER_ERROR, 500
        return Outcome.COMPLETION, 200

    def _latency(self, profile: ModelProfile, drawn_ms: float) -> tuple[float, float]:
        """(total, ttft) in simulated ms; TTFT scales with the draw so slow calls start late."""
        ttft_share = min(profile.ttft_ms / profile.mean_ms, 1.0)
        if self.config.fixed_latency_ms is not None:
            total = self.config.fixed_latency_ms
            return total, total * ttft_share
        scale = self.config.latency_scale
        return drawn_ms * scale, drawn_ms * ttft_share * scale

    async def hold(self, request: web.BaseRequest, seconds: float) -> bool:
        """Wait ``seconds`` (inf = forever). False as soon as the client has gone or the
        server is shutting down; polling makes this work under any aiohttp runner."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            transport = request.transport
            if self.closing or transport is None or transport.is_closing():
                return False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return True
            await asyncio.sleep(min(remaining, POLL_S))


class PromptCache:
    """OpenAI-style prompt caching: a conversation prefix seen before (per model and key)
    is reported as cached tokens, in increments, above a minimum size."""

    def __init__(self, config: SimulatorConfig, capacity: int):
        self._rule = config.prompt_cache
        self._capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def lookup_and_store(self, profile: str, key_fingerprint: str,
                         messages: tuple[Message, ...]) -> int:
        """Cached tokens for this prompt: the longest earlier prompt it starts with."""
        running = hashlib.sha256(f"{profile}\0{key_fingerprint}".encode())
        digests = []
        for message in messages:
            running.update(f"{message.role}\0{message.text}\0".encode())
            digests.append(running.copy().hexdigest())
        cached = 0
        for count in range(len(digests), 0, -1):
            if digests[count - 1] in self._seen:
                self._seen.move_to_end(digests[count - 1])
                cached = self._prefix_tokens(messages[:count])
                break
        if self._prefix_tokens(messages) >= self._rule.min_tokens:
            self._seen[digests[-1]] = None
            self._seen.move_to_end(digests[-1])
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
        if cached < self._rule.min_tokens:
            return 0
        return cached // self._rule.increment_tokens * self._rule.increment_tokens

    @staticmethod
    def _prefix_tokens(messages: tuple[Message, ...]) -> int:
        return estimate_prompt_tokens(m.text for m in messages) - estimate_prompt_tokens([])

    def clear(self) -> None:
        self._seen.clear()


def _masked(key: str | None) -> str:
    if not key or len(key) < 12:
        return "***"
    return key[:3] + "*" * (len(key) - 7) + key[-4:]


def key_fingerprint(api_key: str | None) -> str:
    """A short, stable stand-in for an API key: the only form a key is ever shown in, the
    same one the pipeline logs for its keys (a sha256 prefix)."""
    if not api_key:
        return "none"
    return Secret(api_key).fingerprint


class CallStats:
    """Calls per model and per (model, key fingerprint): counts by status and recent call
    times in ms since the simulator started, so tests can measure request rates."""

    def __init__(self, max_times: int = MAX_CALL_TIMES):
        self.started_at = time.time()
        self._origin = time.monotonic()
        self._max_times = max_times
        self._models: dict[str, dict[str, Any]] = {}

    def now_ms(self) -> int:
        return int((time.monotonic() - self._origin) * 1000)

    def track(self, model: str, fingerprint: str) -> "TrackedCall":
        at = self.now_ms()
        per_model = self._models.setdefault(model, {"calls": 0, "by_status": Counter(), "keys": {}})
        per_key = per_model["keys"].setdefault(fingerprint, {
            "calls": 0, "by_status": Counter(), "times": deque(maxlen=self._max_times)})
        for bucket in (per_model, per_key):
            bucket["calls"] += 1
        per_key["times"].append(at)
        return TrackedCall(per_model["by_status"], per_key["by_status"])

    def clear(self) -> None:
        self._models.clear()

    def snapshot(self) -> dict[str, Any]:
        models = {}
        for model, per_model in sorted(self._models.items()):
            keys = {}
            for fingerprint, per_key in sorted(per_model["keys"].items()):
                times = list(per_key["times"])
                keys[fingerprint] = {
                    "calls": per_key["calls"],
                    "by_status": _status_counts(per_key["by_status"]),
                    "first_ms": times[0] if times else None,
                    "last_ms": times[-1] if times else None,
                    "call_times_ms": times,
                }
            models[model] = {"calls": per_model["calls"],
                             "by_status": _status_counts(per_model["by_status"]), "keys": keys}
        return {"started_at": self.started_at, "now_ms": self.now_ms(), "models": models}


class TrackedCall:
    """Records the final status of one call: CLIENT_CLOSED when it ended without one (the
    client went away, the handler was cancelled), 500 if the simulator itself failed."""

    def __init__(self, *counters: Counter):
        self._counters = counters
        self.status: int | None = None

    def __enter__(self) -> "TrackedCall":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and not issubclass(exc_type, (asyncio.CancelledError,
                                                              ConnectionError)):
            status = 500
        else:
            status = self.status if self.status is not None else CLIENT_CLOSED
        for counter in self._counters:
            counter[status] += 1


def _status_counts(counter: Counter) -> dict[str, int]:
    return {str(status): n for status, n in sorted(counter.items())}


# ---------------------------------------------------------------- text and tokens

_ENGLISH_SENTENCES = (
    "There are a few ways to approach this, and the right one depends on your constraints.",
    "First, measure where the time and the money actually go before changing anything.",
    "A smaller model often answers simple questions just as well at a fraction of the cost.",
    "Caching repeated prompts avoids paying twice for the same answer.",
    "Retries should back off exponentially and respect any Retry-After the provider sends.",
    "If one provider fails, routing the request to a second one keeps the product working.",
    "Keep an eye on latency percentiles rather than averages, since the tail is what users feel.",
    "Batching small requests together can raise throughput without hurting quality.",
    "Set a budget per team so a traffic spike cannot turn into a runaway bill.",
    "In practice most teams start simple and refine the setup as traffic grows.",
    "Let me know if you would like a more detailed example.",
    "To summarise, start with clear limits, good metrics and a fallback plan.",
)
_CHINESE_PHRASES = (
    "这个问题可以从几个方面来看", "首先需要明确目标", "其次要考虑成本和延迟", "我们建议先做测量",
    "再根据结果调整策略", "缓存和批处理都能降低费用", "重试时要注意退避", "路由应当兼顾质量",
    "在实际项目中", "大多数团队会从简单方案开始", "随着流量增长逐步优化", "同时监控错误率和预算",
)


def filler_text(rng: random.Random, tokens: int, *, chinese: bool, truncated: bool) -> str:
    """Plausible prose of about ``tokens`` tokens by the project's estimate. A finished
    answer ends on a sentence; a truncated one stops mid-sentence, as max_tokens cuts it."""
    if tokens <= 0:
        return ""
    if chinese:                  # one token per character
        def sentence() -> str:
            return "，".join(rng.sample(_CHINESE_PHRASES, rng.randint(1, 3))) + "。"
        budget, separator = tokens, ""
    else:                        # ~4 characters per token
        def sentence() -> str:
            return rng.choice(_ENGLISH_SENTENCES)
        budget, separator = tokens * 4, " "
    sentences = [sentence()]
    while len(separator.join(sentences)) < budget:
        sentences.append(sentence())
    text = separator.join(sentences)
    if truncated:
        cut = text.rfind(" ", 0, budget + 1) if separator else -1
        return text[:cut] if cut > 0 else text[:budget]
    shorter = separator.join(sentences[:-1])
    return shorter if shorter and budget - len(shorter) < len(text) - budget else text


def _log_uniform(u: float, low: int, high: int) -> int:
    return round(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))


def _last_user_text(messages: tuple[Message, ...]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.text
    return ""


def _mostly_chinese(text: str) -> bool:
    visible = [ch for ch in text if not ch.isspace()]
    if not visible:
        return False
    han = sum(1 for ch in visible if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf")
    return han * 2 > len(visible)


def stream_pieces(text: str) -> list[str]:
    """Stream deltas of about a token each: a word with its space, or two Chinese characters."""
    if _mostly_chinese(text):
        return [text[i:i + 2] for i in range(0, len(text), 2)]
    return re.findall(r"\S+\s*", text)


# ------------------------------------------------------- OpenAI chat completions shape

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class ClientGone(Exception):
    """The client disconnected mid-answer; ``response`` is what was being sent."""

    def __init__(self, response: web.StreamResponse):
        super().__init__("client disconnected")
        self.response = response


class InvalidRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


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
        if _bearer_key(request) is None:
            return _missing_key()
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "llmpipe-simulator"}
                for name in self.sim.config.model_names()]
        return web.json_response({"object": "list", "data": data})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        api_key = _bearer_key(request)
        fingerprint = key_fingerprint(api_key)
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
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
            return _missing_key()
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
        if plan.outcome is Outcome.COMPLETION and chat.stream:
            return await self._stream(request, plan, headers, include_usage)
        await asyncio.sleep(plan.latency_ms / 1000)
        return self._render(plan, headers, chat.stream, api_key)

    def _render(self, plan: CallPlan, headers: dict[str, str], stream: bool,
                api_key: str | None = None) -> web.Response:
        if plan.outcome is Outcome.COMPLETION:
            return web.json_response(completion_body(plan), headers=headers)
        if plan.outcome is Outcome.MALFORMED:
            text = json.dumps(completion_body(plan))
            if stream:      # an event stream cut off mid-chunk
                return web.Response(body=f"data: {text[:len(text) // 2]}".encode(),
                                    content_type="text/event-stream", headers=headers)
            return web.Response(body=text[:len(text) // 2].encode(),
                                content_type="application/json", headers=headers)
        if plan.outcome is Outcome.UNAUTHORIZED:
            # Like OpenAI: the key masked but for its head and last four characters.
            return openai_error(401, f"Incorrect API key provided: {_masked(api_key)}. You can "
                                "find your API key at https://platform.openai.com/account/api-keys.",
                                "invalid_request_error", code="invalid_api_key", headers=headers)
        if plan.outcome is Outcome.RATE_LIMITED:
            retry = plan.retry_after_s or 0.0
            headers = {**headers, "retry-after": _seconds(retry),
                       "retry-after-ms": str(round(retry * 1000))}
            return openai_error(
                429, f"Rate limit reached for {plan.model} on requests per min (RPM). "
                f"Please try again in {_seconds(retry)}s.", "requests",
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

    async def _stream(self, request: web.Request, plan: CallPlan, headers: dict[str, str],
                      include_usage: bool) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(plan.ttft_ms / 1000)
        response = web.StreamResponse(status=200, headers={
            **headers, "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache"})
        await response.prepare(request)
        base = {"id": plan.call_id, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": plan.model, "system_fingerprint": "fp_simulator"}

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                          "finish_reason": finish}]}
            if include_usage:
                chunk["usage"] = None
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        try:
            await send({"role": "assistant", "content": "", "refusal": None})
            pieces = stream_pieces(plan.content)
            gap_s = max(plan.latency_ms - plan.ttft_ms, 0.0) / 1000 / max(len(pieces), 1)
            for i, piece in enumerate(pieces, 1):
                # Paced against deadlines so many tiny gaps still add up to the planned total.
                delay = started + plan.ttft_ms / 1000 + i * gap_s - loop.time()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                await send({"content": piece})
            await send({}, plan.finish_reason)
            if include_usage:
                final = {**base, "choices": [], "usage": usage_body(plan)}
                await response.write(f"data: {json.dumps(final)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            raise ClientGone(response) from None
        return response


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


def _bearer_key(request: web.Request) -> str | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def _missing_key() -> web.Response:
    return openai_error(401, "You didn't provide an API key. You need to provide your API key "
                        "in an Authorization header using Bearer auth (i.e. Authorization: "
                        "Bearer YOUR_KEY).", "invalid_request_error", code="invalid_api_key")


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# ------------------------------------------------------- shared by the native shapes

class NativeShape:
    """The call flow of a provider's native API over the shared core: stats, the plan,
    hangs and latency are the same for every shape. A subclass reads the key, the model and
    the request in its provider's terms and renders plans and refusals in its error shape;
    each of its methods answers one question (see anthropic.py, gemini.py)."""

    def __init__(self, sim: Simulator):
        self.sim = sim

    # -- the provider's terms

    def api_key(self, request: web.Request) -> str | None:
        raise NotImplementedError

    def model_of(self, request: web.Request, body: Any) -> str | None:
        raise NotImplementedError

    def parse(self, request: web.Request, body: dict[str, Any], model: str | None) -> ChatRequest:
        """The body as a ChatRequest; InvalidRequest for anything the provider would refuse."""
        raise NotImplementedError

    def missing_key(self) -> web.Response:
        raise NotImplementedError

    def invalid(self, message: str) -> web.Response:
        raise NotImplementedError

    def unknown_model(self, model: str) -> web.Response:
        raise NotImplementedError

    def shutting_down(self) -> web.Response:
        raise NotImplementedError

    def render(self, plan: CallPlan, headers: dict[str, str]) -> web.Response:
        """Every outcome but a hang (handled before): completion, malformed body, refusals."""
        raise NotImplementedError

    # -- the flow

    async def handle(self, request: web.Request) -> web.StreamResponse:
        api_key = self.api_key(request)
        fingerprint = key_fingerprint(api_key)
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        model = self.model_of(request, body)
        with self.sim.stats.track(model if isinstance(model, str) and model else NO_MODEL,
                                  fingerprint) as call:
            try:
                response = await self._answer(request, api_key, fingerprint, body, model)
            except ClientGone as gone:
                return gone.response        # status left unset: recorded as client closed
            call.status = response.status
            return response

    async def _answer(self, request: web.Request, api_key: str | None, fingerprint: str,
                      body: Any, model: str | None) -> web.StreamResponse:
        if api_key is None:
            return self.missing_key()
        if not isinstance(body, dict):
            return self.invalid("The request body is not valid JSON.")
        try:
            chat = self.parse(request, body, model)
        except InvalidRequest as exc:
            return self.invalid(exc.message)
        if self.sim.config.profile(chat.model) is None:
            return self.unknown_model(chat.model)

        plan = self.sim.plan(chat, fingerprint)
        log.debug("sim.call shape=%s model=%s key=%s call=%d outcome=%s status=%d "
                  "latency_ms=%d", type(self).__name__, plan.model, fingerprint,
                  plan.call_index, plan.outcome.value, plan.status, plan.reported_latency_ms)
        if plan.hang_s is not None and not await self.sim.hold(request, plan.hang_s):
            if not self.sim.closing:
                raise ClientGone(web.Response(status=CLIENT_CLOSED))
            return self.shutting_down()
        headers = {LATENCY_HEADER: str(plan.reported_latency_ms),
                   DRAWN_LATENCY_HEADER: str(round(plan.drawn_latency_ms))}
        await asyncio.sleep(plan.latency_ms / 1000)
        return self.render(plan, headers)


def truncated_json(body: dict[str, Any], headers: dict[str, str]) -> web.Response:
    """A 200 whose JSON body stops half-way, as a connection cut mid-answer leaves it."""
    text = json.dumps(body)
    return web.Response(body=text[:len(text) // 2].encode(), content_type="application/json",
                        headers=headers)


def claimed_completion_tokens(plan: CallPlan) -> int:
    """The completion a context-length refusal names: as asked, or, when an injected
    fault hits a request that fits, the least that would not."""
    return max(plan.requested_completion_tokens,
               plan.profile.context_window - plan.prompt_tokens + 1)


# ----------------------------------------------------------------- control plane

def control_routes(sim: Simulator) -> list[web.RouteDef]:
    async def get_faults(request: web.Request) -> web.Response:
        return web.json_response(_faults_json(sim))

    async def put_faults(request: web.Request) -> web.Response:
        try:
            data = json.loads(await request.read())
            faults = parse_faults(data, "PUT /_sim/faults", "", set(sim.config.model_names()))
        except ValueError as exc:        # ConfigError and JSON errors alike
            detail = str(exc) if isinstance(exc, ConfigError) else f"invalid JSON: {exc}"
            return web.json_response({"error": detail}, status=400)
        sim.set_faults(faults)
        log.info("sim.faults %s", " ".join(f"{m}={f.kind.value}:{f.rate:g}"
                                            for m, f in sorted(faults.items())) or "none")
        return web.json_response(_faults_json(sim))

    async def delete_faults(request: web.Request) -> web.Response:
        sim.set_faults({})
        log.info("sim.faults none")
        return web.json_response({})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(sim.stats.snapshot())

    async def reset(request: web.Request) -> web.Response:
        sim.reset()
        return web.json_response({"reset": True})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "models": len(sim.config.model_names())})

    return [web.get("/_sim/faults", get_faults), web.put("/_sim/faults", put_faults),
            web.delete("/_sim/faults", delete_faults), web.get("/_sim/stats", stats),
            web.post("/_sim/reset", reset), web.get("/healthz", healthz)]


def _faults_json(sim: Simulator) -> dict[str, Any]:
    return {model: spec.to_json() for model, spec in sorted(sim.faults.items())}


# ------------------------------------------------------------------- app and runner

SIMULATOR = web.AppKey("simulator", Simulator)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _latency_header(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer says how much simulated provider time it carries (0 unless set)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.setdefault(LATENCY_HEADER, "0")
        raise
    if not response.prepared:
        response.headers.setdefault(LATENCY_HEADER, "0")
    return response


def build_app(config: SimulatorConfig) -> web.Application:
    sim = Simulator(config)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_latency_header])
    app[SIMULATOR] = sim
    # Imported here: the shape modules build on this one.
    from pipeline.simulator.anthropic import anthropic_routes
    from pipeline.simulator.gemini import gemini_routes
    from pipeline.simulator.batches import batch_routes

    app.add_routes(openai_routes(sim))
    app.add_routes(anthropic_routes(sim))
    app.add_routes(gemini_routes(sim))
    app.add_routes(batch_routes(sim))        # OpenAI files+batches, Anthropic message batches
    app.add_routes(control_routes(sim))

    async def close(_: web.Application) -> None:
        sim.closing = True          # releases hanging calls so shutdown does not wait on them

    app.on_shutdown.append(close)
    return app


class RunningSimulator:
    """A simulator serving in this process; ``url`` has no path (clients add ``/v1``)."""

    def __init__(self, app: web.Application, runner: web.AppRunner, host: str, port: int):
        self.app, self.host, self.port = app, host, port
        self._runner: web.AppRunner | None = runner

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI or Anthropic client takes as its base URL."""
        return f"{self.url}/v1"

    @property
    def gemini_base_url(self) -> str:
        """What a Gemini client takes as its base URL (``/v1`` answers too)."""
        return f"{self.url}/v1beta"

    @property
    def simulator(self) -> Simulator:
        return self.app[SIMULATOR]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("sim.stopped url=%s", self.url)

    async def __aenter__(self) -> "RunningSimulator":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


async def start_simulator(config: SimulatorConfig, host: str = "127.0.0.1",
                          port: int = 0) -> RunningSimulator:
    """Serve ``config`` on ``host:port`` (0 = a free port) until ``stop()``."""
    app = build_app(config)
    # Cancel a handler when its client disconnects (a hung call must not outlive it) and
    # do not wait a minute for in-flight calls on stop.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    running = RunningSimulator(app, runner, host, bound_port)
    log.info("sim.started url=%s models=%d seed=%d latency_scale=%g fixed_latency_ms=%s "
             "base_errors=%s", running.url, len(config.model_names()), config.seed,
             config.latency_scale, config.fixed_latency_ms, config.base_errors)
    return running
