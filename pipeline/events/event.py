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


# Issue 17: the generic walk below (dataclasses.fields, is_dataclass and typing.get_origin on
# every value) was ~5-9% of a worker's CPU. The same conversions, with the per-class work
# (field names, type hints) done once per class; _to_plain_generic/_from_plain_generic stay
# the reference (tests compare the two).
_SCALARS = frozenset((str, int, float, bool, type(None), bytes, Decimal))
_FIELD_NAMES: dict[type, tuple[str, ...] | None] = {}


def _to_plain(value: Any) -> Any:
    t = type(value)
    if t in _SCALARS:
        return value
    if t is list:
        return [_to_plain(v) for v in value]
    names = _FIELD_NAMES.get(t, False)
    if names is False:
        names = _FIELD_NAMES[t] = (tuple(f.name for f in dataclasses.fields(t))
                                   if dataclasses.is_dataclass(t) else None)
    if names is not None:
        out = {}
        for n in names:
            v = getattr(value, n)
            out[n] = v if type(v) in _SCALARS else _to_plain(v)
        return out
    return _to_plain_generic(value)


def _to_plain_generic(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


_HINTS: dict[type, dict[str, Any]] = {}


_CONVERTERS: dict[Any, Any] = {}


def _from_plain(tp: Any, value: Any) -> Any:
    return _converter(tp)(value)


def _identity(value: Any) -> Any:
    return value


def _compile_from(tp: Any) -> Any:
    """A function doing what _from_plain_generic(tp, value) does, with the decisions that
    depend on ``tp`` alone taken once."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner_types = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner_types) != 1:
            return lambda value: _from_plain_generic(tp, value)
        inner = _converter(inner_types[0])
        return lambda value: None if value is None else inner(value)
    if origin is list:
        (item,) = typing.get_args(tp)
        inner = _converter(item)
        if inner is _identity:
            return lambda value: [v for v in value]
        return lambda value: [inner(v) for v in value]
    if origin is dict:
        _, item = typing.get_args(tp)
        inner = _converter(item)
        return lambda value: {k: inner(v) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _HINTS.get(tp)
        if hints is None:
            hints = _HINTS[tp] = typing.get_type_hints(tp)
        field_types = [(f.name, hints[f.name]) for f in dataclasses.fields(tp)]
        fields: list[tuple[str, Any]] = []      # resolved on first use: types may refer back

        def build(value: Any) -> Any:
            if len(fields) != len(field_types):
                fields[:] = [(name, _converter(t)) for name, t in field_types]
            kwargs = {}
            for name, conv in fields:
                if name in value:
                    v = value[name]
                    kwargs[name] = v if conv is _identity else conv(v)
            return tp(**kwargs)
        return build
    if tp is str:
        return lambda value: str(value) if isinstance(value, uuid.UUID) else value
    if tp is Decimal:
        return lambda value: value if isinstance(value, Decimal) else Decimal(str(value))
    if tp is float:
        return lambda value: float(value) if isinstance(value, int) else value
    return _identity


def _converter(tp: Any) -> Any:
    """The compiled converter of ``tp`` (identity where _from_plain_generic returns the
    value as it is)."""
    conv = _CONVERTERS.get(tp)
    if conv is None:
        conv = _CONVERTERS[tp] = _compile_from(tp)
    return conv


def _from_plain_generic(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _from_plain_generic(inner, value)
    if origin is list:
        (inner,) = typing.get_args(tp)
        return [_from_plain_generic(inner, v) for v in value]
    if origin is dict:
        _, inner = typing.get_args(tp)
        return {k: _from_plain_generic(inner, v) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _HINTS.get(tp)
        if hints is None:
            hints = _HINTS[tp] = typing.get_type_hints(tp)
        kwargs = {f.name: _from_plain_generic(hints[f.name], value[f.name])
                  for f in dataclasses.fields(tp) if f.name in value}
        return tp(**kwargs)
    if tp is str and isinstance(value, uuid.UUID):
        return str(value)
    if tp is Decimal and not isinstance(value, Decimal):
        return Decimal(str(value))
    if tp is float and isinstance(value, int):
        return float(value)
    return value
