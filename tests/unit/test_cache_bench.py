"""`llmpipe bench cache` (offline part) runs on a small workload and reports the figures the
issue's floors are set in."""

from __future__ import annotations

import argparse

import pytest

from pipeline.bench import cache
from pipeline.cache.embedder import load_embedder
from pipeline.cache.faq import workload


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


def test_replay_counts_hits_within_the_ceiling(embedder):
    queries = workload(400, seed=2)
    result = cache.replay(embedder, queries, 0.95)
    assert result.n == 400 and result.exact > 0 and result.semantic > 0
    assert result.exact + result.semantic <= result.ceiling
    # nothing asked for the first time can be a hit
    assert result.by_kind["novel"]["exact"] == result.by_kind["novel"]["semantic"] == 0
    lower = cache.replay(embedder, queries, 0.85)
    assert lower.semantic >= result.semantic


def test_latency_is_measured_per_scope_layout(embedder):
    p50, p99, _ = cache.lookup_latency(embedder, 500, 5, seed=1,
                                       progress=lambda *a, **k: None)
    assert 0 < p50 <= p99 < 50


def test_the_bench_prints_its_figures_beside_the_floors(capsys):
    parser = argparse.ArgumentParser()
    cache.add_arguments(parser)
    assert cache.main(parser.parse_args(["-n", "300", "--sizes", "500"])) == 0
    out = capsys.readouterr().out
    for needle in ("hit rates", "ceiling", "wrong-intent", "near-miss", "≤ 1%",
                   "P99", "floor, embedding alone", "floor, exact cache alone", "AUC"):
        assert needle in out
