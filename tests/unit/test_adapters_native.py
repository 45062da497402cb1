"""The native Anthropic Messages and Gemini generateContent adapters: what they send, how
they read answers, usage and errors (httpx.MockTransport), and a round trip through the
provider simulator's native shapes on loopback, faults included."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import pytest

from pipeline.catalog import load_catalog
from pipeline.providers.deployments import ADAPTERS, Deployment, load_deployments
from pipeline.errors import GatewayError
from pipeline.events.models import (ChatMessage, GenerationParams, Request, RouteDecision,
                                    RoutedRequest)
from pipeline.providers import (ADAPTER_CLASSES, AnthropicAdapter, GeminiAdapter,
                                OpenAIAdapter, make_adapter)
from pipeline.providers.turns import to_turns
from pipeline.routing.tokens import estimate_prompt_tokens
from pipeline.secrets import Secret
from pipeline.simulator import FaultKind, FaultSpec, load_config, start_simulator

KEY = "sk-native-test-0123456789abcdef"
catalog = load_catalog()
deployments = load_deployments(catalog, env={})
LIMITS = deployments.calls
ANTHROPIC = dataclasses.replace(deployments.by_id["anthropic-claude-sonnet-4.5"],
                                adapter="anthropic", base_url="https://api.anthropic.com/v1")
GEMINI = dataclasses.replace(deployments.by_id["google-gemini-2.5-flash"], adapter="gemini",
                             base_url="https://generativelanguage.googleapis.com/v1beta")

CONVERSATION = [
    ChatMessage("system", "Be brief."),
    ChatMessage("system", "Answer in English."),
    ChatMessage("user", "What does caching save?"),
    ChatMessage("user", "Give a number."),
    ChatMessage("assistant", "About half."),
    ChatMessage("tool", '{"hit_rate": 0.5}', name="cache_stats"),
    ChatMessage("user", ""),
    ChatMessage("user", "Thanks, and batching?"),
]


def routed(messages=None, max_tokens: int = 256, end_user: str | None = None,
           fields: dict | None = None, **params) -> RoutedRequest:
    """A routed request of ``messages`` with generation ``params`` and other Request
    ``fields`` (tools, response_format, embedding...)."""
    request = Request(request_id="r-1", tenant="acme",
                      messages=list(CONVERSATION if messages is None else messages),
                      end_user=end_user, params=GenerationParams(**params), **(fields or {}))
    route = RouteDecision(deployment="d", model="m", provider="p", rule="pinned")
    return RoutedRequest(request=request, route=route, max_tokens=max_tokens,
                         reply_topic="llm.responses", received_at_ms=0, routed_at_ms=0)


def mock(adapter_cls, deployment: Deployment, handler):
    return adapter_cls(deployment, Secret(KEY), LIMITS, transport=httpx.MockTransport(handler))


def answering(status: int, body=None, headers=None, sent: list | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        if sent is not None:
            sent.append(request)
        if isinstance(body, (bytes, str)):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)
    return handler


async def fail(adapter) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await adapter.complete(routed())
    await adapter.aclose()
    return info.value


# ------------------------------------------------------------------- turns

def test_turns_split_system_merge_roles_and_label_tool_results():
    turns = to_turns(CONVERSATION)
    assert turns.system == "Be brief.\n\nAnswer in English."
    assert [(t.role, t.text) for t in turns.turns] == [
        ("user", "What does caching save?\n\nGive a number."),
        ("assistant", "About half."),
        ("user", '[result of tool cache_stats]\n{"hit_rate": 0.5}\n\nThanks, and batching?'),
    ]


def test_system_text_alone_is_sent_as_the_users_turn():
    turns = to_turns([ChatMessage("system", "Summarise the policy.")])
    assert turns.system == ""
    assert [(t.role, t.text) for t in turns.turns] == [("user", "Summarise the policy.")]


# ---------------------------------------------------------------- anthropic

def anthropic_ok(**usage):
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "thinking", "thinking": "hmm"},
                        {"type": "text", "text": "Batching "}, {"type": "text", "text": "helps."}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 100, "output_tokens": 20, **usage}}


async def test_anthropic_request_mapping():
    sent: list[httpx.Request] = []
    adapter = mock(AnthropicAdapter, ANTHROPIC, answering(200, anthropic_ok(), sent=sent))
    await adapter.complete(routed(temperature=1.4, top_p=0.9, stop=["\n\nHuman:"],
                                  end_user="user-42"))
    await adapter.complete(routed(top_p=0.8))
    await adapter.aclose()
    first, second = sent
    assert str(first.url) == "https://api.anthropic.com/v1/messages"
    assert first.headers["x-api-key"] == KEY and first.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in first.headers
    body = json.loads(first.content)
    assert body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [
            {"role": "user", "content": "What does caching save?\n\nGive a number."},
            {"role": "assistant", "content": "About half."},
            {"role": "user", "content": '[result of tool cache_stats]\n{"hit_rate": 0.5}'
                                        '\n\nThanks, and batching?'},
        ],
        "temperature": 1.0,              # Anthropic's range is 0..1; top_p dropped with it
        "stop_sequences": ["\n\nHuman:"],
        "metadata": {"user_id": "user-42"},
    }
    second_body = json.loads(second.content)
    assert second_body["top_p"] == 0.8 and "temperature" not in second_body
    assert "metadata" not in second_body and "stop_sequences" not in second_body


async def test_anthropic_usage_counts_cache_reads_and_writes_as_prompt_tokens():
    body = anthropic_ok(cache_read_input_tokens=1024, cache_creation_input_tokens=300)
    adapter = mock(AnthropicAdapter, ANTHROPIC, answering(200, body))
    completion = await adapter.complete(routed())
    await adapter.aclose()
    assert completion.content == "Batching helps."
    assert completion.finish_reason == "stop"
    assert (completion.prompt_tokens, completion.completion_tokens,
            completion.cached_tokens) == (100 + 1024 + 300, 20, 1024)


@pytest.mark.parametrize("stop_reason, finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("refusal", "content_filter"), ("something_new", "something_new")])
async def test_anthropic_stop_reasons(stop_reason, finish):
    body = {**anthropic_ok(), "stop_reason": stop_reason}
    adapter = mock(AnthropicAdapter, ANTHROPIC, answering(200, body))
    assert (await adapter.complete(routed())).finish_reason == finish
    await adapter.aclose()


def anthropic_error(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


@pytest.mark.parametrize("status, body, headers, code, retry_after", [
    (429, anthropic_error("rate_limit_error", "Number of requests has exceeded your rate limit"),
     {"retry-after": "7"}, "rate_limited", 7.0),
    (529, anthropic_error("overloaded_error", "Overloaded"), None, "overloaded", None),
    (503, "<html>unavailable</html>", {"retry-after": "3"}, "overloaded", 3.0),
    (401, anthropic_error("authentication_error", "invalid x-api-key"), None, "auth_error", None),
    (403, anthropic_error("permission_error", "no access to this model"), None, "auth_error",
     None),
    (400, anthropic_error("invalid_request_error",
                          "prompt is too long: 208310 tokens > 200000 maximum"),
     None, "context_length_exceeded", None),
    (400, anthropic_error("invalid_request_error", "input length and `max_tokens` exceed "
                          "context limit: 198000 + 8192 > 200000, decrease input length or "
                          "`max_tokens` and try again"), None, "context_length_exceeded", None),
    (400, anthropic_error("invalid_request_error", "messages.0.role: Input should be 'user'"),
     None, "invalid_request", None),
    (404, anthropic_error("not_found_error", "model: claude-9"), None, "invalid_request", None),
    (500, anthropic_error("api_error", "Internal server error"), None, "provider_error", None),
    (502, "<html>bad gateway</html>", None, "provider_error", None),
])
async def test_anthropic_errors_map_to_codes(status, body, headers, code, retry_after):
    exc = await fail(mock(AnthropicAdapter, ANTHROPIC, answering(status, body, headers)))
    assert (exc.code, exc.status, exc.retry_after_s) == (code, status, retry_after)
    assert ANTHROPIC.id in exc.message


# ------------------------------------------------------------------- gemini

def gemini_ok(finish="STOP", **usage):
    return {"candidates": [{"content": {"role": "model", "parts": [
                {"text": "planning...", "thought": True},
                {"text": "Batching "}, {"text": "helps."}]},
            "finishReason": finish, "index": 0}],
            "usageMetadata": {"promptTokenCount": 1200, "candidatesTokenCount": 20, **usage},
            "modelVersion": "gemini-2.5-flash"}


async def test_gemini_request_mapping_keeps_the_key_out_of_the_url():
    sent: list[httpx.Request] = []
    adapter = mock(GeminiAdapter, GEMINI, answering(200, gemini_ok(), sent=sent))
    await adapter.complete(routed(temperature=1.4, top_p=0.9, stop=["END"], seed=11,
                                  end_user="user-42"))
    await adapter.aclose()
    (request,) = sent
    assert str(request.url) == ("https://generativelanguage.googleapis.com/v1beta/models/"
                                "gemini-2.5-flash:generateContent")
    assert KEY not in str(request.url) and not request.url.query
    assert request.headers["x-goog-api-key"] == KEY and "authorization" not in request.headers
    assert json.loads(request.content) == {
        "systemInstruction": {"parts": [{"text": "Be brief.\n\nAnswer in English."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "What does caching save?\n\nGive a number."}]},
            {"role": "model", "parts": [{"text": "About half."}]},
            {"role": "user", "parts": [{"text": '[result of tool cache_stats]\n'
                                                '{"hit_rate": 0.5}\n\nThanks, and batching?'}]},
        ],
        "generationConfig": {"maxOutputTokens": 256, "temperature": 1.4, "topP": 0.9,
                             "stopSequences": ["END"], "seed": 11},
    }


async def test_gemini_usage_counts_thoughts_as_output_and_skips_thought_text():
    body = gemini_ok(cachedContentTokenCount=1024, thoughtsTokenCount=35)
    adapter = mock(GeminiAdapter, GEMINI, answering(200, body))
    completion = await adapter.complete(routed())
    await adapter.aclose()
    assert completion.content == "Batching helps." and completion.finish_reason == "stop"
    assert (completion.prompt_tokens, completion.completion_tokens,
            completion.cached_tokens) == (1200, 20 + 35, 1024)


@pytest.mark.parametrize("reason, finish", [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
    ("RECITATION", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"),
    ("OTHER", "other")])
async def test_gemini_finish_reasons(reason, finish):
    adapter = mock(GeminiAdapter, GEMINI, answering(200, gemini_ok(finish=reason)))
    assert (await adapter.complete(routed())).finish_reason == finish
    await adapter.aclose()


async def test_gemini_blocked_prompt_is_an_empty_filtered_completion():
    body = {"promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 40, "totalTokenCount": 40}}
    adapter = mock(GeminiAdapter, GEMINI, answering(200, body))
    completion = await adapter.complete(routed())
    await adapter.aclose()
    assert (completion.content, completion.finish_reason) == ("", "content_filter")
    assert (completion.prompt_tokens, completion.completion_tokens) == (40, 0)


def google_error(code: int, status: str, message: str, details=None) -> dict:
    error = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
KEY_INVALID = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
               "domain": "googleapis.com"}


@pytest.mark.parametrize("status, body, headers, code, retry_after", [
    (429, google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", [RETRY_INFO]), None,
     "rate_limited", 37.0),
    (429, google_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted"),
     {"retry-after": "5"}, "rate_limited", 5.0),
    (400, google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API "
                       "key.", [KEY_INVALID]), None, "auth_error", None),
    (403, google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers"),
     None, "auth_error", None),
    (400, google_error(400, "INVALID_ARGUMENT", "The input token count (1054016) exceeds the "
                       "maximum number of tokens allowed (1048576)."), None,
     "context_length_exceeded", None),
    (400, google_error(400, "INVALID_ARGUMENT", "Please use a valid role: user, model."), None,
     "invalid_request", None),
    (503, google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
     None, "overloaded", None),
    (500, google_error(500, "INTERNAL", "An internal error has occurred."), None,
     "provider_error", None),
    (504, google_error(504, "DEADLINE_EXCEEDED", "Deadline exceeded"), None, "timeout", None),
    (502, "<html>bad gateway</html>", None, "provider_error", None),
])
async def test_gemini_errors_map_to_codes(status, body, headers, code, retry_after):
    exc = await fail(mock(GeminiAdapter, GEMINI, answering(status, body, headers)))
    assert (exc.code, exc.status, exc.retry_after_s) == (code, status, retry_after)
    assert GEMINI.id in exc.message


# ------------------------------------------------------- shared failure modes

ADAPTERS_UNDER_TEST = [(AnthropicAdapter, ANTHROPIC), (GeminiAdapter, GEMINI)]


@pytest.mark.parametrize("adapter_cls, deployment", ADAPTERS_UNDER_TEST)
@pytest.mark.parametrize("handler, code", [
    (answering(200, b'{"content": [{"type": "te'), "provider_error"),
    (answering(200, b"[]"), "provider_error"),
    (answering(200, {"unexpected": True}), "provider_error"),
])
async def test_malformed_bodies_are_provider_errors(adapter_cls, deployment, handler, code):
    exc = await fail(mock(adapter_cls, deployment, handler))
    assert exc.code == code and "malformed" in exc.message


@pytest.mark.parametrize("adapter_cls, deployment", ADAPTERS_UNDER_TEST)
@pytest.mark.parametrize("failure, code", [
    (httpx.ReadTimeout, "timeout"), (httpx.ConnectTimeout, "timeout"),
    (httpx.ConnectError, "provider_error")])
async def test_transport_failures_map_to_codes(adapter_cls, deployment, failure, code):
    def handler(request):
        raise failure("boom", request=request)

    exc = await fail(mock(adapter_cls, deployment, handler))
    assert exc.code == code and exc.retryable


@pytest.mark.parametrize("adapter_cls, deployment", ADAPTERS_UNDER_TEST)
@pytest.mark.parametrize("status", [400, 401, 403, 429, 500, 503, 529])
async def test_the_key_never_appears_in_an_error_even_when_the_provider_echoes_it(
        adapter_cls, deployment, status):
    echo = f"Incorrect API key provided: {KEY}; prompt is too long"
    bodies = [anthropic_error("invalid_request_error", echo),
              google_error(status, "INVALID_ARGUMENT", echo), echo]
    for body in bodies:
        exc = await fail(mock(adapter_cls, deployment, answering(status, body)))
        for text in (str(exc), repr(exc), exc.message, *map(str, exc.args)):
            assert KEY not in text, text


# ---------------------------------------------------------------- factory

def test_every_configured_adapter_name_has_an_adapter():
    assert set(ADAPTER_CLASSES) == set(ADAPTERS) == {"openai", "anthropic", "gemini"}


@pytest.mark.parametrize("deployment, cls", [
    (deployments.by_id["openai-gpt-4.1"], OpenAIAdapter), (ANTHROPIC, AnthropicAdapter),
    (GEMINI, GeminiAdapter)])
async def test_make_adapter_chooses_by_the_deployments_adapter(deployment, cls):
    adapter = make_adapter(deployment, Secret(KEY), LIMITS)
    assert type(adapter) is cls and adapter.deployment is deployment
    await adapter.aclose()


def test_make_adapter_refuses_an_unknown_adapter():
    with pytest.raises(ValueError, match="unknown adapter 'cohere'"):
        make_adapter(dataclasses.replace(GEMINI, adapter="cohere"), Secret(KEY), LIMITS)


def test_deployments_yaml_accepts_the_native_adapters(tmp_path: Path):
    source = Path(__file__).resolve().parents[2] / "pipeline" / "config" / "deployments.yaml"
    text = source.read_text()
    text = text.replace("provider: anthropic\n    adapter: openai",
                        "provider: anthropic\n    adapter: anthropic")
    text = text.replace("provider: google\n    adapter: openai",
                        "provider: google\n    adapter: gemini")
    path = tmp_path / "deployments.yaml"
    path.write_text(text)
    loaded = load_deployments(catalog, path, env={})
    assert loaded.by_id["anthropic-claude-sonnet-4.5"].adapter == "anthropic"
    assert loaded.by_id["google-gemini-2.5-flash"].adapter == "gemini"


# ------------------------------------------------ against the simulator (loopback)

LONG_POLICY = "policy " * 1200       # ~1,800 tokens: above the prompt-cache minimum


OPENING = [ChatMessage("system", LONG_POLICY), ChatMessage("user", "First question.")]
FOLLOW_UP = OPENING + [ChatMessage("assistant", "An answer."), ChatMessage("user", "And then?")]


def sent_texts(adapter, request: RoutedRequest) -> list[str]:
    """The message texts the provider sees, as the simulator counts prompt tokens."""
    body = adapter.payload(request)
    if isinstance(adapter, AnthropicAdapter):
        return [body["system"]] + [m["content"] for m in body["messages"]]
    return ([body["systemInstruction"]["parts"][0]["text"]]
            + [c["parts"][0]["text"] for c in body["contents"]])


@pytest.mark.parametrize("adapter_cls, deployment, base", [
    (AnthropicAdapter, ANTHROPIC, "base_url"), (GeminiAdapter, GEMINI, "gemini_base_url")])
async def test_round_trip_through_the_simulator_with_faults(adapter_cls, deployment, base):
    config = load_config(latency_scale=0.001, base_errors=False)
    async with await start_simulator(config) as sim:
        dep = dataclasses.replace(deployment, base_url=getattr(sim, base))
        adapter = make_adapter(dep, Secret(KEY), LIMITS)
        try:
            # answers are 20..600 tokens: 1000 lets one finish, 10 cuts one short
            first = await adapter.complete(routed(OPENING, max_tokens=1000))
            request = routed(FOLLOW_UP, max_tokens=10)
            second = await adapter.complete(request)

            sim.simulator.set_faults({dep.provider_model: FaultSpec(FaultKind.RATE_LIMIT,
                                                                    retry_after_s=2)})
            with pytest.raises(GatewayError) as limited:
                await adapter.complete(routed())
            sim.simulator.set_faults({dep.provider_model: FaultSpec(FaultKind.CONTEXT_LENGTH)})
            with pytest.raises(GatewayError) as too_long:
                await adapter.complete(routed())
            sim.simulator.set_faults({dep.provider_model: FaultSpec(FaultKind.UNAUTHORIZED)})
            with pytest.raises(GatewayError) as refused:
                await adapter.complete(routed())
            stats = sim.simulator.stats.snapshot()["models"][dep.provider_model]
        finally:
            await adapter.aclose()

    assert first.content and first.completion_tokens > 0 and first.finish_reason == "stop"
    assert first.cached_tokens == 0
    # the repeated ~1,800-token prefix is a cache read, and still counted as prompt
    assert second.cached_tokens >= 1024 and second.cached_tokens % 128 == 0
    assert second.prompt_tokens == estimate_prompt_tokens(sent_texts(adapter, request))
    assert second.prompt_tokens > second.cached_tokens
    assert second.finish_reason == "length" and second.completion_tokens == 10
    assert limited.value.code == "rate_limited" and limited.value.retry_after_s == 2.0
    assert too_long.value.code == "context_length_exceeded"
    assert refused.value.code == "auth_error" and not refused.value.retryable
    for exc in (limited.value, too_long.value, refused.value):
        assert KEY not in str(exc) and KEY not in repr(exc)
    # Google answers an invalid key with 400 API_KEY_INVALID, Anthropic with 401
    refusals = {"400": 1, "401": 1} if adapter_cls is AnthropicAdapter else {"400": 2}
    assert stats["by_status"] == {"200": 2, "429": 1, **refusals}
    assert KEY not in json.dumps(stats)


@pytest.mark.parametrize("adapter_cls, deployment, base", [
    (AnthropicAdapter, ANTHROPIC, "base_url"), (GeminiAdapter, GEMINI, "gemini_base_url")])
@pytest.mark.parametrize("fault, code, statuses", [
    # Anthropic's overloaded status is 529; malformed bodies and hangs carry no error status
    (FaultSpec(FaultKind.SERVER_ERROR, status=503), "overloaded", (529, 503)),
    (FaultSpec(FaultKind.SERVER_ERROR, status=500), "provider_error", (500, 500)),
    (FaultSpec(FaultKind.MALFORMED), "provider_error", (None, None)),
    (FaultSpec(FaultKind.HANG), "timeout", (None, None)),
])
async def test_simulated_faults_reach_the_adapter_in_each_providers_shape(
        adapter_cls, deployment, base, fault, code, statuses):
    config = load_config(latency_scale=0.001, base_errors=False,
                         faults={deployment.provider_model: fault})
    limits = dataclasses.replace(LIMITS, total_timeout_s=0.3)
    async with await start_simulator(config) as sim:
        adapter = make_adapter(dataclasses.replace(deployment, base_url=getattr(sim, base)),
                               Secret(KEY), limits)
        try:
            with pytest.raises(GatewayError) as info:
                await adapter.complete(routed())
        finally:
            await adapter.aclose()
    status = statuses[0] if adapter_cls is AnthropicAdapter else statuses[1]
    assert (info.value.code, info.value.status) == (code, status)
