"""Embeddings from the simulator as the OpenAI SDK and a Gemini client see them: the
model's dimensions, unit vectors, the same text the same vector, similar texts closer
than unrelated ones, shortened dimensions, base64, usage and refusals."""

from __future__ import annotations

import base64
import math
import struct

import openai
import pytest

from pipeline.routing.tokens import estimate_text_tokens
from pipeline.simulator import FaultKind, FaultSpec
from tests.unit.test_simulator import KEY, fast, serving

GOOGLE = {"x-goog-api-key": KEY, "Authorization": ""}


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


@pytest.mark.asyncio
async def test_openai_sdk_embeddings():
    texts = ["How do I reset my password?", "How can I reset my password?",
             "The weather in Lisbon is sunny today."]
    async with serving(fast()) as (running, _):
        client = openai.AsyncOpenAI(base_url=running.base_url, api_key=KEY, max_retries=0)
        small = await client.embeddings.create(model="text-embedding-3-small", input=texts)
        again = await client.embeddings.create(model="text-embedding-3-small", input=texts[0])
        large = await client.embeddings.create(model="text-embedding-3-large", input=texts[0],
                                               dimensions=256, encoding_format="float")
    vectors = [d.embedding for d in small.data]
    assert [d.index for d in small.data] == [0, 1, 2]
    assert all(len(v) == 1536 for v in vectors)
    assert all(math.isclose(math.sqrt(cosine(v, v)), 1.0, rel_tol=1e-5) for v in vectors)
    assert again.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert small.usage.prompt_tokens == sum(estimate_text_tokens(t) for t in texts)
    assert small.usage.total_tokens == small.usage.prompt_tokens
    assert len(large.data[0].embedding) == 256
    assert math.isclose(cosine(large.data[0].embedding, large.data[0].embedding), 1.0,
                        rel_tol=1e-6)


@pytest.mark.asyncio
async def test_raw_embeddings_base64_token_arrays_and_refusals():
    async with serving(fast()) as (_, client):
        floats = (await client.post("/v1/embeddings", json={
            "model": "text-embedding-3-small", "input": "hello"})).json()
        packed = (await client.post("/v1/embeddings", json={
            "model": "text-embedding-3-small", "input": "hello",
            "encoding_format": "base64"})).json()
        tokens = (await client.post("/v1/embeddings", json={
            "model": "text-embedding-3-small", "input": [[15339, 1917], [15339]]})).json()
        refusals = [await client.post("/v1/embeddings", json=body) for body in (
            {"model": "text-embedding-3-small", "input": ""},
            {"model": "text-embedding-3-small", "input": 42},
            {"model": "text-embedding-3-small", "input": "x", "dimensions": 5000},
            {"model": "text-embedding-3-small", "input": "x", "encoding_format": "hex"},
            {"model": "gpt-4.1", "input": "x"},
        )]
        unknown = await client.post("/v1/embeddings", json={"model": "embed-9", "input": "x"})
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)
    assert floats["object"] == "list" and floats["data"][0]["object"] == "embedding"
    assert tokens["usage"]["prompt_tokens"] == 3 and len(tokens["data"]) == 2
    assert [r.status_code for r in refusals] == [400] * len(refusals)
    assert all(r.json()["error"]["type"] == "invalid_request_error" for r in refusals)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


@pytest.mark.asyncio
async def test_embedding_calls_follow_faults_and_stats():
    config = fast(faults={"text-embedding-3-small": FaultSpec(FaultKind.RATE_LIMIT)})
    async with serving(config) as (_, client):
        limited = await client.post("/v1/embeddings", json={
            "model": "text-embedding-3-small", "input": "x"})
        stats = (await client.get("/_sim/stats")).json()
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert stats["models"]["text-embedding-3-small"]["by_status"] == {"429": 1}


@pytest.mark.asyncio
async def test_gemini_embed_content_and_batch():
    path = "/v1beta/models/gemini-embedding-001"
    async with serving(fast()) as (_, client):
        one = (await client.post(f"{path}:embedContent", headers=GOOGLE, json={
            "content": {"parts": [{"text": "hello world"}]}})).json()
        batch = (await client.post(f"{path}:batchEmbedContents", headers=GOOGLE, json={
            "requests": [{"model": "models/gemini-embedding-001",
                          "content": {"parts": [{"text": "hello world"}]},
                          "outputDimensionality": 768},
                         {"model": "models/gemini-embedding-001",
                          "content": {"parts": [{"text": "goodbye"}]}}]})).json()
        chat_model = await client.post("/v1beta/models/gemini-2.5-flash:embedContent",
                                       headers=GOOGLE,
                                       json={"content": {"parts": [{"text": "x"}]}})
        no_key = await client.post(f"{path}:embedContent", headers={"Authorization": ""},
                                   json={"content": {"parts": [{"text": "x"}]}})
    vector = one["embedding"]["values"]
    assert len(vector) == 3072
    assert [len(e["values"]) for e in batch["embeddings"]] == [768, 3072]
    assert batch["embeddings"][1]["values"] != vector
    assert chat_model.status_code == 404
    assert no_key.status_code == 403
