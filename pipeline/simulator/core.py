"""The provider simulator's shape-neutral core: what each call does — latency, usage,
text, injected faults — decided from a seeded RNG (``Simulator`` and its ``CallPlan``),
prompt-cache hits, per-key and per-model call stats, and the helpers every wire shape
shares. The shapes (openai.py, anthropic.py, gemini.py) render a plan in their
providers' bodies and error shapes; server.py mounts them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aiohttp import web

from pipeline.routing.tokens import estimate_prompt_tokens
from pipeline.secrets import Secret
from pipeline.simulator.answers import compose
from pipeline.simulator.chat import ChatRequest, Choice, Message
from pipeline.simulator.profiles import (ANY_MODEL, FaultKind, FaultSpec, ModelProfile,
                                         SimulatorConfig)
from pipeline.simulator.text import log_uniform

log = logging.getLogger("pipeline.simulator")

LATENCY_HEADER = "x-sim-latency-ms"            # simulated provider time of this response
DRAWN_LATENCY_HEADER = "x-sim-drawn-latency-ms"  # the profile's draw before scale/fixed
CLIENT_CLOSED = 499          # status recorded for a call whose client left (nginx's code)
NO_MODEL = "(none)"          # stats bucket for calls whose body names no model
MAX_CALL_TIMES = 10_000      # call times kept per (model, key) for rate measurements
PROMPT_CACHE_ENTRIES = 10_000
MAX_BODY_BYTES = 64 * 2**20  # default; SimulatorConfig.max_body_bytes
POLL_S = 0.05                # how often a hanging call checks for its client
REQUESTS_KEPT = 500          # latest chat (and OpenAI embedding) bodies: GET /_sim/requests


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
    choices: tuple[Choice, ...]    # completion_tokens counts them all
    retry_after_s: float | None = None
    top_logprobs: int | None = None  # logprobs asked for (OpenAI): how many alternatives

    @property
    def content(self) -> str:
        """The first choice's text ('' for tool calls)."""
        return self.choices[0].content or ""

    @property
    def finish_reason(self) -> str:
        return self.choices[0].finish_reason

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
        # The latest chat bodies as received, for tests that check nothing was dropped.
        self.requests: deque[Any] = deque(maxlen=REQUESTS_KEPT)

    # -- control plane

    def set_faults(self, faults: dict[str, FaultSpec]) -> None:
        unknown = set(faults) - set(self.config.model_names()) - {ANY_MODEL}
        if unknown:
            raise KeyError(f"faults for unknown models {sorted(unknown)}")
        self.faults = dict(faults)

    def reset(self) -> None:
        """Forget stats, call counters, cached prompts and kept bodies: the next calls
        replay from the start of the seeded sequence. Faults stay."""
        self.stats.clear()
        self._calls.clear()
        self._prompt_cache.clear()
        self.requests.clear()

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
        if request.repeatable is not None:
            # Same body, same answer: the text and its length come from the body alone.
            text_rng = random.Random(f"{profile.name}:{request.repeatable}")
            length_draw = text_rng.random()

        prompt_tokens = estimate_prompt_tokens(
            m.text + "".join(c.name + c.arguments for c in m.tool_calls)
            for m in request.messages) + request.extra_prompt_tokens
        fault = self.fault_for(request.model, profile)
        fired = (fault if fault is not None and fault_draw < fault.rate
                 and fault.applies_to(key_fingerprint) else None)
        kind = fired.kind if fired is not None else None

        room = profile.context_window - prompt_tokens
        limit = request.max_tokens if request.max_tokens is not None else min(
            profile.max_output_tokens, max(room, 0))
        lengths = self.config.completion_tokens
        wanted = log_uniform(length_draw, lengths.min_tokens, lengths.max_tokens)
        completion_tokens = min(wanted, limit)

        outcome, status = self._outcome(request, profile, fired, room, error_draw)
        latency_ms, ttft_ms = self._latency(profile, drawn_ms)
        if outcome in IMMEDIATE:
            latency_ms = ttft_ms = 0.0
        hang_s = None
        if kind is FaultKind.HANG:
            hang_s = fired.hang_s if fired.hang_s is not None else math.inf

        cached_tokens = 0
        choices: tuple[Choice, ...] = (
            Choice("", "length" if wanted > limit else "stop", completion_tokens),)
        if outcome in (Outcome.COMPLETION, Outcome.MALFORMED):
            cached_tokens = self._prompt_cache.lookup_and_store(
                profile.name, key_fingerprint, request.messages)
            choices = compose(request, text_rng, wanted, limit,
                              (lengths.min_tokens, lengths.max_tokens), request.call_prefix)
            completion_tokens = sum(c.completion_tokens for c in choices)
        return CallPlan(
            model=request.model, profile=profile, call_index=index, call_id=call_id,
            outcome=outcome, status=status, hang_s=hang_s, latency_ms=latency_ms,
            ttft_ms=ttft_ms, drawn_latency_ms=drawn_ms, prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens, completion_tokens=completion_tokens,
            requested_completion_tokens=request.max_tokens or 0, choices=choices,
            retry_after_s=fired.retry_after_s if kind is FaultKind.RATE_LIMIT else None,
            top_logprobs=request.top_logprobs if request.logprobs else None)

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


def masked_key(key: str | None) -> str:
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
        if isinstance(exc, web.HTTPException):      # e.g. a body over the size limit
            status = exc.status
        elif exc_type is not None and not issubclass(exc_type, (asyncio.CancelledError,
                                                                ConnectionError)):
            status = 500
        else:
            status = self.status if self.status is not None else CLIENT_CLOSED
        for counter in self._counters:
            counter[status] += 1


def _status_counts(counter: Counter) -> dict[str, int]:
    return {str(status): n for status, n in sorted(counter.items())}


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


def bearer_key(request: web.Request) -> str | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


async def json_body(request: web.Request) -> Any:
    """The request's body parsed as JSON, or None when it is not JSON."""
    try:
        return json.loads(await request.read())
    except ValueError:
        return None


def retry_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


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
