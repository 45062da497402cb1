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


#: Field names per type met, () for any but a dataclass (``dataclasses.fields`` and
#: ``is_dataclass`` are slow on the hot path).
_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(value: Any) -> tuple[str, ...]:
    """The field names of a dataclass instance, () for anything else (cached per type)."""
    names = _FIELDS.get(type(value))
    if names is None:
        holds = dataclasses.is_dataclass(value) and not isinstance(value, type)
        names = _FIELDS[type(value)] = tuple(
            f.name for f in dataclasses.fields(value)) if holds else ()
    return names


def scrub_text(text: str) -> str:
    return _SURROGATE.sub(REPLACEMENT, text)


def scrub(value: T) -> T:
    """A copy of ``value`` (an event, or anything made of dataclasses, lists, dicts and
    strings) with every lone surrogate replaced by U+FFFD."""
    if isinstance(value, str):
        return scrub_text(value)  # type: ignore[return-value]
    if isinstance(value, list):
        return [scrub(v) for v in value]  # type: ignore[return-value]
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}  # type: ignore[return-value]
    names = _field_names(value)
    if names:
        return dataclasses.replace(value, **{name: scrub(getattr(value, name))  # type: ignore[type-var]
                                             for name in names})
    return value


def invalid_text_in(value: Any) -> str | None:
    """Where and why the first string inside ``value`` (an event, or anything made of
    dataclasses, lists, dicts and strings; dict keys included) is not valid Unicode, e.g.
    ``messages[0].content is not valid Unicode (...)``; None if every string is valid. The
    path is built only for the string found: this runs on every request."""
    found = _first_invalid(value)
    if found is None:
        return None
    path, why = found
    return f"{''.join(reversed(path)).lstrip('.')} {why}".lstrip()


def _first_invalid(value: Any) -> tuple[list[str], str] | None:
    """The path (innermost segment first) and reason of the first invalid string."""
    if isinstance(value, str):
        why = invalid_text(value)
        return ([], why) if why else None
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _first_invalid(item)
            if found is not None:
                found[0].append(f"[{i}]")
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_invalid(key)
            if found is not None:
                return [f" key {key!r}"], found[1]
            found = _first_invalid(item)
            if found is not None:
                found[0].append(f"[{key!r}]")
                return found
        return None
    for name in _field_names(value):
        found = _first_invalid(getattr(value, name))
        if found is not None:
            found[0].append(f".{name}")
            return found
    return None
