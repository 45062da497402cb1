"""Event contracts: every mirror agrees with its .avsc, every field is documented and
has a default where it can, and each schema stays FULL-compatible with its history."""

from __future__ import annotations

import dataclasses
import typing
from decimal import Decimal

import pytest

from pipeline.events import models
from pipeline.events.compat import full_compatibility
from pipeline.events.registry import LocalRegistry
from pipeline.events.schemas import load_schemas

registry = LocalRegistry()
CURRENT = {name: v for (name, version), v in registry.versions.items() if version == 0}

AVRO_TO_PY = {"string": str, "int": int, "long": int, "boolean": bool, "double": float,
              "float": float, "bytes": bytes}


def _expected_type(schema, named):
    if isinstance(schema, list):
        (inner,) = [b for b in schema if b != "null"]
        return typing.Optional[_expected_type(inner, named)]
    if isinstance(schema, str):
        return named[schema] if schema in named else AVRO_TO_PY[schema]
    kind = schema["type"]
    if schema.get("logicalType") == "decimal":
        return Decimal
    if kind == "record":
        return named[schema["name"]]
    if kind == "array":
        return list[_expected_type(schema["items"], named)]
    if kind == "map":
        return dict[str, _expected_type(schema["values"], named)]
    return _expected_type(kind, named)


def _records(schema, out):
    if isinstance(schema, list):
        for b in schema:
            _records(b, out)
    elif isinstance(schema, dict):
        if schema["type"] == "record":
            out.append(schema)
            for f in schema["fields"]:
                _records(f["type"], out)
        elif schema["type"] == "array":
            _records(schema["items"], out)
        elif schema["type"] == "map":
            _records(schema["values"], out)


NAMED = {cls.__name__: cls for cls in vars(models).values()
         if isinstance(cls, type) and dataclasses.is_dataclass(cls)}
NAMED.update({f"io.llmpipe.{k}": v for k, v in list(NAMED.items())})


@pytest.mark.parametrize("name", sorted(CURRENT))
def test_mirror_matches_schema(name):
    records = []
    _records(CURRENT[name].schema, records)
    for record in records:
        cls = NAMED[record["name"]]
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(fields) == {f["name"] for f in record["fields"]}, record["name"]
        for f in record["fields"]:
            assert hints[f["name"]] == _expected_type(f["type"], NAMED), (record["name"], f["name"])
            mirror = fields[f["name"]]
            if "default" in f:
                if mirror.default is not dataclasses.MISSING:
                    assert mirror.default == f["default"], (record["name"], f["name"])
                else:
                    assert mirror.default_factory is not dataclasses.MISSING, (record["name"], f["name"])
            else:
                assert mirror.default is dataclasses.MISSING and \
                    mirror.default_factory is dataclasses.MISSING, (record["name"], f["name"])


@pytest.mark.parametrize("name", sorted(CURRENT))
def test_every_field_is_documented(name):
    records = []
    _records(CURRENT[name].schema, records)
    for record in records:
        assert record.get("doc"), record["name"]
        for f in record["fields"]:
            assert f.get("doc"), f"{record['name']}.{f['name']} has no doc"


HISTORY = sorted((n, v) for (n, v) in registry.versions if v > 0)


@pytest.mark.parametrize("name,version", HISTORY)
def test_history_versions_are_full_compatible_with_the_next(name, version):
    newer = registry.versions.get((name, version + 1)) or CURRENT[name]
    assert full_compatibility(registry.versions[(name, version)].schema, newer.schema) == []


def test_compatibility_check_catches_breaking_changes():
    old = CURRENT["Usage"].schema
    added_required = {**old, "fields": old["fields"] + [{"name": "x", "type": "long"}]}
    assert any("new field without a default" in p for p in full_compatibility(old, added_required))
    retyped = {**old, "fields": [{**f, "type": "int"} if f["name"] == "tenant" else f
                                 for f in old["fields"]]}
    assert full_compatibility(old, retyped)
    added_optional = {**old, "fields": old["fields"] + [{"name": "x", "type": ["null", "long"],
                                                         "default": None}]}
    assert full_compatibility(old, added_optional) == []


def test_ids_are_stable_and_distinct():
    again = load_schemas()
    assert {k: v.schema_id for k, v in again.items()} == {k: v.schema_id for k, v in registry.versions.items()}
    ids = [v.schema_id for v in registry.versions.values()]
    assert len(ids) == len(set(ids))
