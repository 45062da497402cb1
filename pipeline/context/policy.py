"""Which context strategies a tenant (or one request) asked for: a ``ContextPolicy``, all off
by default, read from a tenant-policy mapping and changed per request by a compact string.

**Mapping** (YAML/JSON; keys exactly the fields, all optional)::

    context:
      normalise: true         # whitespace, duplicate paragraphs and messages
      window_turns: 8         # keep the last 8 turns (0: no turn limit)
      window_tokens: 6000     # ... within 6000 prompt tokens (0: no budget)
      summarise: false        # replace what the window drops by a summary (needs a window)
      retrieved_top_k: 4      # keep the 4 most relevant retrieved passages (0: no count limit)
      retrieved_tokens: 2000  # ... within 2000 tokens of passages (0: no budget)

**Override** (request metadata ``x-llmpipe-context``): comma-separated items applied on top
of the tenant's policy, spaces ignored, case-insensitive:

    off                     every strategy off (must stand alone)
    normalise               normalise on; ``normalise=off`` turns it off
    window=N                window_turns          window_tokens=N   window_tokens
    summarise               summarise on; ``summarise=off`` turns it off
    top_k=N                 retrieved_top_k       retrieved_tokens=N  retrieved_tokens

e.g. ``normalise,window=8,top_k=4`` or ``off``. N is a whole number >= 0; 0 turns that limit
off. "normalize"/"summarize" are accepted too. A bad string raises ``ContextPolicyError``
(a ValueError) naming the item and what was expected.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

OVERRIDE_KEY = "x-llmpipe-context"
INT_MAX = 2**31 - 1                     # Avro int, should the policy travel in an event
_FLAGS = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}
# override item -> field
ITEMS = {"normalise": "normalise", "normalize": "normalise", "window": "window_turns",
         "window_tokens": "window_tokens", "summarise": "summarise", "summarize": "summarise",
         "top_k": "retrieved_top_k", "retrieved_tokens": "retrieved_tokens"}
_EXPECTED = ("off, normalise, window=N, window_tokens=N, summarise, top_k=N, "
             "retrieved_tokens=N")


class ContextPolicyError(ValueError):
    """An invalid context policy or override; ``key`` names the offending key or item."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


@dataclass(frozen=True)
class ContextPolicy:
    normalise: bool = False
    window_turns: int = 0
    window_tokens: int = 0
    summarise: bool = False
    retrieved_top_k: int = 0
    retrieved_tokens: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ContextPolicyError(f.name, f"must be true or false, got {value!r}")
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)
                                    or not 0 <= value <= INT_MAX):
                raise ContextPolicyError(f.name, f"must be a whole number >= 0, got {value!r}")
        if self.summarise and not self.window:
            raise ContextPolicyError("summarise", "summarises what the window drops: set "
                                     "window_turns or window_tokens too")

    @property
    def window(self) -> bool:
        return bool(self.window_turns or self.window_tokens)

    @property
    def retrieved(self) -> bool:
        return bool(self.retrieved_top_k or self.retrieved_tokens)

    @property
    def enabled(self) -> bool:
        return self.normalise or self.window or self.retrieved

    @classmethod
    def from_mapping(cls, data: Any, where: str = "context") -> ContextPolicy:
        """The policy a tenant-policy mapping describes (None or {}: all off); errors name
        ``where.key``."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ContextPolicyError(where, f"must be a mapping of {', '.join(FIELDS)}, got "
                                     f"{type(data).__name__}")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise ContextPolicyError(f"{where}.{unknown[0]}", f"unknown key (expected one of "
                                     f"{', '.join(FIELDS)})")
        try:
            return cls(**data)
        except ContextPolicyError as e:
            raise ContextPolicyError(f"{where}.{e.key}", e.problem) from None

    def to_mapping(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def parse(cls, text: str) -> ContextPolicy:
        """The policy an override string describes on its own (on top of all-off)."""
        return cls().with_override(text)

    def with_override(self, text: str) -> ContextPolicy:
        """This policy changed by the override string ``text`` ("" or spaces: unchanged)."""
        items = [item.strip().lower() for item in text.split(",")]
        if items == [""]:
            return self
        if "off" in items:
            if len(items) > 1:
                raise ContextPolicyError(OVERRIDE_KEY, f"'off' must stand alone, got {text!r}")
            return type(self)()
        changes: dict[str, Any] = {}
        for item in items:
            name, has_value, raw = (part.strip() for part in item.partition("="))
            field = ITEMS.get(name)
            if field is None:
                shown = repr(item) if item else "an empty item"
                raise ContextPolicyError(OVERRIDE_KEY, f"unknown item {shown} in {text!r} "
                                         f"(expected {_EXPECTED})")
            if field in changes:
                raise ContextPolicyError(OVERRIDE_KEY, f"{name!r} is given twice in {text!r}")
            changes[field] = _value(field, name, raw if has_value else None, text)
        try:
            return dataclasses.replace(self, **changes)
        except ContextPolicyError as e:
            raise ContextPolicyError(OVERRIDE_KEY, f"{e.problem} (in {text!r})") from None

    def to_override(self) -> str:
        """The override string that gives this policy from all-off ("off" for all-off)."""
        names = {v: k for k, v in reversed(ITEMS.items())}
        items = []
        for f in FIELDS:
            value = getattr(self, f)
            if value is True:
                items.append(names[f])
            elif value and not isinstance(value, bool):
                items.append(f"{names[f]}={value}")
        return ",".join(items) or "off"


FIELDS = tuple(f.name for f in dataclasses.fields(ContextPolicy))


def _value(field: str, name: str, raw: str | None, text: str) -> bool | int:
    if field in ("normalise", "summarise"):
        if raw is None:
            return True
        if raw not in _FLAGS:
            raise ContextPolicyError(OVERRIDE_KEY, f"{name}={raw!r} in {text!r}: expected "
                                     f"on or off")
        return _FLAGS[raw]
    if raw is None or not raw.isdigit() or not raw.isascii():
        shown = f"{name}={raw}" if raw is not None else name
        raise ContextPolicyError(OVERRIDE_KEY, f"{shown!r} in {text!r}: expected {name}=N, "
                                 f"N a whole number >= 0")
    return int(raw)
