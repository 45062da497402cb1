"""The pure parts of `llmpipe bench latency`: /proc CPU sampling, the floors' request shapes
and topics, and the per-concurrency table."""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import pytest

from pipeline.bench.cpu import CpuClock, Usage, cpu_ms, parse_stat
from pipeline.bench.floors import PIPELINE_HOPS, bench_request, echo_topics, openai_body
from pipeline.bench.latency import Phase, csv, format_table, positive_int, requests_at
from pipeline.kafka.topics import load_topic_specs


def test_parse_stat_reads_utime_and_stime_after_the_command_name():
    # a command name with spaces and a ")" of its own; utime 7, stime 5 (fields 14, 15)
    text = "42 (odd) name) S 1 42 42 0 -1 4194304 100 0 0 0 7 5 0 0 20 0 1 0 99 0 0"
    assert parse_stat(text) == 12


def test_cpu_ms_of_this_process_grows_with_work():
    before = cpu_ms(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert cpu_ms(os.getpid()) > before


def test_clock_reports_usage_and_share_of_a_core():
    clock = CpuClock({"client": os.getpid()})
    usage = clock.since(clock.sample())
    assert usage.elapsed_s >= 0 and usage.cpu_ms["client"] >= 0
    half = Usage(2.0, {"client": 1000.0})
    assert half.share_of_core("client") == 0.5 and half.per_request("client", 4) == 250.0


def test_the_direct_body_is_what_the_openai_adapter_sends():
    request = bench_request(3)
    assert openai_body(request, "deepseek-chat") == {
        "model": "deepseek-chat", "max_tokens": 16,
        "messages": [{"role": "user", "content": "benchmark request 3: say hi"}]}
    assert bench_request(0, "interactive").hints.priority == "interactive"


def test_echo_topics_are_fresh_and_laid_out_like_the_template():
    template = next(s for s in load_topic_specs() if s.name == "llm.requests")
    first, second = echo_topics(template, len(PIPELINE_HOPS)), echo_topics(template, 2)
    assert len(first) == 4 and len(second) == 2
    assert all(t.name.startswith("bench.echo.") and t.partitions == template.partitions
               for t in first)
    assert not {t.name for t in first} & {t.name for t in second}


def test_requests_per_phase_default_scales_with_concurrency():
    assert [requests_at(c, None) for c in (1, 50, 200)] == [200, 2000, 2000]
    assert requests_at(50, 60) == 60


def test_csv_argument_parses_and_rejects():
    assert csv(positive_int)("1, 50,200") == [1, 50, 200]
    with pytest.raises(argparse.ArgumentTypeError):
        csv(positive_int)("1,0")
    with pytest.raises(argparse.ArgumentTypeError):
        csv(str, ("direct", "broker"))("direct,nope")


def _phase(name: str, base_ms: float, failures: Counter | None = None) -> Phase:
    latencies = {f"{name}-{i}": base_ms + i for i in range(101)}
    provider = {ref: 50.0 for ref in latencies} if name == "standard" else {}
    return Phase(name, latencies, failures or Counter(), 10.0,
                 Usage(10.0, {"worker": 202.0, "broker": 101.0, "sim": 0.0, "client": 5000.0}),
                 provider)


def test_table_puts_added_latency_against_direct_and_lists_failures():
    table = format_table(50, 101, [_phase("direct", 50.0), _phase("standard", 150.0,
                                                                   Counter({"timeout": 2}))])
    lines = table.splitlines()
    assert lines[0] == "101 requests per phase"
    assert lines[1].startswith("c=50") and "added p50/p99" in lines[1]
    direct, standard = lines[2].split(), lines[3].split()
    assert direct[:5] == ["direct", "10.1", "100.0", "145.0", "149.0"] and direct[5:7] == ["-", "-"]
    # added: quantile minus direct's (100.0 both ways); e2e-prov: minus the ledger's 50 ms
    assert standard[5:7] == ["100.0/100.0", "150.0/199.0"]
    assert standard[7:] == ["2.00", "-", "1.00", "0.00", "49.50", "50%"]   # no ledger process here
    assert lines[4] == "  standard: 2 failed (timeout x2)"


def test_bare_broker_phases_default_to_interactives_and_standards_hop_counts():
    from pipeline.bench.floors import INTERACTIVE_HOPS, BrokerEcho
    from pipeline.bench.latency import add_arguments
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).hops == [len(INTERACTIVE_HOPS), len(PIPELINE_HOPS)] == [2, 4]
    assert parser.parse_args(["--hops", "3"]).hops == [3]
    template = next(s for s in load_topic_specs() if s.name == "llm.requests")
    echo = BrokerEcho("127.0.0.1:1", echo_topics(template, 2), b"", 20, 1.0)
    assert echo.name == "broker 2 hops"


def test_the_bench_raises_every_deployments_call_limits(tmp_path):
    """The pipeline phases measure the pipeline: no deployment (not even one with limits of
    its own) keeps the configured rate limiter, which a c=200 phase would run into."""
    from pipeline.bench.latency import BENCH_LIMITS, bench_config
    from pipeline.catalog import load_catalog
    from pipeline.providers.deployments import load_deployments
    config = bench_config(tmp_path / "config")
    configured = load_deployments(load_catalog())
    raised = load_deployments(load_catalog(config / "catalog.yaml"), config / "deployments.yaml")
    assert list(raised.by_id) == list(configured.by_id)
    for d in raised.by_id.values():
        limits = d.guard.limits
        assert (limits.rpm, limits.tpm, limits.max_concurrency) == (
            BENCH_LIMITS["rpm"], BENCH_LIMITS["tpm"], BENCH_LIMITS["max_concurrency"]), d.id
