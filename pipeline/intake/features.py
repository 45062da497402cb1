"""What intake accepts of the chat API beyond text (issue 19): content parts, tool calls and
tool results, tools and tool_choice, response formats, several choices, penalties and
logprobs, and embedding requests. Each refusal names the field and the rule, as the rest of
validation.py does; a JSON Schema (a tool's parameters, a json_schema response format) must
be a well-formed schema, checked against its meta-schema, so a provider never sees one
that would fail there after the request was reserved and routed."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import jsonschema

from pipeline.errors import Rejected
from pipeline.events.models import (IMAGE_URL, RESPONSE_FORMATS, TEXT, TOOL_CHOICE_MODES,
                                    ChatMessage, EmbeddingInput, Request)

from pipeline.intake.bounds import RequestBounds

if TYPE_CHECKING:
    from pipeline.catalog import Model

FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
IMAGE_DETAILS = ("auto", "low", "high")
IMAGE_SCHEMES = ("https://", "http://", "data:image/")
MAX_TOP_LOGPROBS = 20
PENALTY_RANGE = (-2.0, 2.0)
# Bytes one vector component takes in a Response: an Avro float, or a JSON number written
# with up to 17 significant digits and its separator.
COMPONENT_BYTES = {"avro": 4, "json": 24}


def check_chat(r: Request, bounds: RequestBounds) -> None:
    """Everything of a chat request beyond its text and sampling parameters."""
    for i, m in enumerate(r.messages):
        _message(i, m, bounds)
    _tools(r, bounds)
    _response_format(r)
    p = r.params
    if not 1 <= p.n <= bounds.max_choices:
        raise Rejected(f"params.n must be within 1..{bounds.max_choices} (got {p.n})")
    if r.stream and p.n > 1:
        raise Rejected(f"params.n is {p.n}: several choices cannot be streamed (send stream "
                       "false, or n 1)")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(p, name)
        if value is not None and not PENALTY_RANGE[0] <= value <= PENALTY_RANGE[1]:
            raise Rejected(f"params.{name} must be within -2..2 (got {value})")
    if p.top_logprobs is not None:
        if not p.logprobs:
            raise Rejected("params.top_logprobs needs params.logprobs true")
        if not 0 <= p.top_logprobs <= MAX_TOP_LOGPROBS:
            raise Rejected(f"params.top_logprobs must be within 0..{MAX_TOP_LOGPROBS} "
                           f"(got {p.top_logprobs})")


def has_content(m: ChatMessage) -> bool:
    """Text, an image or a tool call: something a provider can take as a turn."""
    return bool(m.text.strip() or m.images or m.tool_calls)


def _message(i: int, m: ChatMessage, bounds: RequestBounds) -> None:
    where = f"messages[{i}]"
    if m.parts and m.content:
        raise Rejected(f"{where} has both content and parts: parts are the content when given")
    if len(m.parts) > bounds.max_parts:
        raise Rejected(f"{where}.parts holds {len(m.parts)} parts; at most {bounds.max_parts}")
    for j, part in enumerate(m.parts):
        if part.type == TEXT:
            if part.url is not None or part.detail is not None:
                raise Rejected(f"{where}.parts[{j}] is a text part with an image url or detail")
        elif part.type == IMAGE_URL:
            if m.role != "user":
                raise Rejected(f"{where}.parts[{j}]: images are accepted in user messages, not "
                               f"in {m.role} messages")
            if not part.url or not part.url.startswith(IMAGE_SCHEMES):
                raise Rejected(f"{where}.parts[{j}].url must be an https:, http: or "
                               "data:image/...;base64, URL")
            if part.detail is not None and part.detail not in IMAGE_DETAILS:
                raise Rejected(f"{where}.parts[{j}].detail must be one of "
                               f"{', '.join(IMAGE_DETAILS)}")
        else:
            raise Rejected(f"{where}.parts[{j}].type {part.type[:40]!r} is not text or image_url")
    if m.tool_calls and m.role != "assistant":
        raise Rejected(f"{where} has tool_calls; only assistant messages make tool calls")
    for j, call in enumerate(m.tool_calls):
        if not call.id:
            raise Rejected(f"{where}.tool_calls[{j}].id is empty")
        _function_name(f"{where}.tool_calls[{j}].name", call.name)
        _json_text(f"{where}.tool_calls[{j}].arguments", call.arguments)
    if m.role == "tool" and not m.tool_call_id:
        raise Rejected(f"{where} is a tool message without tool_call_id: say which call it "
                       "answers")
    if m.tool_call_id is not None and m.role != "tool":
        raise Rejected(f"{where} has tool_call_id; only tool messages answer tool calls")


def _tools(r: Request, bounds: RequestBounds) -> None:
    if len(r.tools) > bounds.max_tools:
        raise Rejected(f"tools holds {len(r.tools)} functions; at most {bounds.max_tools}")
    names = set()
    for i, tool in enumerate(r.tools):
        _function_name(f"tools[{i}].name", tool.name)
        if tool.name in names:
            raise Rejected(f"tools[{i}].name {tool.name!r} is given twice")
        names.add(tool.name)
        _schema(f"tools[{i}].parameters", tool.parameters)
    choice = r.tool_choice
    if choice is not None:
        if choice.mode not in TOOL_CHOICE_MODES:
            raise Rejected(f"tool_choice.mode {choice.mode[:40]!r} is not one of "
                           f"{', '.join(TOOL_CHOICE_MODES)}")
        if choice.mode != "none" and not r.tools:
            raise Rejected(f"tool_choice {choice.mode!r} needs tools")
        if (choice.mode == "function") != (choice.name is not None):
            raise Rejected("tool_choice.name is given with mode function, and only then")
        if choice.name is not None and choice.name not in names:
            raise Rejected(f"tool_choice names {choice.name[:64]!r}, which is not one of the "
                           "request's tools")
    if r.parallel_tool_calls is not None and not r.tools:
        raise Rejected("parallel_tool_calls is set without tools")


def _response_format(r: Request) -> None:
    fmt = r.response_format
    if fmt is None:
        return
    if fmt.type not in RESPONSE_FORMATS:
        raise Rejected(f"response_format.type {fmt.type[:40]!r} is not one of "
                       f"{', '.join(RESPONSE_FORMATS)}")
    if fmt.type == "json_schema":
        if fmt.name is None or fmt.schema is None:
            raise Rejected("response_format json_schema needs a name and a schema")
        _function_name("response_format.name", fmt.name)
        _schema("response_format.schema", fmt.schema)
    elif fmt.name is not None or fmt.schema is not None:
        raise Rejected(f"response_format {fmt.type} takes no name or schema")


def check_embedding(r: Request, bounds: RequestBounds) -> None:
    e = r.embedding
    assert e is not None
    if r.messages:
        raise Rejected("an embedding request carries no messages")
    if r.stream:
        raise Rejected("an embedding request cannot be streamed")
    if r.tools or r.response_format or r.tool_choice:
        raise Rejected("an embedding request takes no tools or response_format")
    if not e.inputs:
        raise Rejected("embedding.inputs must hold at least one text")
    if len(e.inputs) > bounds.max_embedding_inputs:
        raise Rejected(f"embedding.inputs holds {len(e.inputs):,} texts; at most "
                       f"{bounds.max_embedding_inputs:,} are accepted")
    for i, text in enumerate(e.inputs):
        if not text.strip():
            raise Rejected(f"embedding.inputs[{i}] is empty")
    if e.dimensions is not None and e.dimensions < 1:
        raise Rejected(f"embedding.dimensions must be positive (got {e.dimensions})")


def _function_name(field: str, name: str) -> None:
    if not FUNCTION_NAME.match(name):
        raise Rejected(f"{field} {name[:64]!r} must be 1..64 letters, digits, _ or -")


def _json_text(field: str, text: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Rejected(f"{field} is not JSON text: {exc}") from None


def _schema(field: str, text: str) -> None:
    schema = _json_text(field, text)
    if not isinstance(schema, dict):
        raise Rejected(f"{field} must be a JSON Schema object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the top"
        raise Rejected(f"{field} is not a well-formed JSON Schema (at {where}: "
                       f"{exc.message[:200]})") from None


def check_embedding_reply(e: EmbeddingInput, model: "Model", fmt: str,
                          bounds: RequestBounds) -> None:
    """The vectors must fit one Response record, which is bounded like a request (the
    broker's message size): a request for more is refused saying how many inputs fit."""
    dims = e.dimensions or model.dimensions
    per_input = dims * COMPONENT_BYTES.get(fmt, COMPONENT_BYTES["json"]) + 16
    fit = max(1, bounds.max_request_bytes // per_input)
    if len(e.inputs) > fit:
        raise Rejected(f"embedding.inputs holds {len(e.inputs):,} texts; {model.name}'s "
                       f"{dims}-dimension vectors for at most {fit:,} fit one {fmt} response "
                       f"of {bounds.max_request_bytes:,} bytes: split the request")
