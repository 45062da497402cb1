"""Reading an OpenAI JSON body one field at a time: each reader returns the field as a
Python value or raises BadRequest naming the field (``param`` in OpenAI's error shape), so
the parsers (wire, messages, tools, embeddings) read as a list of fields."""

from __future__ import annotations

import re
from typing import Any

# A function or schema name as OpenAI accepts it.
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class BadRequest(ValueError):
    """A body the gateway refuses before publishing (400)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


def absent(value: Any) -> bool:
    """Whether a field counts as not given: missing, null, or an empty array or object
    (what SDKs send for "not set")."""
    return value is None or value == [] or value == {}


def obj(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{param} must be an object", param)
    return value


def string(value: Any, param: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{param} must be a string", param)
    return value


def boolean(value: Any, param: str) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        raise BadRequest(f"{param} must be true or false", param)
    return value


def number(value: Any, param: str, kind: type = float, *, low: float | None = None,
           high: float | None = None) -> Any:
    """An int or float field (``kind``), None when absent, within ``low``..``high``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            kind is int and not float(value).is_integer():
        raise BadRequest(f"{param} must be {'an integer' if kind is int else 'a number'}", param)
    value = kind(value)
    if low is not None and value < low or high is not None and value > high:
        if high is None:
            raise BadRequest(f"{param} must be at least {low:g} (got {value:g})", param)
        raise BadRequest(f"{param} must be within {low:g}..{high:g} (got {value:g})", param)
    return value


def name(value: Any, param: str) -> str:
    """A function or schema name: letters, digits, _ and -, 1..64 characters."""
    text = string(value, param)
    assert text is not None
    if not NAME.match(text):
        raise BadRequest(f"{param} {text[:80]!r} must be 1..64 letters, digits, '_' or '-'",
                         param)
    return text


def one_of(value: Any, param: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        shown = repr(value)[:80]
        raise BadRequest(f"{param} must be one of {', '.join(choices)} (got {shown})", param)
    return value


def known_keys(value: dict[str, Any], param: str, known: set[str] | frozenset[str]) -> None:
    """Refuse a key outside ``known``, naming it as OpenAI does."""
    for key in value:
        if key not in known:
            where = f"{param}.{key}" if param else key
            raise BadRequest(f"Unrecognized request argument supplied: {where}", where)
