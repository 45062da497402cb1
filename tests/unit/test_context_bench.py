"""The context workload and `llmpipe bench context`: the workload is reproducible and
honest (every fact is in the case, code survives), and at the default seed the acceptance
policy meets the issue's floors, as computed by the bench itself."""

from __future__ import annotations

import re

from pipeline.bench import context as bench
from pipeline.catalog import load_catalog
from pipeline.context import ContextPolicy, compress
from pipeline.context.workload import CHAT, DEFAULT_CASES, DEFAULT_SEED, RAG, facts_present, workload

FENCE = re.compile(r"```.*?```", re.S)


def test_the_workload_is_reproducible_and_mixed():
    a, b = workload(40, 3), workload(40, 3)
    assert [c.messages for c in a] == [c.messages for c in b]
    assert [c.messages for c in a] != [c.messages for c in workload(40, 4)]
    assert {(c.kind, c.lang) for c in a} == {(CHAT, "en"), (CHAT, "zh"), (RAG, "en"), (RAG, "zh")}


def test_every_needed_fact_is_in_the_case_as_made():
    for case in workload(60, DEFAULT_SEED):
        assert all(facts_present(case.messages, case.facts)), case.name


def test_code_blocks_survive_normalise_on_the_whole_workload():
    policy = ContextPolicy(normalise=True)
    for case in workload(60, DEFAULT_SEED):
        out, _ = compress(case.messages, policy)
        before = [b for m in case.messages for b in FENCE.findall(m.text)]
        after = [b for m in out for b in FENCE.findall(m.text)]
        assert set(before) <= set(after), case.name


def test_the_acceptance_policy_meets_the_floors_at_the_default_seed():
    tallies = bench.measure(workload(DEFAULT_CASES, DEFAULT_SEED), bench.ACCEPTANCE,
                            load_catalog(), "gpt-4.1", "gpt-4o-mini")
    whole = tallies["all"]
    assert whole.cut >= bench.FLOOR_CUT, f"cut {whole.cut:.1%}"
    assert whole.kept_share >= bench.FLOOR_FACTS, f"facts kept {whole.kept_share:.2%}"
    assert whole.cost_after < whole.cost_before


def test_the_window_alone_is_reported_as_losing_facts_a_summary_must_carry():
    tallies = bench.measure(workload(20, DEFAULT_SEED), "window=8,summarise", load_catalog(),
                            "gpt-4.1", "gpt-4o-mini")
    chat = tallies[CHAT]
    assert chat.kept < chat.facts and chat.kept + chat.in_dropped == chat.facts
