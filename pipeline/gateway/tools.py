"""What a chat body asks the answer to be: the functions the model may call (``tools``,
``tool_choice``) and the answer's shape (``response_format``), as our Tool, ToolChoice and
ResponseFormat. JSON Schemas travel as JSON text; intake checks they are well formed."""

from __future__ import annotations

import json
from typing import Any

from pipeline.events.models import ResponseFormat, Tool, ToolChoice
from pipeline.gateway.fields import (BadRequest, absent, boolean, known_keys, name, obj, one_of,
                                     string)

CHOICE_MODES = ("none", "auto", "required")


def parse_tools(raw: Any, max_tools: int) -> list[Tool]:
    if absent(raw):
        return []
    if not isinstance(raw, list):
        raise BadRequest("tools must be an array of function tools", "tools")
    if len(raw) > max_tools:
        raise BadRequest(f"tools holds {len(raw)} tools; at most {max_tools} are accepted",
                         "tools")
    tools: list[Tool] = []
    for i, t in enumerate(raw):
        at = f"tools[{i}]"
        t = obj(t, at)
        if t.get("type") != "function":
            raise BadRequest(f"{at}.type must be 'function' (got {str(t.get('type'))[:40]!r}): "
                             "this gateway carries function tools only", f"{at}.type")
        known_keys(t, at, {"type", "function"})
        f = obj(t.get("function"), f"{at}.function")
        known_keys(f, f"{at}.function", {"name", "description", "parameters", "strict"})
        tool = Tool(name=name(f.get("name"), f"{at}.function.name"),
                    description=string(f.get("description"), f"{at}.function.description",
                                       optional=True),
                    strict=bool(boolean(f.get("strict"), f"{at}.function.strict")))
        if f.get("parameters") is not None:
            tool.parameters = _schema(f["parameters"], f"{at}.function.parameters",
                                      object_root=True)
        if any(other.name == tool.name for other in tools):
            raise BadRequest(f"{at}.function.name {tool.name!r} is given twice; tool names must "
                             "be unique", f"{at}.function.name")
        tools.append(tool)
    return tools


def parse_tool_choice(raw: Any, tools: list[Tool]) -> ToolChoice | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        mode = one_of(raw, "tool_choice", CHOICE_MODES)
        if mode != "none" and not tools:
            raise BadRequest(f"tool_choice {mode!r} is only allowed when tools are given",
                             "tool_choice")
        return ToolChoice(mode)
    choice = obj(raw, "tool_choice")
    if choice.get("type") != "function":
        raise BadRequest("tool_choice must be 'none', 'auto', 'required' or "
                         "{\"type\": \"function\", \"function\": {\"name\": ...}} (got type "
                         f"{str(choice.get('type'))[:40]!r})", "tool_choice")
    known_keys(choice, "tool_choice", {"type", "function"})
    function = obj(choice.get("function"), "tool_choice.function")
    known_keys(function, "tool_choice.function", {"name"})
    chosen = name(function.get("name"), "tool_choice.function.name")
    if not any(t.name == chosen for t in tools):
        raise BadRequest(f"tool_choice names the function {chosen!r}, which is not among tools",
                         "tool_choice.function.name")
    return ToolChoice("function", chosen)


def parse_response_format(raw: Any) -> ResponseFormat | None:
    if raw is None:
        return None
    fmt = obj(raw, "response_format")
    kind = one_of(fmt.get("type"), "response_format.type", ("text", "json_object", "json_schema"))
    if kind != "json_schema":
        known_keys(fmt, "response_format", {"type"})
        return ResponseFormat(kind)
    known_keys(fmt, "response_format", {"type", "json_schema"})
    spec = obj(fmt.get("json_schema"), "response_format.json_schema")
    at = "response_format.json_schema"
    known_keys(spec, at, {"name", "description", "schema", "strict"})
    schema = dict(obj(spec["schema"], f"{at}.schema")) if spec.get("schema") is not None else {}
    description = string(spec.get("description"), f"{at}.description", optional=True)
    if description and "description" not in schema:
        # The contract has no field for it; a schema's own description says the same to
        # the model (JSON Schema annotations do not change what validates).
        schema["description"] = description
    return ResponseFormat("json_schema", name=name(spec.get("name"), f"{at}.name"),
                          schema=_schema(schema, f"{at}.schema"),
                          strict=bool(boolean(spec.get("strict"), f"{at}.strict")))


def _schema(raw: Any, param: str, *, object_root: bool = False) -> str:
    schema = obj(raw, param)
    if object_root and schema.get("type", "object") != "object":
        raise BadRequest(f"{param} must be a JSON Schema of type 'object' (got type "
                         f"{str(schema.get('type'))[:40]!r})", param)
    try:
        return json.dumps(schema, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:               # NaN or Infinity somewhere in it
        raise BadRequest(f"{param} is not valid JSON: {exc}", param) from None
