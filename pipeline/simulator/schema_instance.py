"""JSON Schema for the simulator: is a schema well formed (and, for OpenAI's ``strict``,
strict), and a made-up instance valid against it — the answer to a ``json_schema``
response format or a tool call's arguments.

Covers what pydantic v2's ``model_json_schema()`` and OpenAPI (Gemini's ``responseSchema``)
emit: object/properties/required/additionalProperties, array/items/prefixItems/min/maxItems,
string (minLength/maxLength, enum, const, common formats), number and integer bounds and
multipleOf, boolean, null, type lists and ``nullable``, anyOf/oneOf/allOf, and ``$ref``
into ``$defs``/``definitions`` (recursive models end at a depth limit). Types may be upper
case, as Gemini writes them (``OBJECT``). ``pattern`` is not honoured."""

from __future__ import annotations

import random
import re
import uuid
from typing import Any

TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
MAX_DEPTH = 6                       # past this, optional parts are left out
_FILLER_WORDS = ("alpha", "beta", "gamma", "delta", "sample", "value", "example", "item")
_FORMATS = {"date-time": "2024-05-01T12:00:00Z", "date": "2024-05-01", "time": "12:00:00",
            "email": "user@example.com", "uri": "https://example.com/resource",
            "url": "https://example.com/resource", "hostname": "example.com",
            "ipv4": "192.0.2.1", "ipv6": "2001:db8::1", "duration": "P1D"}


class SchemaError(ValueError):
    """A schema the provider would refuse; ``context`` is where, as OpenAI names it."""

    def __init__(self, problem: str, context: tuple[str, ...] = ()):
        super().__init__(f"In context={context!r}, {problem}" if context else problem)


# ------------------------------------------------------------------ well formed, strict

def check_schema(schema: Any, *, strict: bool = False) -> None:
    """SchemaError unless ``schema`` is a usable JSON Schema (``strict``: every object
    closed with ``additionalProperties: false`` and all its properties required)."""
    if not isinstance(schema, dict):
        raise SchemaError("schema must be a JSON object")
    _check(schema, schema, (), strict, set())


def _check(node: Any, root: dict[str, Any], context: tuple[str, ...], strict: bool,
           seen: set[int]) -> None:
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        raise SchemaError("a schema must be an object or a boolean", context)
    if id(node) in seen:
        return
    seen.add(id(node))
    if "$ref" in node:
        resolve_ref(root, node["$ref"], context)
    kinds = schema_types(node)
    unknown = [k for k in kinds if k not in TYPES]
    if unknown:
        raise SchemaError(f"{unknown[0]!r} is not a valid type", context)
    if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
        raise SchemaError("'enum' must be a non-empty array", context)
    properties = node.get("properties", {})
    if not isinstance(properties, dict):
        raise SchemaError("'properties' must be an object", context)
    required = node.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError("'required' must be an array of strings", context)
    if strict and ("object" in kinds or properties):
        if node.get("additionalProperties") is not False:
            raise SchemaError("'additionalProperties' is required to be supplied and to be "
                              "false.", context)
        missing = [name for name in properties if name not in required]
        if missing:
            raise SchemaError(f"'required' is required to be supplied and to be an array "
                              f"including every key in properties. Missing '{missing[0]}'.",
                              context)
    for name, sub in properties.items():
        _check(sub, root, context + ("properties", name), strict, seen)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            _check(node[key], root, context + (key,), strict, seen)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if key in node:
            if not isinstance(node[key], list) or not node[key]:
                raise SchemaError(f"'{key}' must be a non-empty array", context)
            for i, sub in enumerate(node[key]):
                _check(sub, root, context + (key, str(i)), strict, seen)
    for key in ("$defs", "definitions"):
        if key in node:
            if not isinstance(node[key], dict):
                raise SchemaError(f"'{key}' must be an object", context)
            for name, sub in node[key].items():
                _check(sub, root, context + (key, name), strict, seen)


def schema_types(node: dict[str, Any]) -> list[str]:
    """The node's types, lower-cased, with OpenAPI's ``nullable`` as a "null" type."""
    declared = node.get("type")
    if declared is None:
        kinds: list[str] = []
    elif isinstance(declared, str):
        kinds = [declared.lower()]
    elif isinstance(declared, list) and all(isinstance(t, str) for t in declared):
        kinds = [t.lower() for t in declared]
    else:
        raise SchemaError(f"{declared!r} is not a valid type")
    if node.get("nullable") is True and "null" not in kinds:
        kinds.append("null")
    return kinds


def resolve_ref(root: dict[str, Any], ref: Any, context: tuple[str, ...] = ()) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise SchemaError(f"only local references are supported, got {ref!r}", context)
    node: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise SchemaError(f"reference {ref!r} does not resolve", context)
        node = node[part]
    return node


# ------------------------------------------------------------------------- instances

def make_instance(schema: dict[str, Any], rng: random.Random, words: tuple[str, ...] = ()) -> Any:
    """A value valid against ``schema`` (checked well formed before); strings are made of
    ``words`` (e.g. the prompt's) so an answer reads as if about the question."""
    vocabulary = words if len(words) >= 4 else tuple(words) + _FILLER_WORDS
    return _Maker(schema, rng, vocabulary).value(schema, 0)


def prompt_words(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(w for w in re.findall(r"[A-Za-z][A-Za-z'-]{2,}", text)))[:40]


class _Maker:
    def __init__(self, root: dict[str, Any], rng: random.Random, words: tuple[str, ...]):
        self.root, self.rng, self.words = root, rng, words

    def value(self, node: Any, depth: int) -> Any:
        if node is True or node == {}:
            return self._string({})
        if not isinstance(node, dict):
            return None
        if "$ref" in node:
            target = resolve_ref(self.root, node["$ref"])
            siblings = {k: v for k, v in node.items() if k not in ("$ref", "description",
                                                                    "title", "default")}
            return self.value({**target, **siblings} if siblings else target, depth + 1)
        if "const" in node:
            return node["const"]
        if "enum" in node:
            return self.rng.choice(node["enum"])
        if "allOf" in node:
            merged = {k: v for k, v in node.items() if k != "allOf"}
            for part in node["allOf"]:
                part = resolve_ref(self.root, part["$ref"]) if "$ref" in part else part
                merged = _merge(merged, part)
            return self.value(merged, depth)
        for key in ("anyOf", "oneOf"):
            if key in node:
                return self.value(self._branch(node[key], depth), depth)
        kinds = schema_types(node) or [_implied_type(node)]
        kind = self._pick_type(kinds, depth)
        return getattr(self, f"_{kind}")(node, depth) if kind in ("object", "array") \
            else getattr(self, f"_{kind}")(node)

    def _branch(self, branches: list[Any], depth: int) -> Any:
        if depth >= MAX_DEPTH:
            for branch in branches:
                if isinstance(branch, dict) and schema_types(branch) == ["null"]:
                    return branch
        concrete = [b for b in branches
                    if not (isinstance(b, dict) and schema_types(b) == ["null"])]
        return self.rng.choice(concrete or branches)

    def _pick_type(self, kinds: list[str], depth: int) -> str:
        if "null" in kinds and (depth >= MAX_DEPTH or len(kinds) == 1):
            return "null"
        concrete = [k for k in kinds if k != "null"]
        return self.rng.choice(concrete)

    def _object(self, node: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = node.get("properties") or {}
        required = set(node.get("required") or ())
        order = node.get("propertyOrdering") or list(properties)
        order = [n for n in order if n in properties] + [n for n in properties if n not in order]
        out: dict[str, Any] = {}
        for name in order:
            if name in required or (depth < MAX_DEPTH - 1 and self.rng.random() < 0.7):
                out[name] = self.value(properties[name], depth + 1)
        extra = node.get("additionalProperties")
        if not properties and isinstance(extra, dict) and depth < MAX_DEPTH - 1:
            for word in self.rng.sample(self.words, min(2, len(self.words))):
                out[word.lower()] = self.value(extra, depth + 1)
        minimum = node.get("minProperties", 0)
        for word in self.words:
            if len(out) >= minimum or extra is False:
                break
            out.setdefault(word.lower(), self._string({}))
        return out

    def _array(self, node: dict[str, Any], depth: int) -> list[Any]:
        prefix = node.get("prefixItems") or []
        low = max(int(node.get("minItems", 1 if depth < MAX_DEPTH else 0)), len(prefix))
        high = int(node.get("maxItems", low + 2))
        count = low if depth >= MAX_DEPTH else self.rng.randint(low, max(low, high))
        items = node.get("items", {}) if node.get("items") is not False else {}
        out = [self.value(prefix[i] if i < len(prefix) else items, depth + 1)
               for i in range(count)]
        if node.get("uniqueItems"):
            unique: list[Any] = []
            for item in out:
                if item not in unique:
                    unique.append(item)
            out = unique if len(unique) >= low else out
        return out

    def _string(self, node: dict[str, Any]) -> str:
        fmt = node.get("format")
        if fmt == "uuid":
            return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        if fmt in _FORMATS:
            return _FORMATS[fmt]
        text = " ".join(self.rng.choice(self.words) for _ in range(self.rng.randint(1, 3)))
        low, high = int(node.get("minLength", 0)), node.get("maxLength")
        while len(text) < low:
            text += " " + self.rng.choice(self.words)
        return text[:int(high)] if high is not None else text

    def _integer(self, node: dict[str, Any]) -> int:
        low, high = _bounds(node, 0, 100, step=1)
        step = node.get("multipleOf")
        if isinstance(step, int) and step > 0:
            first = -(-int(low) // step) * step
            return first if first > high else first + step * self.rng.randint(
                0, max(int((high - first) // step), 0))
        return self.rng.randint(int(low), max(int(low), int(high)))

    def _number(self, node: dict[str, Any]) -> float:
        low, high = _bounds(node, 0.0, 100.0, step=0.01)
        step = node.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            return round(-(-low // step) * step, 10)
        return min(max(round(self.rng.uniform(low, high), 2), low), high)

    def _boolean(self, node: dict[str, Any]) -> bool:
        return self.rng.random() < 0.5

    def _null(self, node: dict[str, Any]) -> None:
        return None


def _implied_type(node: dict[str, Any]) -> str:
    if "properties" in node or "additionalProperties" in node:
        return "object"
    if "items" in node or "prefixItems" in node:
        return "array"
    return "string"


def _bounds(node: dict[str, Any], low: float, high: float, step: float) -> tuple[float, float]:
    """The [low, high] the node allows, around a default range."""
    lo, hi = node.get("minimum"), node.get("maximum")
    if isinstance(node.get("exclusiveMinimum"), (int, float)) and \
            not isinstance(node.get("exclusiveMinimum"), bool):
        lo = node["exclusiveMinimum"] + step
    if isinstance(node.get("exclusiveMaximum"), (int, float)) and \
            not isinstance(node.get("exclusiveMaximum"), bool):
        hi = node["exclusiveMaximum"] - step
    if lo is None and hi is None:
        return low, high
    if lo is None:
        return min(low, hi - (high - low)), hi
    if hi is None:
        return lo, lo + (high - low)
    return lo, max(lo, hi)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {**a, **b}
    if "properties" in a and "properties" in b:
        out["properties"] = {**a["properties"], **b["properties"]}
    if "required" in a and "required" in b:
        out["required"] = list(dict.fromkeys([*a["required"], *b["required"]]))
    return out
