"""Catalog: exact cost arithmetic (DOMAIN.md §8 reference figures) and validation."""

from __future__ import annotations

from decimal import Decimal

import pytest

from pipeline.catalog import load_catalog, nanos_to_usd
from pipeline.config import ConfigError

catalog = load_catalog()
MONTH_OUTPUT = 50_000_000 * 30


@pytest.mark.parametrize("model, expected", [
    ("gpt-4.1", Decimal("12000")), ("claude-sonnet-4.5", Decimal("22500")),
    ("gemini-2.5-flash", Decimal("3750")), ("deepseek-v3.2", Decimal("630")),
])
def test_reference_monthly_output_cost(model, expected):
    assert nanos_to_usd(catalog.cost_nanos(model, 0, MONTH_OUTPUT)) == expected


def test_cost_is_tokens_times_prices():
    m = catalog.models["gpt-4.1"]
    nanos = catalog.cost_nanos("gpt-4.1", 1234, 567, cached_tokens=200)
    expected = (Decimal(1034) * m.input_per_mtok + 200 * m.cached_input_per_mtok
                + 567 * m.output_per_mtok) / 10**6
    assert nanos_to_usd(nanos) == expected
    assert isinstance(nanos, int)


def test_batch_discount_and_aliases():
    full = catalog.cost_nanos("gpt-4", 1000, 1000)
    assert catalog.cost_nanos("gpt-4.1", 1000, 1000, batch=True) * 2 == full
    assert catalog.resolve("GPT-4") == "gpt-4.1"
    assert catalog.resolve("deepseek-chat") == "deepseek-v3.2"
    assert catalog.resolve("nope") is None


def test_many_small_costs_sum_exactly():
    total = sum(catalog.cost_nanos("deepseek-v3.2", 7, 3) for _ in range(100_000))
    assert total == catalog.cost_nanos("deepseek-v3.2", 700_000, 300_000)


def test_negative_tokens_are_refused():
    with pytest.raises(ValueError):
        catalog.cost_nanos("gpt-4.1", -1, 0)


def test_config_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "catalog.yaml"
    bad.write_text("price_version: v1\neffective_date: x\nbaseline_model: m\nmodels:\n"
                   "  m: {input_per_mtok: '1', output_per_mtok: 'abc', cached_input_per_mtok: '1',"
                   " context_window: 10, max_output_tokens: 5, quality: 0.5, typical_latency_ms: 1}\n")
    with pytest.raises(ConfigError) as info:
        load_catalog(bad)
    assert str(bad) in str(info.value) and "models.m.output_per_mtok" in str(info.value)
