"""Provider faults on the embedded stack: the simulator injects one fault at a time while
requests pinned to the faulty model flow through a worker, then the fault is cleared and
the stack must recover. Runs the scenarios of `llmpipe bench faults` (pipeline/bench/faults.py) on
one stack, sequentially, with the configuration shortened there (2 s call timeout, 0.05 s
backoff base, Retry-After capped at 1 s, breakers open for 2 s).

For every scenario, with at least one healthy deployment in the request's fallback chain:
- all requests succeed. The acceptance floor is >= 99.9 %; with N requests per scenario
  (N < 1000) that allows no failure at all, so the test asserts every one;
- every request ends in exactly one terminal response on llm.responses and exactly one
  usage row in the ledger;
- attempts stay within the bound: per deployment at most ``calls.max_attempts`` calls, so
  a response's attempts <= max_attempts x deployments tried; and the simulator saw exactly
  as many calls as the responses count (no call is made that a response does not own);
- the breaker of a deployment failing every call opens once ``failure_threshold``
  consecutive calls failed, is not closed while the fault lasts, and after the fault is
  cleared goes OPEN -> HALF_OPEN -> CLOSED, observed both on llm.alerts and in the
  worker's guard view; a fault that says nothing about the deployment (context length)
  never opens it.
"""

from __future__ import annotations

import uuid

import pytest

from pipeline.catalog import load_catalog
from pipeline.bench.faults import (FAULT_CALLS, FAULT_RESILIENCE, REVOKED_KEY_ENV, RETRY_AFTER_S,
                                 SCENARIOS, run_scenario, stack_deployments, start_fault_stack)
from pipeline.simulator import key_fingerprint

N = 100           # requests per scenario
CONCURRENCY = 16


@pytest.fixture(scope="module")
def fault_stack(broker, tmp_path_factory):
    uid = uuid.uuid4().hex[:8]
    stack, worker = start_fault_stack(tmp_path_factory.mktemp("faults"), broker,
                                      topic_prefix=f"faults{uid}.", app_id=f"llmpipe-faults-{uid}")
    try:
        yield stack, worker
    finally:
        stack.stop()


def test_the_stack_runs_the_shortened_configuration(fault_stack):
    """The copy the worker reads (LLMPIPE_CONFIG_DIR) has the overrides; that the worker
    applies them shows in the scenarios (hung calls cut at 2 s, breakers probing after 2 s)."""
    stack, _ = fault_stack
    deps = stack_deployments(stack)
    assert deps.calls.total_timeout_s == FAULT_CALLS["total_timeout_s"]
    assert deps.by_id["openai-gpt-4.1"].guard.breaker.open_s == FAULT_RESILIENCE["breaker"]["open_s"]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_fault_scenario(fault_stack, scenario):
    stack, worker = fault_stack
    run = run_scenario(stack, worker, scenario, N, CONCURRENCY)
    deps = stack_deployments(stack)
    catalog = load_catalog(stack.config_dir / "catalog.yaml")
    max_attempts = deps.calls.max_attempts
    threshold = {d: deps.by_id[d].guard.breaker.failure_threshold for d in scenario.faulty}
    summary = (f"{scenario.name}: {run.succeeded}/{N} ok, p99 {run.latency_ms(.99):.0f} ms, "
               f"attempts {run.attempts and max(run.attempts)}, transitions "
               f"{dict(run.transitions())}, simulator {run.simulator.get('models')}")

    # Every request answered, successfully, exactly once; one usage row each.
    missing = [o.request.request_id for o in run.outcomes if o.response is None]
    assert not missing, f"no terminal response for {missing}; {summary}"
    failed = {o.request.request_id: o.response.error for o in run.outcomes if not o.ok}
    assert not failed, f"{summary}; failed: {failed}"
    ids = [o.request.request_id for o in run.outcomes + run.recovery]
    assert {i: run.response_counts[i] for i in ids} == {i: 1 for i in ids}, summary
    assert {i: run.usage_counts.get(i, 0) for i in ids} == {i: 1 for i in ids}, summary
    assert run.duplicates_dropped == 0, summary

    # Attempts within the bound, and matching the calls the providers saw.
    for r in run.responses:
        assert 1 <= r.attempts <= max_attempts * len(r.tried), (r.request_id, r.attempts, r.tried)
        assert len(r.tried) <= 1 + len(deps.by_id), r.tried
        assert run.usage_rows[r.request_id]["attempts"] == r.attempts
    sim_calls = sum(m["calls"] for m in run.simulator["models"].values())
    assert sim_calls == sum(run.attempts), summary

    # Where the answers came from.
    if scenario.breaker_opens is not None:          # the fault hits every call
        assert all(r.deployment not in scenario.faulty for r in run.responses), summary
        assert all(r.tried[0] in scenario.faulty for r in run.responses), summary
    if scenario.name == "provider_down":
        assert {r.deployment for r in run.responses} == {"anthropic-claude-sonnet-4.5"}, summary
    if scenario.name == "context_length":
        # refused at once, never retried, answered by a model with a larger window
        assert run.calls("deepseek-chat") == {"400": N}, summary
        assert all(r.attempts == 2 for r in run.responses), summary
        window = catalog.models["deepseek-v3.2"].context_window
        assert all(catalog.models[r.model].context_window > window for r in run.responses), summary
    if scenario.name == "unauthorized_key":
        # a 401 is not retried: at most one call per request with the revoked key, and
        # only that key was refused (the other OpenAI deployments keep theirs)
        revoked = key_fingerprint(stack.provider_keys[REVOKED_KEY_ENV])
        by_key = {(model, fp): k["by_status"] for model, m in run.simulator["models"].items()
                  for fp, k in m["keys"].items()}
        assert by_key[("gpt-4o-mini", revoked)] == {"401": sum(run.calls("gpt-4o-mini").values())}
        assert sum(run.calls("gpt-4o-mini").values()) <= N, summary
        assert all("401" not in statuses for (_, fp), statuses in by_key.items() if fp != revoked)
    if scenario.name == "rate_limit_storm":
        # Retry-After honoured: k calls on gpt-4.1 mean k - 1 waits of Retry-After first
        assert set(run.calls("gpt-4.1")) == {"429"}, summary
        for r in run.responses:
            on_faulty = r.attempts - 1                   # the last call was gpt-4o's answer
            assert r.latency_ms >= (on_faulty - 1) * RETRY_AFTER_S * 1000, (r.attempts, r.latency_ms)
    if scenario.name == "hung_connections":
        # each hung call is cut at total_timeout_s (the client leaves: status 499)
        assert set(run.calls("gemini-2.5-flash")) == {"499"}, summary
        # (measured from publish at the client: Response.latency_ms counts from the
        # request's creation, which includes the wait for one of the client's slots)
        for o in run.outcomes:
            # + 15 s for a loaded machine; a call not cut would hang to the 60 s deadline
            bound_ms = (o.response.attempts * FAULT_CALLS["total_timeout_s"] + 15) * 1000
            assert o.e2e_ms < bound_ms, (o.e2e_ms, o.response)
    if scenario.name == "server_errors_30pct":
        assert "500" in run.calls("gpt-4o") and "200" in run.calls("gpt-4o"), summary

    # Breakers: open after the threshold, not closed during the fault, closed after it.
    for dep in scenario.faulty:
        rules = [a.rule for a in run.breaker_alerts(dep)]
        if scenario.breaker_opens is False:
            assert "breaker_open" not in rules, (dep, rules)
            assert run.breaker_during[dep] == "closed", (dep, run.breaker_during)
        if scenario.breaker_opens:
            assert rules, f"{dep}: no breaker alert; {summary}"
            first = run.breaker_alerts(dep)[0]
            assert first.rule == "breaker_open", rules
            assert first.value == str(threshold[dep]), first
            assert first.labels["reason"] == f"consecutive_failures={threshold[dep]}", first
            assert run.breaker_during[dep] in ("open", "half_open"), run.breaker_during
        if "breaker_open" in rules:
            # closed again through half-open, as the last transitions after the fault
            assert rules[-2:] == ["breaker_half_open", "breaker_closed"], (dep, rules)
            for before, after in zip(rules, rules[1:]):
                assert (before, after) in {("breaker_open", "breaker_half_open"),
                                           ("breaker_half_open", "breaker_open"),
                                           ("breaker_half_open", "breaker_closed"),
                                           ("breaker_closed", "breaker_open")}, (dep, rules)
        assert run.breaker_states[dep] == "closed", (dep, run.breaker_states, rules)
    # the fault touched nothing else: no breaker but the faulty ones opened
    others = {a.subject for a in run.alerts if a.rule == "breaker_open"} - set(scenario.faulty)
    assert not others, f"breakers opened outside {scenario.faulty}: {others}"
    print(summary.split(", simulator")[0], f"wall {run.wall_s:.1f}s")
