"""Schema Registry client over the Confluent REST API (httpx MockTransport as the registry)."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from pipeline.events.codec import Codec, DecodeError
from pipeline.events.models import ChatMessage, Request
from pipeline.events.registry import LocalRegistry, SchemaRegistryClient


class FakeRegistry:
    """Just enough of the Confluent API: register under a subject, fetch by id."""

    def __init__(self):
        self.by_id: dict[int, str] = {}
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(f"{request.method} {request.url.path}")
        if request.method == "POST" and request.url.path.startswith("/subjects/"):
            assert request.headers["content-type"] == SchemaRegistryClient.CONTENT_TYPE
            schema = json.loads(request.content)["schema"]
            for sid, known in self.by_id.items():
                if known == schema:
                    return httpx.Response(200, json={"id": sid})
            sid = 100 + len(self.by_id)
            self.by_id[sid] = schema
            return httpx.Response(200, json={"id": sid})
        if request.method == "GET" and request.url.path.startswith("/schemas/ids/"):
            sid = int(request.url.path.rsplit("/", 1)[1])
            if sid not in self.by_id:
                return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})
            return httpx.Response(200, json={"schema": self.by_id[sid]})
        return httpx.Response(404)


def client(fake: FakeRegistry) -> SchemaRegistryClient:
    http = httpx.Client(base_url="http://registry", transport=httpx.MockTransport(fake))
    return SchemaRegistryClient("http://registry", LocalRegistry(), client=http)


def request() -> Request:
    return Request(str(uuid.uuid4()), "acme", [ChatMessage("user", "hi")])


def test_registers_once_per_subject_and_uses_the_registry_id():
    fake = FakeRegistry()
    codec = Codec(client(fake))
    first = codec.encode(request(), "llm.requests")
    codec.encode(request(), "llm.requests")
    assert fake.calls == ["POST /subjects/llm.requests-value/versions"]
    assert int.from_bytes(first[1:5], "big") == 100


def test_a_consumer_fetches_unknown_writer_schemas_by_id():
    fake = FakeRegistry()
    data = Codec(client(fake)).encode(request(), "llm.requests")
    reader = Codec(client(fake))                     # a fresh process: nothing cached
    assert reader.decode(data, Request).tenant == "acme"
    assert "GET /schemas/ids/100" in fake.calls


def test_unknown_id_is_a_dead_letter_reason_not_a_crash():
    fake = FakeRegistry()
    with pytest.raises(DecodeError) as info:
        Codec(client(fake)).decode(b"\x00\x00\x00\x03\xe7" + b"\x02", Request)
    assert info.value.code == "unknown_schema" and "999" in info.value.reason
