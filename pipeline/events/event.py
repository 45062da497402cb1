"""The base of the event mirrors (models.py): conversion of a dataclass tree to and from
the plain dict shape Avro and JSON use."""

from __future__ import annotations

import dataclasses
import types
import typing
import uuid
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="Event")


class Event:
    """Base of the mirrors: conversion to and from the Avro/JSON dict shape."""

    AVRO_NAME: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        return _from_plain(cls, data)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _from_plain(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _from_plain(inner, value)
    if origin is list:
        (inner,) = typing.get_args(tp)
        return [_from_plain(inner, v) for v in value]
    if origin is dict:
        _, inner = typing.get_args(tp)
        return {k: _from_plain(inner, v) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _HINTS.get(tp)
        if hints is None:
            hints = _HINTS[tp] = typing.get_type_hints(tp)
        kwargs = {f.name: _from_plain(hints[f.name], value[f.name])
                  for f in dataclasses.fields(tp) if f.name in value}
        return tp(**kwargs)
    if tp is str and isinstance(value, uuid.UUID):
        return str(value)
    if tp is Decimal and not isinstance(value, Decimal):
        return Decimal(str(value))
    if tp is float and isinstance(value, int):
        return float(value)
    return value
