"""The whole chat API on the request path (issue 19): intake's checks of tools, parts,
response formats, n and embeddings, the token estimate that counts them, and routing that
picks only a model able to serve every feature a request uses, or refuses naming both."""

from __future__ import annotations

import json
import random
import uuid

import pytest

from pipeline import errors
from pipeline.catalog import load_catalog
from pipeline.errors import Rejected
from pipeline.events.models import (ChatMessage, ContentPart, EmbeddingInput, GenerationParams,
                                    Request, ResponseFormat, Tool, ToolCall, ToolChoice)
from pipeline.intake.bounds import load_bounds
from pipeline.intake.validation import check_request
from pipeline.providers.deployments import load_deployments
from pipeline.routing.policy import Router, TenantRules, load_routing
from pipeline.routing.tokens import estimate_prompt_tokens, estimate_request_tokens

catalog = load_catalog()
deployments = load_deployments(catalog, env={})
policy = load_routing(catalog)
bounds = load_bounds()
NOW = 1_763_900_000_000
WEATHER = Tool("get_weather", "the weather in a city", json.dumps(
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}))


def chat(*messages: ChatMessage, **kw) -> Request:
    return Request(str(uuid.uuid4()), "acme", list(messages or [ChatMessage("user", "hi")]),
                   created_at_ms=NOW, **kw)


def image(detail: str | None = None) -> ChatMessage:
    return ChatMessage("user", "", parts=[ContentPart("text", "what is this?"),
                                          ContentPart("image_url", url="https://x/cat.png",
                                                      detail=detail)])


def route(req: Request, tenant: TenantRules = TenantRules()):
    router = Router(catalog, deployments, policy, random.Random(1))
    return router.route(req, estimate_request_tokens(req), tenant)


# --- intake --------------------------------------------------------------------------------

def test_a_request_using_every_feature_is_accepted():
    req = chat(ChatMessage("system", "be brief"), image("low"),
               ChatMessage("assistant", "", tool_calls=[ToolCall("call_1", "get_weather",
                                                                 '{"city": "Paris"}')]),
               ChatMessage("tool", "sunny", tool_call_id="call_1"),
               tools=[WEATHER], tool_choice=ToolChoice("function", "get_weather"),
               parallel_tool_calls=False,
               response_format=ResponseFormat("json_schema", "answer",
                                              '{"type": "object", "properties": {}}', True),
               params=GenerationParams(n=2, presence_penalty=1.0, logprobs=True, top_logprobs=2))
    check_request(req, NOW, bounds)


@pytest.mark.parametrize("change,fragment", [
    (dict(tools=[Tool("bad name!", None, "{}")]), "tools[0].name"),
    (dict(tools=[Tool("f", None, "{not json")]), "tools[0].parameters is not JSON"),
    (dict(tools=[Tool("f", None, '{"type": "objekt"}')]), "tools[0].parameters is not a well-formed"),
    (dict(tools=[Tool("f", None, "[]")]), "JSON Schema object"),
    (dict(tools=[WEATHER, WEATHER]), "given twice"),
    (dict(tools=[WEATHER], tool_choice=ToolChoice("function", "other")), "not one of the request's tools"),
    (dict(tool_choice=ToolChoice("required")), "needs tools"),
    (dict(tools=[WEATHER], tool_choice=ToolChoice("sometimes")), "tool_choice.mode"),
    (dict(parallel_tool_calls=True), "without tools"),
    (dict(response_format=ResponseFormat("yaml")), "response_format.type"),
    (dict(response_format=ResponseFormat("json_schema", "a")), "needs a name and a schema"),
    (dict(response_format=ResponseFormat("json_schema", "a", '{"type": 5}')), "well-formed"),
    (dict(response_format=ResponseFormat("json_object", schema="{}")), "takes no name"),
    (dict(params=GenerationParams(n=0)), "params.n"),
    (dict(params=GenerationParams(n=99)), "params.n"),
    (dict(params=GenerationParams(n=2), stream=True), "cannot be streamed"),
    (dict(params=GenerationParams(presence_penalty=3)), "presence_penalty"),
    (dict(params=GenerationParams(top_logprobs=3)), "needs params.logprobs"),
    (dict(embedding=EmbeddingInput(["x"])), "an embedding request carries no messages"),
])
def test_bad_feature_fields_are_refused_naming_the_field(change, fragment):
    with pytest.raises(Rejected, match=None) as exc:
        check_request(chat(**change), NOW, bounds)
    assert fragment in str(exc.value)


@pytest.mark.parametrize("message,fragment", [
    (ChatMessage("user", "x", parts=[ContentPart("text", "y")]), "both content and parts"),
    (ChatMessage("user", "", parts=[ContentPart("audio")]), "is not text or image_url"),
    (ChatMessage("user", "", parts=[ContentPart("image_url", url="ftp://x")]), "url must be"),
    (ChatMessage("user", "", parts=[ContentPart("image_url", url="https://x", detail="max")]),
     "detail must be"),
    (ChatMessage("assistant", "", parts=[ContentPart("image_url", url="https://x")]),
     "not in assistant messages"),
    (ChatMessage("user", "x", tool_calls=[ToolCall("c", "f", "{}")]), "only assistant"),
    (ChatMessage("assistant", "", tool_calls=[ToolCall("c", "f", "{oops")]), "is not JSON"),
    (ChatMessage("tool", "result"), "without tool_call_id"),
    (ChatMessage("user", "x", tool_call_id="c"), "only tool messages"),
])
def test_bad_messages_are_refused_naming_the_field(message, fragment):
    with pytest.raises(Rejected) as exc:
        check_request(chat(message), NOW, bounds)
    assert fragment in str(exc.value)
    assert "messages[0]" in str(exc.value)


def test_an_image_alone_or_a_tool_call_alone_is_a_message():
    check_request(chat(ChatMessage("user", "", parts=[ContentPart("image_url", url="https://x")])),
                  NOW, bounds)
    with pytest.raises(Rejected, match="every message is empty"):
        check_request(chat(ChatMessage("user", "  ")), NOW, bounds)


def test_embedding_requests_are_checked():
    ok = Request(str(uuid.uuid4()), "acme", [], created_at_ms=NOW,
                 embedding=EmbeddingInput(["one", "二"]))
    check_request(ok, NOW, bounds)
    for change, fragment in [(dict(embedding=EmbeddingInput([])), "at least one"),
                             (dict(embedding=EmbeddingInput(["a", " "])), "inputs[1] is empty"),
                             (dict(embedding=EmbeddingInput(["a"], 0)), "dimensions"),
                             (dict(stream=True), "cannot be streamed")]:
        with pytest.raises(Rejected) as exc:
            check_request(ok.replace(**change), NOW, bounds)
        assert fragment in str(exc.value)


# --- token estimate -----------------------------------------------------------------------

def test_the_estimate_counts_tools_schemas_images_and_calls():
    plain = chat(ChatMessage("user", "what is the weather in Paris?"))
    assert estimate_request_tokens(plain) == estimate_prompt_tokens(["what is the weather in Paris?"])
    with_tools = plain.replace(tools=[WEATHER])
    assert estimate_request_tokens(with_tools) > estimate_request_tokens(plain) + 10
    low, high = estimate_request_tokens(chat(image("low"))), estimate_request_tokens(chat(image()))
    assert high - low == 765 - 85
    call = chat(ChatMessage("assistant", "", tool_calls=[ToolCall("c", "get_weather",
                                                                  '{"city": "Paris"}')]))
    assert estimate_request_tokens(call) > estimate_request_tokens(chat(ChatMessage("assistant", "")))


# --- routing -------------------------------------------------------------------------------

def test_routing_narrows_to_capable_models_and_says_why():
    # the default model (gemini-2.5-flash) has no logprobs: an OpenAI model serves it
    r = route(chat(params=GenerationParams(logprobs=True)))
    assert "logprobs" in catalog.models[r.decision.model].features
    assert "+features" in r.decision.rule
    assert "gemini-2.5-flash lacks logprobs (logprobs)" in r.decision.reason
    for d in r.fallbacks:
        assert "logprobs" in catalog.models[deployments.by_id[d].model].features


def test_a_request_every_model_can_serve_is_routed_as_before():
    assert route(chat(tools=[WEATHER])).decision.rule == "default"


def test_a_pinned_model_without_the_feature_is_a_400_naming_both():
    with pytest.raises(Rejected) as exc:
        route(chat(image(), model="deepseek-v3.2"))
    assert exc.value.code == errors.INVALID_REQUEST
    assert "deepseek-v3.2 does not support vision (image parts)" in str(exc.value)
    assert "gpt-4o" in str(exc.value)                      # and says which models do


def test_no_allowed_model_with_the_feature_is_a_400():
    tenant = TenantRules(allowed=frozenset({"deepseek-v3.2", "claude-sonnet-4.5"}))
    with pytest.raises(Rejected) as exc:
        route(chat(params=GenerationParams(logprobs=True)), tenant)
    assert exc.value.code == errors.INVALID_REQUEST
    assert "no model this tenant may use supports logprobs" in str(exc.value)


def test_chat_never_goes_to_an_embedding_model_nor_embeddings_to_a_chat_model():
    with pytest.raises(Rejected, match="embedding model; a chat request needs a chat model"):
        route(chat(model="text-embedding-3-small"))
    emb = Request(str(uuid.uuid4()), "acme", [], embedding=EmbeddingInput(["x"]))
    with pytest.raises(Rejected, match="chat model; embeddings need an embedding model"):
        route(emb.replace(model="gpt-4o"))
    r = route(emb)
    assert (r.decision.model, r.decision.rule, r.max_tokens) == ("text-embedding-3-small", "default", 0)
    assert all(deployments.by_id[d].model == "text-embedding-3-small" for d in r.fallbacks)
    with pytest.raises(Rejected, match="more than"):
        route(emb.replace(embedding=EmbeddingInput(["x"], dimensions=5000)))
