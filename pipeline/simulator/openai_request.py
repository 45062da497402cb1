"""An OpenAI chat completions body read as OpenAI reads it: every field type-checked
(``n: "two"``, ``stop: 42``, an unknown role or parameter, a malformed tool or schema are
a 400 naming the parameter), messages with content parts, tool calls and tool results,
``tools``/``tool_choice``, ``response_format``, ``n``, ``stop``, ``seed`` and logprobs."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pipeline.routing.tokens import estimate_text_tokens
from pipeline.simulator.chat import (OPENAI_IMAGE_TOKENS, OPENAI_LOW_DETAIL_IMAGE_TOKENS,
                                     ChatRequest, Message, OutputFormat, Tool, ToolCall,
                                     ToolChoice)
from pipeline.simulator.core import InvalidRequest
from pipeline.simulator.schema_instance import SchemaError, check_schema

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
PARAMETERS = frozenset({
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions",
    "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities",
    "n", "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop",
    "store", "stream", "stream_options", "temperature", "tool_choice", "tools", "top_logprobs",
    "top_p", "user", "verbosity", "web_search_options"})
PART_TYPES = ("text", "image_url", "input_audio", "refusal", "audio", "file")
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_STOP, MAX_N, MAX_TOP_LOGPROBS, MAX_TOOLS = 4, 128, 20, 128
# Fields that do not change what is sampled, only how much of it is sent or how: a
# repeatable answer with a stop or a lower max_tokens is a prefix of the one without.
NOT_SAMPLED = frozenset({"stream", "stream_options", "stop", "max_tokens",
                         "max_completion_tokens", "n", "logprobs", "top_logprobs", "user",
                         "metadata", "store", "service_tier", "safety_identifier"})
_JSON_TYPES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "an object", type(None): "null"}


def parse_chat_request(body: dict[str, Any]) -> tuple[ChatRequest, bool]:
    """The body as a ChatRequest, plus whether a stream should end with a usage chunk."""
    for name in body:
        if name not in PARAMETERS:
            raise InvalidRequest(f"Unrecognized request argument supplied: {name}", name)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", "model")
    messages, images = _messages(body.get("messages"))
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _integer(body, param, minimum=1)
    temperature = _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    n = _integer(body, "n", minimum=1, maximum=MAX_N) or 1
    seed = _integer(body, "seed")
    stop = _stop(body.get("stop"))
    logprobs = _typed(body, "logprobs", bool) or False
    top_logprobs = _integer(body, "top_logprobs", minimum=0, maximum=MAX_TOP_LOGPROBS) or 0
    if top_logprobs and not logprobs:
        raise InvalidRequest("Invalid value for 'top_logprobs': 'logprobs' must be set to "
                             "true when 'top_logprobs' is used.", "top_logprobs")
    _typed(body, "user", str)
    stream = _typed(body, "stream", bool) or False
    options = _typed(body, "stream_options", dict)
    if options is not None and not stream:
        raise InvalidRequest("The 'stream_options' parameter is only allowed when 'stream' is "
                             "enabled.", "stream_options")
    output = _response_format(body.get("response_format"), messages)
    tools = _tools(body.get("tools"))
    choice = _tool_choice(body.get("tool_choice"), tools)
    parallel = _typed(body, "parallel_tool_calls", bool)
    if parallel is not None and not tools:
        raise InvalidRequest("Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' "
                             "is only allowed when 'tools' are specified.", "parallel_tool_calls")

    features = {name for name, wanted in (("vision", images), ("tools", tools), ("n", n > 1),
                                          ("logprobs", logprobs)) if wanted}
    if output.kind != "text":
        features.add(output.kind)
    extra = sum(images)
    if tools:
        extra += estimate_text_tokens(json.dumps(body["tools"]))
    if output.schema is not None:
        extra += estimate_text_tokens(json.dumps(output.schema))
    repeatable = None
    if temperature == 0 and seed is not None:
        shaping = {k: v for k, v in body.items() if k not in NOT_SAMPLED}
        repeatable = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()
    chat = ChatRequest(
        model, tuple(messages), max_tokens, stream, n=n, stop=stop, repeatable=repeatable,
        output=output, tools=tools, tool_choice=choice,
        parallel_tool_calls=parallel is not False, logprobs=logprobs, top_logprobs=top_logprobs,
        extra_prompt_tokens=extra, features=frozenset(features))
    return chat, bool((options or {}).get("include_usage", False))


# ------------------------------------------------------------------------- messages

def _messages(raw_messages: Any) -> tuple[list[Message], list[int]]:
    """The messages and the prompt tokens of each image they carry."""
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("'messages' must be a non-empty array", "messages")
    messages, images = [], []
    open_calls: dict[str, str] = {}          # tool call id -> name, awaiting its result
    for i, raw in enumerate(raw_messages):
        where = f"messages.[{i}]"
        if not isinstance(raw, dict) or raw.get("role") not in ROLES:
            raise InvalidRequest(f"Invalid value for 'messages[{i}].role': expected one of "
                                 f"{list(ROLES)}.", f"{where}.role")
        role = raw["role"]
        if role != "tool" and open_calls:
            raise InvalidRequest(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(open_calls)}", "messages")
        calls = _tool_calls(raw.get("tool_calls"), where) if role == "assistant" else ()
        content = raw.get("content")
        if content is None and not (role == "assistant" and (calls or "function_call" in raw)):
            raise InvalidRequest(f"Invalid value for 'messages[{i}].content': expected a string "
                                 f"or an array of content parts, got null.", f"{where}.content")
        text = _content(content, i, role, images)
        if isinstance(raw.get("name"), (list, dict, int, float)):
            raise InvalidRequest(f"Invalid type for 'messages[{i}].name': expected a string.",
                                 f"{where}.name")
        tool_name = None
        if role == "tool":
            call_id = raw.get("tool_call_id")
            if not isinstance(call_id, str):
                raise InvalidRequest(f"Missing required parameter: 'messages[{i}].tool_call_id'.",
                                     f"{where}.tool_call_id")
            if call_id not in open_calls:
                raise InvalidRequest("Invalid parameter: messages with role 'tool' must be a "
                                     "response to a preceeding message with 'tool_calls'.",
                                     f"{where}.role")
            tool_name = open_calls.pop(call_id)
        open_calls.update({c.id: c.name for c in calls})
        messages.append(Message(role, text, calls, tool_name))
    if open_calls:
        raise InvalidRequest(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(open_calls)}", "messages")
    return messages, images


def _content(content: Any, index: int, role: str, images: list[int]) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    where = f"messages[{index}].content"
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid type for '{where}': expected a string or an array of "
                             f"content parts, but got {_type_name(content)} instead.",
                             f"messages.[{index}].content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        param = f"messages.[{index}].content.[{j}]"
        if kind not in PART_TYPES:
            raise InvalidRequest(f"Invalid value: {kind!r}. Supported values are: "
                                 f"{', '.join(repr(t) for t in PART_TYPES)}.", f"{param}.type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise InvalidRequest(f"Invalid type for '{where}[{j}].{kind}': expected a "
                                     f"string.", f"{param}.{kind}")
            texts.append(text)
        elif kind == "image_url":
            if role != "user":
                raise InvalidRequest(f"Invalid 'messages[{index}]': image content parts are "
                                     f"only allowed in user messages.", param)
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            detail = image.get("detail", "auto") if isinstance(image, dict) else None
            if not isinstance(url, str) or not url or detail not in ("auto", "low", "high"):
                raise InvalidRequest(f"Invalid 'image_url' in '{where}[{j}]': expected an object "
                                     f"with a 'url' string and 'detail' auto, low or high.",
                                     f"{param}.image_url")
            if not url.startswith(("http://", "https://", "data:image/")):
                raise InvalidRequest(f"Invalid image URL: '{where}[{j}].image_url.url'. Expected "
                                     f"a base64-encoded data URL with an image MIME type or an "
                                     f"http(s) URL.", f"{param}.image_url.url")
            images.append(OPENAI_LOW_DETAIL_IMAGE_TOKENS if detail == "low"
                          else OPENAI_IMAGE_TOKENS)
    return "".join(texts)


def _tool_calls(raw: Any, where: str) -> tuple[ToolCall, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest(f"Invalid type for '{where}.tool_calls': expected an array.",
                             f"{where}.tool_calls")
    calls = []
    for k, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(call.get("id") if isinstance(call, dict) else None, str)
                or call.get("type") != "function" or not isinstance(function, dict)
                or not isinstance(function.get("name"), str)
                or not isinstance(function.get("arguments"), str)):
            raise InvalidRequest(f"Invalid '{where}.tool_calls[{k}]': expected an object with "
                                 f"'id', 'type': 'function' and 'function' {{name, arguments}} "
                                 f"strings.", f"{where}.tool_calls.[{k}]")
        calls.append(ToolCall(call["id"], function["name"], function["arguments"]))
    return tuple(calls)


# -------------------------------------------------------------- output and tools

def _response_format(raw: Any, messages: list[Message]) -> OutputFormat:
    if raw is None:
        return OutputFormat()
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise InvalidRequest(f"Invalid value for 'response_format.type': expected one of "
                             f"'text', 'json_object', 'json_schema', got {kind!r}.",
                             "response_format.type")
    if kind == "json_object":
        if not any("json" in m.text.lower() for m in messages):
            raise InvalidRequest("'messages' must contain the word 'json' in some form, to use "
                                 "'response_format' of type 'json_object'.", "messages")
        return OutputFormat("json_object")
    if kind == "text":
        return OutputFormat()
    spec = raw.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest("Missing required parameter: 'response_format.json_schema'.",
                             "response_format.json_schema")
    name = spec.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidRequest("Invalid 'response_format.json_schema.name': expected a string of "
                             "letters, digits, underscores and dashes (at most 64).",
                             "response_format.json_schema.name")
    strict = spec.get("strict", False)
    if not isinstance(strict, bool) and strict is not None:
        raise InvalidRequest("Invalid type for 'response_format.json_schema.strict': expected a "
                             "boolean.", "response_format.json_schema.strict")
    schema = spec.get("schema", {"type": "object"})
    try:
        check_schema(schema, strict=bool(strict))
    except SchemaError as exc:
        raise InvalidRequest(f"Invalid schema for response_format '{name}': {exc}",
                             "response_format") from None
    return OutputFormat("json_schema", schema)


def _tools(raw: Any) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise InvalidRequest(f"Invalid type for 'tools': expected an array of at most "
                             f"{MAX_TOOLS} tools.", "tools")
    tools = []
    for k, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" \
                or not isinstance(function, dict):
            raise InvalidRequest(f"Invalid value for 'tools[{k}]': expected an object with "
                                 f"'type': 'function' and a 'function' object.", f"tools[{k}]")
        name = function.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise InvalidRequest(f"Invalid 'tools[{k}].function.name': string does not match "
                                 f"pattern. Expected a string that matches the pattern "
                                 f"'^[a-zA-Z0-9_-]+$'.", f"tools[{k}].function.name")
        description = function.get("description", "")
        if not isinstance(description, str):
            raise InvalidRequest(f"Invalid type for 'tools[{k}].function.description': "
                                 f"expected a string.", f"tools[{k}].function.description")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        try:
            check_schema(parameters, strict=function.get("strict") is True)
        except SchemaError as exc:
            raise InvalidRequest(f"Invalid schema for function '{name}': {exc}",
                                 f"tools[{k}].function.parameters") from None
        tools.append(Tool(name, description, parameters))
    return tuple(tools)


def _tool_choice(raw: Any, tools: tuple[Tool, ...]) -> ToolChoice:
    if raw is None:
        return ToolChoice("auto" if tools else "none")
    if not tools:
        raise InvalidRequest("Invalid value for 'tool_choice': 'tool_choice' is only allowed "
                             "when 'tools' are specified.", "tool_choice")
    if raw in ("none", "auto", "required"):
        return ToolChoice(raw)
    function = raw.get("function") if isinstance(raw, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(raw, dict) or raw.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest("Invalid value for 'tool_choice': expected 'none', 'auto', "
                             "'required' or {'type': 'function', 'function': {'name': ...}}.",
                             "tool_choice")
    if name not in {t.name for t in tools}:
        raise InvalidRequest(f"Invalid value for 'tool_choice': no function named '{name}' "
                             f"was specified in the 'tools' parameter.", "tool_choice")
    return ToolChoice("function", name)


# --------------------------------------------------------------------- scalar fields

def _stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list) and len(raw) <= MAX_STOP and all(isinstance(s, str) for s in raw):
        return tuple(raw)
    raise InvalidRequest(f"Invalid type for 'stop': expected a string or an array of at most "
                         f"{MAX_STOP} strings, but got {_type_name(raw)} instead.", "stop")


def _typed(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise InvalidRequest(f"Invalid type for '{name}': expected {_JSON_TYPES[kind]}, but got "
                             f"{_type_name(value)} instead.", name)
    return value


def _integer(body: dict[str, Any], name: str, minimum: int | None = None,
             maximum: int | None = None) -> int | None:
    value = _typed(body, name, int)
    if value is not None and minimum is not None and value < minimum:
        raise InvalidRequest(f"Invalid '{name}': integer below minimum value. Expected a value "
                             f">= {minimum}, but got {value} instead.", name)
    if value is not None and maximum is not None and value > maximum:
        raise InvalidRequest(f"Invalid '{name}': integer above maximum value. Expected a value "
                             f"<= {maximum}, but got {value} instead.", name)
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"Invalid type for '{name}': expected a number, but got "
                             f"{_type_name(value)} instead.", name)
    if not low <= value <= high:
        raise InvalidRequest(f"Invalid '{name}': expected a value between {low} and {high}, "
                             f"but got {value} instead.", name)
    return float(value)


def _type_name(value: Any) -> str:
    for kind, name in _JSON_TYPES.items():
        if type(value) is kind:
            return name
    return "an unsupported value"
