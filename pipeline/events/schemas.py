"""Avro schemas of the event contracts: loaded from schemas/avro, expanded, fingerprinted.

Each top-level ``.avsc`` may refer to records defined in another file by full name
(RoutedRequest embeds io.llmpipe.Request). ``expand`` inlines those references so every
schema is self-contained — what a Schema Registry stores and what the reference ``avro``
package parses.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from pipeline.paths import schemas_dir

NAMESPACE = "io.llmpipe"
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


@dataclass(frozen=True)
class SchemaVersion:
    name: str            # short record name, e.g. "Request"
    version: int         # 0 for the current file, N for history/<file>.vN.avsc
    schema: dict         # fully expanded JSON schema
    parsed: Any          # fastavro parsed schema
    schema_id: int       # local id: CRC-32 of the parsing canonical form
    path: Path


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name else f"{namespace or NAMESPACE}.{name}"


def _collect_named(schema: Any, namespace: str, out: dict[str, dict]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect_named(branch, namespace, out)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed"):
            ns = schema.get("namespace", namespace)
            out[_full_name(schema["name"], ns)] = schema
            for field in schema.get("fields", []):
                _collect_named(field["type"], ns, out)
        elif kind == "array":
            _collect_named(schema["items"], namespace, out)
        elif kind == "map":
            _collect_named(schema["values"], namespace, out)


def expand(schema: Any, named: dict[str, dict], namespace: str = NAMESPACE,
           seen: set[str] | None = None) -> Any:
    """Inline references to named types defined elsewhere (first use in full, later by name)."""
    seen = set() if seen is None else seen
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return schema
        full = _full_name(schema, namespace)
        if full in seen:
            return full
        if full not in named:
            raise ValueError(f"unknown Avro type {schema!r}")
        return expand(named[full], named, namespace, seen)
    if isinstance(schema, list):
        return [expand(branch, named, namespace, seen) for branch in schema]
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed"):
            ns = schema.get("namespace", namespace)
            full = _full_name(schema["name"], ns)
            if full in seen:
                return full
            seen.add(full)
            out = dict(schema)
            out.setdefault("namespace", ns) if "." not in schema["name"] else None
            if kind == "record":
                out["fields"] = [{**f, "type": expand(f["type"], named, ns, seen)}
                                 for f in schema["fields"]]
            return out
        if kind == "array":
            return {**schema, "items": expand(schema["items"], named, namespace, seen)}
        if kind == "map":
            return {**schema, "values": expand(schema["values"], named, namespace, seen)}
        if isinstance(kind, (dict, list)) or (isinstance(kind, str) and kind not in PRIMITIVES):
            return {**schema, "type": expand(kind, named, namespace, seen)}
        return schema
    raise ValueError(f"not an Avro schema: {schema!r}")


def schema_id(expanded: dict) -> int:
    """Stable local schema id: CRC-32 of the Avro parsing canonical form (31 bits)."""
    canonical = to_parsing_canonical_form(fastavro.parse_schema(expanded, _write_hint=False))
    return zlib.crc32(canonical.encode()) & 0x7FFFFFFF


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc


def load_schemas(directory: Path | None = None) -> dict[tuple[str, int], SchemaVersion]:
    """Every schema version: current files (version 0) and ``history/<name>.vN.avsc``."""
    root = (directory or schemas_dir() / "avro")
    raw_current = {p: _read(p) for p in sorted(root.glob("*.avsc"))}
    named: dict[str, dict] = {}
    for raw in raw_current.values():
        _collect_named(raw, NAMESPACE, named)

    versions: dict[tuple[str, int], SchemaVersion] = {}

    def add(path: Path, raw: dict, version: int, lookup: dict[str, dict]) -> None:
        expanded = expand(raw, lookup)
        parsed = fastavro.parse_schema(expanded)
        versions[(raw["name"], version)] = SchemaVersion(
            raw["name"], version, expanded, parsed, schema_id(expanded), path)

    for path, raw in raw_current.items():
        add(path, raw, 0, named)
    for path in sorted((root / "history").glob("*.v*.avsc")):
        raw = _read(path)
        version = int(path.name.rsplit(".v", 1)[1].split(".")[0])
        old_named = dict(named)
        _collect_named(raw, NAMESPACE, old_named)
        add(path, raw, version, old_named)
    return versions
