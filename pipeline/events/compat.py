"""Schema evolution rules (Avro FULL compatibility): a new version must read data written
with the old one (backward) and the old must read the new (forward). Structural check over
expanded schemas; returns the problems found, empty when compatible."""

from __future__ import annotations

from typing import Any

PROMOTIONS = {"int": {"long", "float", "double"}, "long": {"float", "double"},
              "float": {"double"}, "string": {"bytes"}, "bytes": {"string"}}


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return schema["type"] if isinstance(schema["type"], str) else _kind(schema["type"])
    return schema


def _name(schema: Any) -> str:
    return schema.get("name", "") if isinstance(schema, dict) else str(schema)


def can_read(reader: Any, writer: Any, path: str = "") -> list[str]:
    """Problems a ``reader`` schema has reading data written with ``writer``."""
    rk, wk = _kind(reader), _kind(writer)
    if wk == "union":
        return [p for branch in writer for p in can_read(reader, branch, path)]
    if rk == "union":
        for branch in reader:
            if not can_read(branch, writer, path):
                return []
        return [f"{path or '<root>'}: no branch of the reader union accepts writer type {wk}"]
    if rk != wk:
        if rk in PROMOTIONS.get(wk, set()):
            return []
        return [f"{path or '<root>'}: writer type {wk} cannot be read as {rk}"]
    if rk == "record":
        if isinstance(writer, str) or isinstance(reader, str):
            return []   # a named reference to a record already checked higher up
        problems = []
        wfields = {f["name"]: f for f in writer["fields"]}
        for f in reader["fields"]:
            where = f"{path}.{f['name']}" if path else f"{_name(reader)}.{f['name']}"
            if f["name"] in wfields:
                problems += can_read(f["type"], wfields[f["name"]]["type"], where)
            elif "default" not in f:
                problems.append(f"{where}: new field without a default")
        return problems
    if rk == "array":
        return can_read(reader["items"], writer["items"], f"{path}[]")
    if rk == "map":
        return can_read(reader["values"], writer["values"], f"{path}{{}}")
    if rk == "enum":
        missing = set(writer["symbols"]) - set(reader["symbols"])
        if missing and "default" not in reader:
            return [f"{path}: enum symbols {sorted(missing)} unknown to the reader"]
    return []


def full_compatibility(old: Any, new: Any) -> list[str]:
    return ([f"backward: {p}" for p in can_read(new, old)]
            + [f"forward: {p}" for p in can_read(old, new)])
