"""Encode and decode events: Avro in the Confluent wire format on the hot path (fastavro),
and plain JSON on llm.requests (and on the replies to JSON requests).

Wire format: byte 0 is the magic 0x00, bytes 1-4 the big-endian schema id, then the Avro
binary body. Any other leading byte is rejected, except ``{`` where JSON is accepted.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import fastavro
from fastavro.validation import validate

from pipeline.events.models import Event
from pipeline.events.registry import LocalRegistry, Registry, UnknownSchema

MAGIC = 0
HEADER = struct.Struct(">bI")
E = TypeVar("E", bound=Event)


class DecodeError(ValueError):
    """Bytes that are not a valid event. ``code`` is the dead-letter reason code."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Codec:
    def __init__(self, registry: Registry | None = None):
        self.registry = registry or LocalRegistry()

    # --- Avro ------------------------------------------------------------------------

    def encode(self, event: Event, topic: str) -> bytes:
        name = event.AVRO_NAME
        schema_id = self.registry.writer_id(name, f"{topic}-value")
        buf = io.BytesIO()
        buf.write(HEADER.pack(MAGIC, schema_id))
        fastavro.schemaless_writer(buf, self.registry.reader(name), event.to_dict())
        return buf.getvalue()

    def decode(self, data: bytes | None, cls: type[E]) -> E:
        """Decode Avro wire format or JSON into ``cls``; raise DecodeError with a reason."""
        if not data:
            raise DecodeError("undecodable", "empty message value")
        if is_json(data):
            return self.decode_json(data, cls)
        if data[0] != MAGIC or len(data) < HEADER.size:
            raise DecodeError("undecodable", f"unknown magic byte 0x{data[0]:02x}: expected "
                              "Avro in the Confluent wire format (0x00) or a JSON object")
        _, schema_id = HEADER.unpack_from(data)
        try:
            writer = self.registry.writer(schema_id)
        except UnknownSchema as exc:
            raise DecodeError("unknown_schema", str(exc)) from None
        try:
            body = io.BytesIO(data[HEADER.size:])
            record = fastavro.schemaless_reader(body, writer, self.registry.reader(cls.AVRO_NAME))
            if body.tell() != len(data) - HEADER.size:
                raise ValueError(f"{len(data) - HEADER.size - body.tell()} trailing bytes")
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise DecodeError("undecodable",
                              f"Avro body does not match schema id {schema_id}: {exc!r}") from None
        return cls.from_dict(record)

    # --- JSON ------------------------------------------------------------------------

    def decode_json(self, data: bytes, cls: type[E]) -> E:
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DecodeError("undecodable", f"not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise DecodeError("undecodable", "JSON value must be an object")
        schema = self.registry.reader(cls.AVRO_NAME)
        record = _coerce(obj, schema, cls.AVRO_NAME)
        try:
            validate(record, schema, raise_errors=True)
        except Exception as exc:
            raise DecodeError("schema_violation", f"does not match {cls.AVRO_NAME}: {exc}") from None
        return cls.from_dict(record)

    @staticmethod
    def encode_json(event: Event, *, ascii_only: bool = False) -> bytes:
        """UTF-8 JSON; with ``ascii_only`` every non-ASCII character is escaped, so any text
        (a lone surrogate too) encodes: for dead letters, which must always go out."""
        return json.dumps(event.to_dict(), default=_json_default, ensure_ascii=ascii_only,
                          separators=(",", ":")).encode()


def is_json(data: bytes | None) -> bool:
    """JSON values start with '{' (after optional whitespace); Avro ones with 0x00."""
    return bool(data) and data.lstrip()[:1] == b"{"


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _coerce(value: Any, schema: Any, path: str) -> Any:
    """Fill defaults, reject unknown or missing fields, and turn JSON numbers into the
    types Avro wants (decimals from numbers or strings, doubles from ints)."""
    if isinstance(schema, list):
        if value is None and "null" in schema:
            return None
        errors = []
        for branch in schema:
            if branch == "null":
                continue
            try:
                return _coerce(value, branch, path)
            except DecodeError as exc:
                errors.append(exc.reason)
        raise DecodeError("schema_violation", errors[0] if errors else f"{path}: must not be null")
    kind = schema["type"] if isinstance(schema, dict) else schema
    logical = schema.get("logicalType") if isinstance(schema, dict) else None
    if kind == "record":
        if not isinstance(value, dict):
            raise DecodeError("schema_violation", f"{path}: expected an object")
        names = {f["name"] for f in schema["fields"]}
        unknown = sorted(set(value) - names)
        if unknown:
            raise DecodeError("schema_violation", f"{path}: unknown field(s) {', '.join(unknown)}")
        out = {}
        for f in schema["fields"]:
            where = f"{path}.{f['name']}"
            if f["name"] in value:
                out[f["name"]] = _coerce(value[f["name"]], f["type"], where)
            elif "default" in f:
                out[f["name"]] = _coerce(f["default"], f["type"], where)
            else:
                raise DecodeError("schema_violation", f"{where}: required field is missing")
        return out
    if kind == "array":
        if not isinstance(value, list):
            raise DecodeError("schema_violation", f"{path}: expected an array")
        return [_coerce(v, schema["items"], f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "map":
        if not isinstance(value, dict):
            raise DecodeError("schema_violation", f"{path}: expected an object")
        return {k: _coerce(v, schema["values"], f"{path}.{k}") for k, v in value.items()}
    if logical == "decimal":
        if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
            raise DecodeError("schema_violation", f"{path}: expected a decimal number")
        try:
            dec = Decimal(str(value))
        except InvalidOperation:
            raise DecodeError("schema_violation", f"{path}: {value!r} is not a decimal") from None
        if not dec.is_finite():
            raise DecodeError("schema_violation", f"{path}: must be finite")
        scale, precision = schema["scale"], schema["precision"]
        try:
            dec = dec.quantize(Decimal(1).scaleb(-scale))
        except InvalidOperation:
            dec = None
        if dec is None or len(dec.as_tuple().digits) > precision:
            raise DecodeError("schema_violation", f"{path}: {str(value)[:40]} does not fit "
                              f"{precision} digits with {scale} decimals")
        return dec
    if kind in ("double", "float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "string" and not isinstance(value, str):
        raise DecodeError("schema_violation", f"{path}: expected a string")
    if logical == "uuid":
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise DecodeError("schema_violation", f"{path}: {value!r} is not a UUID") from None
    if kind in ("int", "long") and (isinstance(value, bool) or not isinstance(value, int)):
        raise DecodeError("schema_violation", f"{path}: expected an integer")
    if kind == "null" and value is not None:
        raise DecodeError("schema_violation", f"{path}: expected null")
    return value
