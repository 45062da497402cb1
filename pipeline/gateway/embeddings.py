"""OpenAI's embeddings wire shape, both ways: a ``POST /v1/embeddings`` body as our Request
(``embedding`` set, no messages; tenant from the caller's key) and a Response's vectors as
the list OpenAI's SDKs read — floats, or base64 of little-endian float32 (what the Python
SDK asks for when its caller names no format, and decodes itself)."""

from __future__ import annotations

import base64
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from pipeline.clock import now_ms
from pipeline.events.models import EmbeddingInput, Request, Response, RoutingHints
from pipeline.gateway import fields
from pipeline.gateway.fields import BadRequest
from pipeline.gateway.wire import AUTO, DEFAULT_PRIORITY, options
from pipeline.intake.bounds import RequestBounds

FORMATS = ("float", "base64")
# Carried: model, input, dimensions, encoding_format (how to answer), user (end_user) and our
# ``llmpipe`` options; ``tenant`` is read past (the key names the tenant, as for chat).
# Anything else is a 400 naming it.
KEYS = frozenset({"model", "input", "dimensions", "encoding_format", "user", "llmpipe",
                  "tenant"})


@dataclass(frozen=True)
class Embeddings:
    """A parsed embeddings call: the Request to publish and the format to answer in."""
    request: Request
    encoding_format: str


def parse_embeddings(body: Any, tenant: str, *, reply_topic: str,
                     bounds: RequestBounds = RequestBounds()) -> Embeddings:
    """``body`` as an embedding Request of ``tenant``; BadRequest naming the first field
    that is wrong (intake's ``check_request`` checks the rest after)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    fields.known_keys(body, "", KEYS)
    model = fields.string(body.get("model"), "model", optional=True)
    if not model:
        raise BadRequest("model is required: name an embedding model (or auto, the "
                         "default one)", "model")
    dimensions = fields.number(body.get("dimensions"), "dimensions", int, low=1)
    encoding = body.get("encoding_format")
    encoding = "float" if encoding is None else fields.one_of(encoding, "encoding_format",
                                                              FORMATS)
    user = fields.string(body.get("user"), "user", optional=True)
    ours = options(body.get("llmpipe"))
    request = Request(
        request_id=str(uuid.uuid4()), tenant=tenant, messages=[], team=ours.get("team"),
        end_user=user, created_at_ms=now_ms(), model=None if model == AUTO else model,
        hints=RoutingHints(required_quality=ours.get("required_quality"),
                           max_latency_ms=ours.get("max_latency_ms"),
                           budget_per_mtok=ours.get("budget_per_mtok"),
                           priority=ours.get("priority", DEFAULT_PRIORITY)),
        reply_topic=reply_topic,
        embedding=EmbeddingInput(_inputs(body.get("input"), bounds.max_embedding_inputs),
                                 dimensions))
    return Embeddings(request, encoding)


def _inputs(raw: Any, most: int) -> list[str]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise BadRequest("input must be a string or a non-empty array of strings", "input")
    if len(raw) > most:
        raise BadRequest(f"input holds {len(raw):,} items; at most {most:,} are accepted",
                         "input")
    for i, text in enumerate(raw):
        if isinstance(text, (int, list)) and not isinstance(text, bool):
            raise BadRequest("input as token ids is not supported by this gateway (the models "
                             "behind it tokenize differently): send the text", "input")
        if not isinstance(text, str):
            raise BadRequest(f"input[{i}] must be a string", "input")
        if not text.strip():
            raise BadRequest(f"input[{i}] must not be empty", "input")
    return raw


def embeddings_body(r: Response, requested_model: str | None, encoding_format: str
                    ) -> dict[str, Any]:
    return {"object": "list",
            "data": [{"object": "embedding", "index": i,
                      "embedding": _encode(vector, encoding_format)}
                     for i, vector in enumerate(r.embeddings)],
            "model": r.model or requested_model or AUTO,
            "usage": {"prompt_tokens": r.prompt_tokens,
                      "total_tokens": r.prompt_tokens + r.completion_tokens}}


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
