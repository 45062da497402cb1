"""Text an event may carry: valid Unicode, and names without control characters.

JSON lets a caller write a lone surrogate (``"\\ud800"``); Python keeps it in a ``str``, and
it fails the moment the event is encoded as Avro or UTF-8 JSON. Intake refuses such text
(``invalid_text``); an output that still holds some (a provider's answer, say) is published
with U+FFFD in its place (``scrub``)."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Any, TypeVar

T = TypeVar("T")

_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def invalid_text(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8, or None if it can."""
    bad = _SURROGATE.search(text)
    if bad is None:
        return None
    return f"is not valid Unicode (lone surrogate U+{ord(bad.group()):04X} at index {bad.start()})"


def invalid_name(name: str, max_length: int) -> str | None:
    """Why ``name`` (a tenant, team, user, model or metadata key) is not acceptable, or None:
    1..max_length characters of valid Unicode, no control or format characters, no
    surrounding whitespace."""
    if not name:
        return "must not be empty"
    if len(name) > max_length:
        return f"is {len(name)} characters long; at most {max_length} are allowed"
    why = invalid_text(name)
    if why:
        return why
    for i, ch in enumerate(name):
        if unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cn", "Zl", "Zp"):
            return f"holds a control character (U+{ord(ch):04X} at index {i})"
    if name != name.strip():
        return "has leading or trailing whitespace"
    return None


def scrub_text(text: str) -> str:
    return _SURROGATE.sub(REPLACEMENT, text)


def scrub(value: T) -> T:
    """A copy of ``value`` (an event, or anything made of dataclasses, lists, dicts and
    strings) with every lone surrogate replaced by U+FFFD."""
    if isinstance(value, str):
        return scrub_text(value)  # type: ignore[return-value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: scrub(getattr(value, f.name))  # type: ignore[arg-type]
                                             for f in dataclasses.fields(value)})
    if isinstance(value, list):
        return [scrub(v) for v in value]  # type: ignore[return-value]
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}  # type: ignore[return-value]
    return value


def strings_of(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Every string inside ``value`` with its path (``messages[0].content``), dict keys
    included, for validation messages that name the field."""
    found: list[tuple[str, str]] = []
    if isinstance(value, str):
        found.append((path, value))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            found += strings_of(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += strings_of(v, f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            found += strings_of(k, f"{path} key {k!r}")
            found += strings_of(v, f"{path}[{k!r}]")
    return found
