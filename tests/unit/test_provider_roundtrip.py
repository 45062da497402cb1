"""Each adapter against the provider simulator on loopback, in its provider's shape, for
the chat API beyond text: a tool call answered and the answer after it, streamed call
pieces that join into the call's JSON, a JSON-schema answer, n = 2, an image, and
embeddings."""

from __future__ import annotations

import json

import pytest

from pipeline.events.models import ChatMessage, ContentPart, EmbeddingInput, ToolChoice
from pipeline.providers import AnthropicAdapter, GeminiAdapter, OpenAIAdapter
from tests.unit.test_adapters_gemini import EMBEDDER as GEMINI_EMBEDDER
from tests.unit.test_adapters_native import ANTHROPIC, GEMINI, routed
from tests.unit.test_adapters_openai import EMBEDDER as OPENAI_EMBEDDER
from tests.unit.test_adapters_openai import PERSON, WEATHER, Deltas
from tests.unit.test_provider_stream import OPENAI, simulated
from tests.unit.test_simulator import fast

ADAPTERS = [
    pytest.param(OpenAIAdapter, OPENAI, "base_url", id="openai"),
    pytest.param(AnthropicAdapter, ANTHROPIC, "base_url", id="anthropic"),
    pytest.param(GeminiAdapter, GEMINI, "gemini_base_url", id="gemini"),
]
QUESTION = ChatMessage("user", "What's the weather in Paris?")
FORCED = dict(tools=[WEATHER], tool_choice=ToolChoice("required"))


@pytest.mark.parametrize("adapter_cls, deployment, base", ADAPTERS)
async def test_a_tool_call_answered_then_the_answer(adapter_cls, deployment, base):
    async with simulated(deployment, base, fast()) as (_, adapter):
        asked = await adapter.complete(routed([QUESTION], fields=FORCED))
        (call,) = asked.tool_calls
        follow_up = [QUESTION, ChatMessage("assistant", "", tool_calls=[call]),
                     ChatMessage("tool", '{"celsius": 21}', tool_call_id=call.id)]
        answered = await adapter.complete(routed(follow_up, max_tokens=1000, fields=dict(
            tools=[WEATHER], tool_choice=ToolChoice("none"))))
    assert asked.finish_reason == "tool_calls" and call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)
    assert answered.content and answered.finish_reason == "stop" and not answered.tool_calls


@pytest.mark.parametrize("adapter_cls, deployment, base", ADAPTERS)
async def test_streamed_call_pieces_join_into_the_calls_json(adapter_cls, deployment, base):
    async with simulated(deployment, base, fast()) as (_, adapter):
        deltas = Deltas()
        done = await adapter.complete(routed([QUESTION], fields=FORCED), on_delta=deltas)
    pieces = [p for _, ps in deltas.calls for p in ps]
    assert pieces and {p.index for p in pieces} == {0}
    assert (pieces[0].id, pieces[0].name) == (done.tool_calls[0].id, "get_weather")
    joined = "".join(p.arguments for p in pieces)
    assert joined == done.tool_calls[0].arguments and "city" in json.loads(joined)
    assert done.finish_reason == "tool_calls"


@pytest.mark.parametrize("adapter_cls, deployment, base", ADAPTERS)
async def test_a_schema_answer_two_choices_and_an_image(adapter_cls, deployment, base):
    image = ChatMessage("user", "", parts=[
        ContentPart("text", "What is in this picture?"),
        ContentPart("image_url", url="data:image/png;base64,iVBORw0KGgo=")])
    async with simulated(deployment, base, fast()) as (_, adapter):
        shaped = await adapter.complete(routed([QUESTION], fields=dict(response_format=PERSON)))
        two = await adapter.complete(routed([QUESTION], n=2))
        seen = await adapter.complete(routed([image]))
        plain = await adapter.complete(routed([ChatMessage("user", "What is in this picture?")]))
    assert isinstance(json.loads(shaped.content)["name"], str)
    assert shaped.finish_reason == "stop" and not shaped.tool_calls
    (second,) = two.more_choices
    assert two.content and second.index == 1 and second.content
    assert seen.content and seen.prompt_tokens > plain.prompt_tokens   # the image was counted


@pytest.mark.parametrize("adapter_cls, deployment, base", [
    pytest.param(OpenAIAdapter, OPENAI_EMBEDDER, "base_url", id="openai"),
    pytest.param(GeminiAdapter, GEMINI_EMBEDDER, "gemini_base_url", id="gemini"),
])
async def test_embeddings_come_back_in_input_order(adapter_cls, deployment, base):
    inputs = ["cache hits save money", "a different sentence", "cache hits save money"]
    async with simulated(deployment, base, fast()) as (_, adapter):
        done = await adapter.embed(routed([], fields=dict(embedding=EmbeddingInput(inputs, 64)))
                                   .replace(estimated_prompt_tokens=12))
    first, second, third = done.embeddings
    assert len(first) == 64 and first == third != second
    assert done.prompt_tokens > 0 and done.completion_tokens == 0
