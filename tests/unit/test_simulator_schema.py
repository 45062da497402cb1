"""The simulator's JSON Schema instances: valid against what pydantic v2 emits (nested
models, lists, optionals, enums, literals, bounds, $defs/$ref, recursion) and against
Gemini's upper-case OpenAPI schemas; malformed and non-strict schemas are named."""

from __future__ import annotations

import random
from enum import Enum
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, Field

from pipeline.simulator.schema_instance import SchemaError, check_schema, make_instance
from pipeline.simulator.tools import fits, name_words
from pipeline.simulator.chat import Tool


class Color(str, Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str = Field(min_length=3, max_length=40)
    zip_code: str
    country: Literal["FR", "DE"]


class Person(BaseModel):
    name: str
    age: int = Field(ge=18, le=99)
    score: float = Field(gt=0, lt=1)
    favourite: Color
    home: Address
    previous: list[Address] = Field(min_length=1, max_length=3)
    nickname: Optional[str] = None
    tags: dict[str, int] = {}


class Tree(BaseModel):
    label: str
    children: list["Tree"] = []


@pytest.mark.parametrize("model", [Person, Address, Tree])
def test_instances_of_pydantic_schemas_validate(model):
    schema = model.model_json_schema()
    check_schema(schema)
    for seed in range(25):
        model.model_validate(make_instance(schema, random.Random(seed), ("Paris", "river")))


def test_gemini_openapi_schema_with_upper_case_types_and_nullable():
    schema = {"type": "OBJECT", "properties": {
        "title": {"type": "STRING"}, "year": {"type": "INTEGER", "nullable": True},
        "genres": {"type": "ARRAY", "items": {"type": "STRING", "format": "enum",
                                              "enum": ["drama", "comedy"]}}},
        "required": ["title", "genres"], "propertyOrdering": ["year", "title", "genres"]}
    check_schema(schema)
    for seed in range(10):
        value = make_instance(schema, random.Random(seed))
        assert isinstance(value["title"], str)
        assert value.get("year") is None or isinstance(value["year"], int)
        assert value["genres"] and set(value["genres"]) <= {"drama", "comedy"}


def test_malformed_and_non_strict_schemas_are_named():
    with pytest.raises(SchemaError, match="'strng' is not a valid type"):
        check_schema({"type": "object", "properties": {"a": {"type": "strng"}}})
    with pytest.raises(SchemaError, match="does not resolve"):
        check_schema({"$ref": "#/$defs/Missing"})
    with pytest.raises(SchemaError, match="'required' must be an array"):
        check_schema({"type": "object", "required": "a"})
    loose = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    check_schema(loose)
    with pytest.raises(SchemaError, match="additionalProperties"):
        check_schema(loose, strict=True)
    with pytest.raises(SchemaError, match="Missing 'b'"):
        check_schema({"type": "object", "additionalProperties": False, "required": ["a"],
                      "properties": {"a": {"type": "string"}, "b": {"type": "string"}}},
                     strict=True)


def test_tool_fit_rule():
    weather = Tool("get_weather", "", {})
    price = Tool("getStockPrice", "", {})
    assert name_words("getStockPrice") == ["get", "stock", "price"]
    assert fits(weather, "What's the weather in Paris?")
    assert fits(weather, "please call get_weather")
    assert not fits(weather, "How do I cut my LLM bill?")
    assert fits(price, "the stock price of ACME")
    assert not fits(price, "the stock of ACME")
