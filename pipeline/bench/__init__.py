"""Benchmarks, each run as ``llmpipe bench NAME`` and each a leaf: nothing in the pipeline
imports one. A benchmark prints its floor beside its figure (the direct call, the bare
broker hop, the run without the feature) and ``docs/BENCHMARKS.md`` names the command
behind each of its tables. A benchmark module offers ``HELP``, ``add_arguments(parser)`` and
``main(args) -> exit code``; only the one asked for is imported."""

from __future__ import annotations

import argparse
import importlib
from typing import Sequence

#: name -> one line on what it measures (kept here so `llmpipe bench --help` imports none)
BENCHES = {
    "latency": "requests through the embedded stack beside direct-HTTP and bare-broker floors",
    "gateway": "the OpenAI-compatible HTTP gateway end to end beside direct calls: added latency and TTFT",
    "http": "provider-call HTTP clients side by side on the simulator: req/s, CPU per call",
    "batching": "micro-batching: calls and cost per request by arrival rate",
    "batchapi": "batch-priority traffic through the (simulated) Batch API: calls and cost",
    "ingest": "ledger ingest rows/s per insert batch size (chDB, and through Kafka)",
    "reports": "every report query on N generated usage rows, raw vs rollup",
    "monitor": "the cost monitor's rule evaluation: events/s",
    "sweeps": "tenancy housekeeping (sweeps, budget gauges) over a full idempotency window",
    "faults": "provider faults while requests flow: success, latency, breakers",
    "savings": "the documented traffic mix routed vs all on the baseline model",
    "classifier": "the rule classifier on the labelled prompt set",
    "tokens": "the offline token estimate against real tokenizers",
    "cache": "the response cache on the FAQ workload: hit rates, near-miss false hits, lookup P99",
    "context": "context strategies on the long-chat + RAG workload: input-token and cost cut, facts kept",
}
DEFAULT = "latency"


def resolve(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """The benchmark ``llmpipe bench ARGV`` names (None: asked for help, or unknown) and
    the arguments left for it. No name, or options first: ``latency``."""
    argv = list(argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        return DEFAULT, argv
    return (argv[0] if argv[0] in BENCHES else None), argv[1:]


def main(argv: Sequence[str]) -> int:
    """``llmpipe bench [NAME] [options]``."""
    name, rest = resolve(argv)
    if name is None:
        width = max(map(len, BENCHES))
        listing = "\n".join(f"  {n:<{width}}  {what}" for n, what in BENCHES.items())
        print(f"usage: llmpipe bench [NAME] [options]\n\nbenchmarks (default {DEFAULT}):\n"
              f"{listing}\n\n`llmpipe bench NAME --help` lists a benchmark's options.")
        return 0 if list(argv)[:1] in (["-h"], ["--help"]) else 2
    module = importlib.import_module(f"pipeline.bench.{name}")
    parser = argparse.ArgumentParser(prog=f"llmpipe bench {name}", description=module.HELP)
    module.add_arguments(parser)
    return module.main(parser.parse_args(rest))
