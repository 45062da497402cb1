"""The fault benchmark's configuration: write_config_dir overrides, and scenarios that
name real models, deployments and fallback chains (the runs themselves are in
tests/integration/test_faults.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.catalog import load_catalog
from pipeline.providers.deployments import load_deployments
from pipeline.dev.stack import DevStack, write_config_dir
from pipeline.bench.faults import (FAULT_CALLS, FAULT_DEPLOYMENTS, FAULT_RESILIENCE,
                                 REVOKED_KEY_ENV, SCENARIOS, table)
from pipeline.paths import config_dir
from pipeline.simulator import key_fingerprint, load_config


def fault_deployments(tmp_path: Path):
    config = write_config_dir(tmp_path, calls=FAULT_CALLS, resilience=FAULT_RESILIENCE,
                              deployments=FAULT_DEPLOYMENTS)
    return load_deployments(load_catalog(config / "catalog.yaml"), config / "deployments.yaml",
                            env={})


def test_write_config_dir_merges_overrides_and_keeps_the_rest(tmp_path):
    deps = fault_deployments(tmp_path)
    assert deps.calls.total_timeout_s == 2 and deps.calls.retry.cap_s == 1
    assert deps.calls.max_attempts == 3                          # untouched keys stay
    for dep in deps.by_id.values():
        assert dep.guard.breaker.open_s == 2
        assert dep.guard.breaker.failure_threshold == 5
    assert deps.by_id["openai-gpt-4o-mini"].api_key_env == REVOKED_KEY_ENV
    assert deps.by_id["openai-gpt-4o"].api_key_env == "OPENAI_API_KEY"
    # a deployment's own override survives a merge into the defaults
    assert deps.by_id["anthropic-claude-sonnet-4.5"].guard.health.max_p95_ms == 2500
    # the other files are copies
    for name in ("catalog.yaml", "routing.yaml"):
        assert (tmp_path / name).read_text() == (config_dir() / name).read_text()
    # the packaged file is not changed
    packaged = yaml.safe_load((config_dir() / "deployments.yaml").read_text())
    assert packaged["calls"]["total_timeout_s"] == 30


def test_write_config_dir_refuses_unknown_deployments(tmp_path):
    with pytest.raises(KeyError, match="openai-gpt-9"):
        write_config_dir(tmp_path, deployments={"openai-gpt-9": {"weight": 1}})


def test_scenarios_name_real_models_and_deployments(tmp_path):
    deps = fault_deployments(tmp_path)
    sim_models = set(load_config().model_names())
    routing = yaml.safe_load((config_dir() / "routing.yaml").read_text())
    for s in SCENARIOS:
        assert set(s.faults) <= sim_models, s.name
        assert set(s.faulty) <= set(deps.by_id), s.name
        assert deps.by_id[s.faulty[0]].model == s.model, s.name
        # a healthy deployment is left in the chain of the pinned model
        chain = routing["fallback_chains"][s.model]
        assert any(m not in {deps.by_id[d].model for d in s.faulty} for m in chain), s.name


def test_revoked_key_fault_names_the_stack_key_by_fingerprint(tmp_path):
    stack = DevStack(tmp_path)
    stack.provider_keys[REVOKED_KEY_ENV] = "sk-dev-0123456789abcdef0123456789abcdef"
    faults = next(s for s in SCENARIOS if s.revoked_key_env).faults_on(stack)
    assert faults == {"*": {"kind": "unauthorized",
                            "key": key_fingerprint(stack.provider_keys[REVOKED_KEY_ENV])}}
    assert "0123456789abcdef" not in repr(faults)


def test_table_has_a_row_per_run():
    assert table([]).splitlines()[0].startswith("| scenario")
