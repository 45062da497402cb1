"""A Gemini generateContent body read as Google reads it: unknown fields refused, parts
(text, inlineData, fileData, functionCall, functionResponse), ``generationConfig``
(maxOutputTokens, temperature, candidateCount, stopSequences, seed, responseMimeType with
responseSchema — OpenAPI, upper-case types accepted — or responseJsonSchema), ``tools``
with ``functionDeclarations`` and ``toolConfig.functionCallingConfig``. Field names are
accepted in camelCase and snake_case, as Google's JSON mapping does."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pipeline.routing.tokens import estimate_text_tokens
from pipeline.simulator.chat import (GEMINI_IMAGE_TOKENS, ChatRequest, Message, OutputFormat,
                                     Tool, ToolCall, ToolChoice)
from pipeline.simulator.core import InvalidRequest
from pipeline.simulator.schema_instance import SchemaError, check_schema

ROLES = {"user": "user", "model": "assistant", "function": "user"}
TOP_LEVEL = ("contents", "systemInstruction", "generationConfig", "tools", "toolConfig",
             "safetySettings", "cachedContent", "labels")
GENERATION = ("maxOutputTokens", "temperature", "topP", "topK", "candidateCount",
              "stopSequences", "seed", "responseMimeType", "responseSchema",
              "responseJsonSchema", "responseLogprobs", "logprobs", "presencePenalty",
              "frequencyPenalty", "thinkingConfig", "responseModalities", "mediaResolution")
PART_DATA = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "thought",
             "thoughtSignature", "executableCode", "codeExecutionResult")
FUNCTION_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}$")
MAX_CANDIDATES, MAX_STOP = 8, 5


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def camel_keys(data: dict[str, Any], known: tuple[str, ...], where: str) -> dict[str, Any]:
    """``data`` with snake_case keys in camelCase; an unknown key is Google's 400."""
    out = {}
    for key, value in data.items():
        name = camel(key)
        if name not in known:
            raise InvalidRequest(f'Invalid JSON payload received. Unknown name "{key}" at '
                                 f"'{where}': Cannot find field.")
        out[name] = value
    return out


def parse_generate_request(body: dict[str, Any], model: str, stream: bool = False) -> ChatRequest:
    body = camel_keys(body, TOP_LEVEL, "")
    raw_contents = body.get("contents")
    if not isinstance(raw_contents, list) or not raw_contents:
        raise InvalidRequest("* GenerateContentRequest.contents: contents is not specified")
    images: list[int] = []
    messages = []
    system = body.get("systemInstruction")
    if system is not None:
        messages += _content(system, "system_instruction", "system", images)
    for i, raw in enumerate(raw_contents):
        role = raw.get("role", "user") if isinstance(raw, dict) else None
        if role not in ROLES:
            raise InvalidRequest(f"* GenerateContentRequest.contents[{i}].role: Please use a "
                                 f"valid role: user, model.")
        messages += _content(raw, f"contents[{i}]", ROLES[role], images)
    config = body.get("generationConfig") or {}
    if not isinstance(config, dict):
        raise InvalidRequest("Invalid value at 'generation_config': expected an object")
    config = camel_keys(config, GENERATION, "generation_config")
    max_tokens = _integer(config, "maxOutputTokens", "max_output_tokens", 1)
    temperature = config.get("temperature")
    if temperature is not None and (isinstance(temperature, bool)
                                    or not isinstance(temperature, (int, float))
                                    or not 0 <= temperature <= 2):
        raise InvalidRequest("* GenerateContentRequest.generation_config.temperature: "
                             "temperature must be between 0 and 2")
    n = _integer(config, "candidateCount", "candidate_count", 1, MAX_CANDIDATES) or 1
    seed = _integer(config, "seed", "seed")
    stop = config.get("stopSequences") or []
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str)
                                                                     for s in stop):
        raise InvalidRequest(f"* GenerateContentRequest.generation_config.stop_sequences: at "
                             f"most {MAX_STOP} strings")
    output = _output(config)
    tools = _tools(body.get("tools"))
    choice = _tool_choice(body.get("toolConfig"), tools)
    logprobs = config.get("responseLogprobs") is True

    features = {name for name, wanted in (("vision", images), ("tools", tools), ("n", n > 1),
                                          ("logprobs", logprobs)) if wanted}
    if output.kind != "text":
        features.add(output.kind)
    extra = sum(images) + (estimate_text_tokens(json.dumps(body["tools"])) if tools else 0)
    if output.schema is not None:
        extra += estimate_text_tokens(json.dumps(output.schema))
    repeatable = None
    if temperature == 0 and seed is not None:
        sampled = {k: v for k, v in config.items()
                   if k not in ("stopSequences", "maxOutputTokens", "candidateCount")}
        shaping = {**body, "generationConfig": sampled}
        repeatable = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()
    return ChatRequest(model, tuple(messages), max_tokens, stream, n=n, stop=tuple(stop),
                       repeatable=repeatable, output=output, tools=tools, tool_choice=choice,
                       extra_prompt_tokens=extra, features=frozenset(features))


def _content(content: Any, where: str, role: str, images: list[int]) -> list[Message]:
    """A content's parts as messages: its text (and function calls), and one tool message
    per functionResponse."""
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list) or not parts:
        raise InvalidRequest(f"* GenerateContentRequest.{where}.parts: contents.parts must "
                             f"not be empty.")
    texts, calls, results = [], [], []
    for j, raw in enumerate(parts):
        part = camel_keys(raw, PART_DATA, f"{where}.parts[{j}]") if isinstance(raw, dict) else {}
        if not set(part) & {"text", "inlineData", "fileData", "functionCall",
                            "functionResponse", "executableCode", "codeExecutionResult"}:
            raise InvalidRequest(f"* GenerateContentRequest.{where}.parts[{j}].data: required "
                                 f"oneof field 'data' must have one initialized field")
        if "text" in part:
            if not isinstance(part["text"], str):
                raise InvalidRequest(f"Invalid value at '{where}.parts[{j}].text': expected a "
                                     f"string")
            if not part.get("thought"):
                texts.append(part["text"])
        for key, field in (("inlineData", "data"), ("fileData", "fileUri")):
            if key in part:
                data = part[key]
                if not isinstance(data, dict) or not isinstance(
                        data.get(field, data.get("file_uri")), str) or not isinstance(
                        data.get("mimeType", data.get("mime_type")), str):
                    raise InvalidRequest(f"* GenerateContentRequest.{where}.parts[{j}].{key}: "
                                         f"mime_type and {field} are required")
                images.append(GEMINI_IMAGE_TOKENS)
        if "functionCall" in part:
            call = part["functionCall"]
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise InvalidRequest(f"* GenerateContentRequest.{where}.parts[{j}]."
                                     f"function_call.name: name is required")
            calls.append(ToolCall(str(call.get("id", "")), call["name"],
                                  json.dumps(call.get("args") or {})))
        if "functionResponse" in part:
            answer = part["functionResponse"]
            if not isinstance(answer, dict) or not isinstance(answer.get("name"), str):
                raise InvalidRequest(f"* GenerateContentRequest.{where}.parts[{j}]."
                                     f"function_response.name: name is required")
            results.append(Message("tool", json.dumps(answer.get("response", {})),
                                   tool_name=answer["name"]))
    if texts or calls or not results:
        return [*results, Message(role, "".join(texts), tuple(calls))]
    return results


def _output(config: dict[str, Any]) -> OutputFormat:
    mime = config.get("responseMimeType", "text/plain")
    schema = config.get("responseJsonSchema", config.get("responseSchema"))
    if mime not in ("text/plain", "application/json", "text/x.enum"):
        raise InvalidRequest(f"* GenerateContentRequest.generation_config.response_mime_type: "
                             f"allowed mimetypes are `text/plain`, `application/json`, "
                             f"`text/x.enum`; got {mime!r}")
    if schema is None:
        return OutputFormat("json_object") if mime == "application/json" else OutputFormat()
    if mime == "text/plain":
        raise InvalidRequest("* GenerateContentRequest.generation_config.response_mime_type: "
                             "only application/json or text/x.enum are supported with a "
                             "response schema")
    try:
        check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequest(f"* GenerateContentRequest.generation_config.response_schema: "
                             f"{exc}") from None
    return OutputFormat("json_schema", schema)


def _tools(raw: Any) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest("Invalid value at 'tools': expected a list")
    tools = []
    for k, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise InvalidRequest(f"Invalid value at 'tools[{k}]': expected an object")
        declarations = entry.get("functionDeclarations", entry.get("function_declarations", []))
        if not isinstance(declarations, list):
            raise InvalidRequest(f"Invalid value at 'tools[{k}].function_declarations'")
        for d, decl in enumerate(declarations):
            where = f"tools[{k}].function_declarations[{d}]"
            name = decl.get("name") if isinstance(decl, dict) else None
            if not isinstance(name, str) or not FUNCTION_NAME.match(name):
                raise InvalidRequest(f"* GenerateContentRequest.{where}.name: Invalid function "
                                     f"name. Must start with a letter or an underscore.")
            schema = decl.get("parametersJsonSchema", decl.get("parameters"))
            if schema is not None:
                try:
                    check_schema(schema)
                except SchemaError as exc:
                    raise InvalidRequest(f"* GenerateContentRequest.{where}.parameters: "
                                         f"{exc}") from None
            tools.append(Tool(name, str(decl.get("description", "")), schema or {}))
    return tuple(tools)


def _tool_choice(raw: Any, tools: tuple[Tool, ...]) -> ToolChoice:
    config = {}
    if isinstance(raw, dict):
        config = raw.get("functionCallingConfig", raw.get("function_calling_config")) or {}
    elif raw is not None:
        raise InvalidRequest("Invalid value at 'tool_config': expected an object")
    mode = str(config.get("mode", "AUTO")).upper()
    allowed = config.get("allowedFunctionNames", config.get("allowed_function_names")) or []
    if mode not in ("AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"):
        raise InvalidRequest(f"Invalid value at 'tool_config.function_calling_config.mode' "
                             f"({mode}): expected AUTO, ANY, NONE or VALIDATED")
    if allowed and mode != "ANY":
        raise InvalidRequest("* GenerateContentRequest.tool_config.function_calling_config."
                             "allowed_function_names: only allowed with mode ANY")
    unknown = [name for name in allowed if name not in {t.name for t in tools}]
    if unknown:
        raise InvalidRequest(f"* GenerateContentRequest.tool_config.function_calling_config."
                             f"allowed_function_names: {unknown[0]} is not a declared function")
    if not tools or mode == "NONE":
        return ToolChoice("none")
    if mode == "ANY":
        if len(allowed) == 1:
            return ToolChoice("function", allowed[0])
        return ToolChoice("required", allowed=tuple(allowed))
    return ToolChoice("auto")


def _integer(config: dict[str, Any], name: str, snake: str, minimum: int | None = None,
             maximum: int | None = None) -> int | None:
    value = config.get(name)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, int)
            or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        bounds = f" from {minimum}" if minimum is not None else ""
        bounds += f" to {maximum}" if maximum is not None else ""
        raise InvalidRequest(f"* GenerateContentRequest.generation_config.{snake}: must be an "
                             f"integer{bounds}, got {value!r}")
    return value
