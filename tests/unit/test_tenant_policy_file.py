"""Tenant policy documents: what an operator writes (YAML/JSON) becomes an exact, validated
TenantPolicy, and every mistake is refused with the path of the key that is wrong."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import yaml

from pipeline.catalog import load_catalog
from pipeline.events.codec import Codec
from pipeline.events.models import Budget, CanaryRule, TenantPolicy
from pipeline.tenancy.policy_file import (PolicyError, load_policy_file, parse_policy_text,
                                          policy_from_mapping, policy_to_mapping)

catalog = load_catalog()

FULL = """
tenant: acme
allowed_models: [gpt-4, deepseek-chat, gemini-2.5-flash]
denied_models: [claude-3]
default_quality: 0.8
baseline_model: GPT-4.1
budgets:
  - {period: month, soft_usd: 800, hard_usd: "1000.50"}
  - {period: day, team: search, hard_usd: 12.345678901}
canary:
  name: flash-trial
  percent: 10
  model: gemini-pro
  min_success_rate: 0.99
  max_p95_ms: 700
  min_samples: 20
  window: 100
truncation_allowed: true
cache_enabled: false
cache_ttl_s: 600
"""


def full() -> dict:
    return yaml.safe_load(FULL)


def error_of(data, **kwargs) -> str:
    with pytest.raises(PolicyError) as err:
        policy_from_mapping(data, catalog, **kwargs)
    return str(err.value)


def test_a_full_policy_is_typed_normalised_and_exact():
    policy = policy_from_mapping(full(), catalog)

    assert policy == TenantPolicy(
        tenant="acme",
        allowed_models=["gpt-4.1", "deepseek-v3.2", "gemini-2.5-flash"],
        denied_models=["claude-sonnet-4.5"],
        default_quality=0.8,
        baseline_model="gpt-4.1",
        budgets=[Budget("month", None, Decimal("800"), Decimal("1000.50")),
                 Budget("day", "search", None, Decimal("12.345678901"))],
        canary=CanaryRule("flash-trial", 10, "gemini-2.5-flash", 0.99, 700, 20, 100),
        truncation_allowed=True, cache_enabled=False, cache_ttl_s=600)
    assert all(isinstance(b.hard_usd, Decimal) for b in policy.budgets)
    # the YAML float 12.345678901 arrives as exactly those digits, not its binary neighbour
    assert str(policy.budgets[1].hard_usd) == "12.345678901"


def test_a_minimal_policy_takes_the_schema_defaults():
    assert policy_from_mapping({}, catalog, tenant="acme") == TenantPolicy("acme")


def test_aliases_and_case_are_normalised_and_deduplicated():
    policy = policy_from_mapping({"allowed_models": ["GPT-4", "gpt-4.1", " deepseek-chat "],
                                  "canary": {"name": "c", "percent": 5, "model": "Deepseek-Chat"}},
                                 catalog, tenant="t")
    assert policy.allowed_models == ["gpt-4.1", "deepseek-v3.2"]
    assert policy.canary.model == "deepseek-v3.2"


def test_round_trip_through_the_mapping_json_yaml_and_avro():
    policy = policy_from_mapping(full(), catalog).replace(updated_at_ms=1_700_000_000_000)
    data = policy_to_mapping(policy)

    assert data["budgets"][0] == {"period": "month", "team": None, "soft_usd": "800",
                                  "hard_usd": "1000.5"}
    assert policy_from_mapping(data, catalog) == policy
    assert policy_from_mapping(json.loads(json.dumps(data)), catalog) == policy
    assert policy_from_mapping(yaml.safe_load(yaml.safe_dump(data)), catalog) == policy
    codec = Codec()
    from_kafka = codec.decode(codec.encode(policy, "llm.tenants"), TenantPolicy)
    assert from_kafka == policy
    # what a directory holds prints without the Avro scale's trailing zeros
    assert policy_to_mapping(from_kafka)["budgets"][1]["hard_usd"] == "12.345678901"
    assert policy_to_mapping(from_kafka)["budgets"][0]["soft_usd"] == "800"


def test_json_text_keeps_money_exact():
    policy = parse_policy_text('{"budgets": [{"period": "week", "hard_usd": 0.1}],'
                               ' "default_quality": 0.9}', catalog, tenant="t", fmt="json")
    assert policy.budgets[0].hard_usd == Decimal("0.1")
    assert policy.default_quality == 0.9


def budget(**fields) -> dict:
    return {"budgets": [{"period": "month", "hard_usd": 10}, {"period": "day", **fields}]}


@pytest.mark.parametrize("data, message", [
    ({"tenant": "acme", "budget": []},
     "budget: unknown key; expected one of tenant, allowed_models"),
    (budget(soft_usd=80, hard_usd=50),
     "budgets[1].hard_usd: must be >= soft_usd (50 < 80)"),
    (budget(hard_usd="0.0000000001"),
     "budgets[1].hard_usd: at most 9 decimal places (nano-dollars), got '0.0000000001'"),
    (budget(soft_usd=-1), "budgets[1].soft_usd: must be >= 0, got -1"),
    (budget(soft_usd="ten"), "budgets[1].soft_usd: 'ten' is not an amount in USD"),
    (budget(soft_usd="NaN"), "budgets[1].soft_usd: must be a finite amount"),
    (budget(soft_usd=True), "budgets[1].soft_usd: must be an amount in USD"),
    (budget(hard_usd="1e9"), "budgets[1].hard_usd: must be < 1000000000"),
    (budget(), "budgets[1]: set soft_usd, hard_usd or both"),
    (budget(period="year", hard_usd=1), "budgets[1].period: 'year' is not a period: one of day, week, month"),
    ({"budgets": [{"hard_usd": 1}]}, "budgets[0].period: required: one of day, week, month"),
    (budget(hard_usd=1, team=""), "budgets[1].team: must be a non-empty string or null"),
    (budget(hard_usd=1, limit=5), "budgets[1].limit: unknown key; expected one of period, team"),
    ({"budgets": [{"period": "day", "hard_usd": 1}, {"period": "day", "soft_usd": 2}]},
     "budgets[1]: repeats budgets[0] (period day, team whole tenant)"),
    ({"budgets": {"period": "day"}}, "budgets: must be a list of budgets, got a mapping"),
    ({"budgets": ["day"]}, "budgets[0]: must be a mapping"),
    ({"allowed_models": ["gpt-4", "gpt-5"]}, "allowed_models[1]: unknown model 'gpt-5' (models: "),
    ({"denied_models": "gpt-4"}, "denied_models: must be a list of model names"),
    ({"allowed_models": ["gpt-4.1", "gemini-pro"], "denied_models": ["deepseek-chat", "gpt-4"]},
     "denied_models[1]: 'gpt-4.1' is also in allowed_models"),
    ({"baseline_model": "gpt-5"}, "baseline_model: unknown model 'gpt-5'"),
    ({"default_quality": 1.5}, "default_quality: must be in 0..1, got 1.5"),
    ({"default_quality": "high"}, "default_quality: must be a number in 0..1"),
    ({"cache_enabled": "yes"}, "cache_enabled: must be true or false"),
    ({"cache_ttl_s": 0}, "cache_ttl_s: must be >= 1, got 0"),
    ({"canary": {"name": "c", "percent": 101, "model": "gpt-4o"}},
     "canary.percent: must be in 0..100, got 101"),
    ({"canary": {"name": "c", "percent": 10.5, "model": "gpt-4o"}},
     "canary.percent: must be an integer, got float 10.5"),
    ({"canary": {"name": "c", "model": "gpt-4o"}}, "canary.percent: required"),
    ({"canary": {"percent": 10, "model": "gpt-4o"}}, "canary.name: required"),
    ({"canary": {"name": "c", "percent": 10}}, "canary.model: required"),
    ({"canary": {"name": "c", "percent": 10, "model": "gpt-6"}}, "canary.model: unknown model 'gpt-6'"),
    ({"canary": {"name": "c", "percent": 10, "model": "gpt-4o", "min_success_rate": 2}},
     "canary.min_success_rate: must be in 0..1, got 2"),
    ({"canary": {"name": "c", "percent": 10, "model": "gpt-4o", "max_p95_ms": 0}},
     "canary.max_p95_ms: must be >= 1, got 0"),
    ({"canary": {"name": "c", "percent": 10, "model": "gpt-4o", "min_samples": 0}},
     "canary.min_samples: must be >= 1, got 0"),
    ({"canary": {"name": "c", "percent": 10, "model": "gpt-4o", "min_samples": 50, "window": 20}},
     "canary.window: must be >= min_samples (20 < 50)"),
    ({"canary": {"name": "c", "percent": 10, "model": "gpt-4o", "rollback": True}},
     "canary.rollback: unknown key"),
    ({"denied_models": ["gpt-4o"], "canary": {"name": "c", "percent": 10, "model": "gpt-4o"}},
     "canary.model: 'gpt-4o' is in denied_models"),
    ({"allowed_models": ["gpt-4.1"], "canary": {"name": "c", "percent": 10, "model": "gpt-4o"}},
     "canary.model: 'gpt-4o' is not in allowed_models"),
    ({"tenant": "other"}, "tenant: 'other' does not match the tenant being set ('acme')"),
    ({"tenant": 7}, "tenant: must be a non-empty string, got int 7"),
])
def test_each_mistake_names_its_key(data, message):
    assert error_of(data, tenant="acme").startswith(message)


def test_the_tenant_is_required_somewhere():
    assert error_of({}) == "tenant: required (the tenant id the policy applies to)"
    assert error_of(["tenant", "acme"]) == "<root>: must be a mapping of policy keys, got a list"


def test_a_policy_error_is_a_value_error_with_the_key():
    with pytest.raises(ValueError) as err:
        policy_from_mapping(budget(soft_usd=80, hard_usd=50), catalog, tenant="t")
    assert err.value.key == "budgets[1].hard_usd"


def test_a_file_error_names_the_file(tmp_path):
    path = tmp_path / "acme.yaml"
    path.write_text("budgets:\n  - period: month\n    hard_usd: -5\n")
    with pytest.raises(PolicyError, match=rf"^{path}: budgets\[0\].hard_usd: must be >= 0"):
        load_policy_file(path, catalog, tenant="acme")
    broken = tmp_path / "broken.json"
    broken.write_text('{"budgets": [')
    with pytest.raises(PolicyError, match=rf"^{broken}: <root>: not valid JSON"):
        load_policy_file(broken, catalog, tenant="acme")
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy_file(tmp_path / "missing.yaml", catalog, tenant="acme")


def test_the_context_policy_is_read_as_a_mapping_or_its_short_form_and_checked():
    from pipeline.catalog import load_catalog
    from pipeline.tenancy.policy_file import PolicyError, parse_policy_text
    catalog = load_catalog()
    mapping = parse_policy_text("tenant: acme\ncontext:\n  normalise: true\n  retrieved_top_k: 4\n",
                                catalog)
    assert mapping.context == "normalise,top_k=4"
    short = parse_policy_text("tenant: acme\ncontext: window=8, summarise\n", catalog)
    assert short.context == "window=8,summarise"
    assert parse_policy_text("tenant: acme\ncontext: {}\n", catalog).context == ""
    assert parse_policy_text("tenant: acme\n", catalog).context == ""
    with pytest.raises(PolicyError, match=r"context\.window_turns: must be a whole number"):
        parse_policy_text("tenant: acme\ncontext:\n  window_turns: -1\n", catalog)
    with pytest.raises(PolicyError, match="summarise"):
        parse_policy_text("tenant: acme\ncontext:\n  summarise: true\n", catalog)


def test_describe_policy_names_only_the_limits_a_budget_has():
    from pipeline.tenancy.policy_file import describe_policy
    policy = TenantPolicy("acme", budgets=[Budget("month", None, Decimal("80.000000000"), None),
                                           Budget("day", "search", None, Decimal("2.50"))])
    assert describe_policy(policy) == "month soft $80; day hard $2.5 team search"
