"""llmpipe: the command line of the gateway.

  llmpipe dev                 embedded stack + demo traffic + report (Ctrl-C stops it)
  llmpipe worker              run a pipeline worker (settings from LLMPIPE_* variables)
  llmpipe route --explain P   how prompt P would be routed, and why
  llmpipe topics apply        create missing topics, report drift
  llmpipe topics render       print the topics as Strimzi KafkaTopic resources (YAML)
  llmpipe migrate             apply ClickHouse migrations
  llmpipe report NAME         analyst reports: cost, savings, latency, errors, routing, top
  llmpipe reprice             recompute a period's cost under another price file
  llmpipe simulate-provider   the provider simulator (OpenAI, Anthropic and Gemini shapes)
  llmpipe tenants ...         set | get | list | delete tenant policies on llm.tenants
  llmpipe dead-letter ...     list | replay the dead-letter topic (filters, --dry-run)
  llmpipe send                send one request and print its response
  llmpipe kcat ARGS           Debian's kcat with a current librdkafka (see pipeline/embedded/kcat.py)
  llmpipe bench [NAME]        benchmarks (latency, batching, batchapi, ingest, reports,
                              monitor, faults, savings, classifier, tokens); see pipeline/bench/
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys

from pipeline.settings import Settings


def _logging(level: str) -> None:
    root_level = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=root_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # httpx logs every request at INFO: a line per provider call (1% of a busy worker's CPU
    # and most of its log). Dispatch logs the calls that fail; DEBUG shows them all.
    logging.getLogger("httpx").setLevel(max(root_level, logging.WARNING))


def cmd_worker(args: argparse.Namespace) -> int:
    import faust  # noqa: F401  (import early: faust patches logging)

    from pipeline.agents.app import create_app
    from pipeline.kafka.topics import apply_topics, load_topic_specs, prefixed
    from pipeline.runtime import build_runtime

    settings = Settings.from_env()
    _logging(settings.log_level)
    if args.processes != 1:
        from pipeline.agents.supervisor import SupervisorError, supervise
        try:
            return supervise(settings, args.processes)
        except SupervisorError as exc:
            print(f"llmpipe worker: {exc}", file=sys.stderr)
            return 2
    from pipeline.startup import StartupTimeout, wait_until_up
    try:
        report = wait_until_up(f"kafka at {settings.kafka_bootstrap}", lambda: asyncio.run(
            apply_topics(settings.kafka_bootstrap,
                         prefixed(load_topic_specs(), settings.topics.prefix))),
            settings.startup_timeout_s)
    except StartupTimeout as exc:
        print(f"llmpipe worker: {exc}", file=sys.stderr)
        return 1
    logging.getLogger("llmpipe.worker").info("topics %s", report.format().replace("\n", "; "))
    runtime = build_runtime(settings)
    app = create_app(runtime)
    from pipeline.agents.shutdown import GracefulWorker
    from pipeline.heap import settle_heap
    worker = GracefulWorker(app, settings.shutdown_grace_s, loglevel=settings.log_level,
                            quiet=True)
    settle_heap(settings.gc_young)
    worker.execute_from_commandline()
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from pipeline.kafka.topics import apply_topics, load_topic_specs, prefixed

    settings = Settings.from_env()
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    prefix = settings.topics.prefix if args.prefix is None else args.prefix
    report = asyncio.run(apply_topics(bootstrap, prefixed(load_topic_specs(overlay=args.overlay), prefix)))
    print(report.format())
    return 0 if report.ok else 3


def cmd_topics_render(args: argparse.Namespace) -> int:
    """Print the declared topics as Kubernetes resources (``--format strimzi``: one
    KafkaTopic each); deploy/k8s/topics.yaml is this output, checked by a test."""
    from pipeline.config import ConfigError
    from pipeline.kafka.strimzi import kafka_topics, render_yaml
    from pipeline.kafka.topics import load_topic_specs, prefixed

    command = ["llmpipe", "topics", "render", "--format", args.format]
    for flag, value in (("--overlay", args.overlay), ("--namespace", args.namespace),
                        ("--cluster", args.cluster), ("--api-version", args.api_version),
                        ("--prefix", args.prefix or None)):
        if value is not None:
            command += [flag, value]
    try:
        specs = prefixed(load_topic_specs(overlay=args.overlay), args.prefix)
        resources = kafka_topics(specs, cluster=args.cluster, namespace=args.namespace,
                                 api_version=args.api_version)
    except (ConfigError, ValueError) as exc:
        print(f"llmpipe topics render: {exc}", file=sys.stderr)
        return 2
    print(render_yaml(resources, header=[
        "Strimzi KafkaTopic resources rendered from topics/topics.yaml"
        + (f" with the overlay {args.overlay}" if args.overlay else "") + ".",
        "Generated by: " + " ".join(command),
        "Do not edit: change topics/ (or the overlay) and render again."]), end="")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from pipeline.analytics.clickhouse import connect, redact_dsn
    from pipeline.analytics.migrate import apply_migrations

    dsn = args.dsn or Settings.from_env().clickhouse_dsn
    client = connect(dsn)
    try:
        applied = apply_migrations(client)
    finally:
        client.close()
    print(f"{redact_dsn(dsn)}: applied {len(applied)} migration(s)"
          + (": " + ", ".join(applied) if applied else " (up to date)"))
    return 0


def cmd_simulate(args: argparse.Namespace, rest: list[str]) -> int:
    from pipeline.simulator.__main__ import main as simulator_main
    return simulator_main(rest) or 0


def cmd_send(args: argparse.Namespace) -> int:
    from pipeline.client import GatewayClient, make_request

    settings = Settings.from_env()

    async def run() -> int:
        async with GatewayClient(args.bootstrap or settings.kafka_bootstrap, settings.topics,
                                 fmt=args.format) as gw:
            req = make_request(args.tenant, args.prompt, model=args.model, max_tokens=args.max_tokens)
            resp = await gw.request(req, timeout=args.timeout)
            print(json.dumps(resp.to_dict(), ensure_ascii=False, indent=2, default=str))
            return 0 if resp.status == "ok" else 1

    return asyncio.run(run())


def cmd_tenants(args: argparse.Namespace) -> int:
    """Tenant policies on the compacted tenants topic: set (validated), get, list, delete."""
    import yaml
    from aiokafka.errors import KafkaError

    from pipeline.events.codec import Codec
    from pipeline.tenancy.directory import (TenantTopicMissing, delete_policy, put_policy,
                                            read_policies)
    from pipeline.tenancy.policy_file import (PolicyError, load_policy_file, parse_policy_text,
                                              policy_to_mapping, usd_str)

    settings = Settings.from_env()
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    topic, codec = settings.topics.tenants, Codec()

    def show(policy, fmt: str = "yaml") -> None:
        data = policy_to_mapping(policy)
        if fmt == "json":
            print(json.dumps(data, ensure_ascii=False, indent=2))
        else:
            print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), end="")

    def budgets_text(policy) -> str:
        def limit(b) -> str:
            parts = [f"{kind} ${usd_str(v)}" for kind, v in (("soft", b.soft_usd), ("hard", b.hard_usd))
                     if v is not None]
            return f"{b.period}{f'[{b.team}]' if b.team else ''} {' '.join(parts)}"
        return "; ".join(limit(b) for b in policy.budgets) or "-"

    def canary_text(policy) -> str:
        c = policy.canary
        return f"{c.name} {c.percent}% -> {c.model}" if c else "-"

    async def run() -> int:
        if args.action == "set":
            from pipeline.catalog import load_catalog
            try:
                if args.file:
                    policy = load_policy_file(args.file, load_catalog(), tenant=args.tenant)
                else:
                    policy = parse_policy_text(args.json, load_catalog(), tenant=args.tenant,
                                               fmt="json", source="--json")
            except PolicyError as exc:
                print(f"invalid policy for tenant {args.tenant}: {exc}", file=sys.stderr)
                return 2
            show(await put_policy(bootstrap, topic, codec, policy, timeout_s=args.timeout))
            return 0
        if args.action == "key":
            from pipeline.gateway.keys import add_key
            key, count = await add_key(bootstrap, topic, codec, args.tenant,
                                       replace=args.replace, timeout_s=args.timeout)
            print(key)
            print(f"a new gateway API key for tenant {args.tenant} ({count} key(s) now; only "
                  "its hash is stored: keep the key, it cannot be shown again)", file=sys.stderr)
            return 0
        policies = await read_policies(bootstrap, topic, codec, timeout_s=args.timeout)
        if args.action == "list":
            if args.format == "json":
                print(json.dumps([policy_to_mapping(p) for _, p in sorted(policies.items())],
                                 ensure_ascii=False, indent=2))
                return 0
            rows = [("TENANT", "BUDGETS", "ALLOWED", "DENIED", "CANARY")] + [
                (t, budgets_text(p), ", ".join(p.allowed_models) or "all",
                 ", ".join(p.denied_models) or "-", canary_text(p))
                for t, p in sorted(policies.items())]
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for r in rows:
                print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            print(f"{len(policies)} tenant(s) with a policy on {topic}")
            return 0
        policy = policies.get(args.tenant)
        if policy is None:
            print(f"tenant {args.tenant} has no policy on {topic}", file=sys.stderr)
            return 1
        if args.action == "get":
            show(policy, args.format)
            return 0
        await delete_policy(bootstrap, topic, args.tenant, timeout_s=args.timeout)
        print(f"deleted the policy of tenant {args.tenant} (tombstone on {topic})")
        return 0

    try:
        return asyncio.run(run())
    except (TenantTopicMissing, TimeoutError) as exc:
        print(f"llmpipe tenants {args.action}: {exc}", file=sys.stderr)
        return 3
    except KafkaError as exc:
        print(f"llmpipe tenants {args.action}: cannot reach Kafka at {bootstrap}: {exc}",
              file=sys.stderr)
        return 3


def cmd_gateway(args: argparse.Namespace) -> int:
    from pipeline.gateway.server import main as gateway_main

    settings = Settings.from_env()
    _logging(settings.log_level)
    return gateway_main(settings, args.instance, args.host, args.port)


def cmd_cache(args: argparse.Namespace) -> int:
    """``cache clear --tenant T``: publish a clear to the tenant's partition of
    llm.cache-fills (the worker owning it drops every entry). ``cache stats``: the
    ``cache`` report (hits, hit rate, money saved per tenant) from the ledger."""
    if args.action == "stats":
        args.report, args.by, args.source, args.limit = "cache", "tenant", "raw", 10
        from pipeline.analytics.report import run_report
        return run_report(args)
    from pipeline.cache.store import CLEAR
    from pipeline.events.codec import Codec
    from pipeline.events.models import CacheFill
    from pipeline.clock import now_ms
    from pipeline.kafka import clients

    settings = Settings.from_env()
    topic = settings.topics.cache_fills

    async def clear() -> None:
        producer = clients.producer(args.bootstrap or settings.kafka_bootstrap)
        await producer.start()
        try:
            fill = CacheFill(args.tenant, CLEAR, now_ms())
            await producer.send_and_wait(topic, Codec().encode(fill, topic),
                                         key=args.tenant.encode())
        finally:
            await producer.stop()

    asyncio.run(clear())
    print(f"cache of tenant {args.tenant!r}: clear published to {topic} (applied by the worker "
          "owning the tenant's partition within seconds)")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from pipeline.dev.run import run_dev
    return run_dev(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmpipe", description="Kafka-native LLM gateway")
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run the pipeline on the embedded stack with demo traffic")
    dev.add_argument("--kafka-port", type=int, default=0, help="broker port (default: a free port)")
    dev.add_argument("--data-dir", default=".data/dev", help="where chDB and logs live")
    dev.add_argument("--demo-requests", type=int, default=60, help="demo requests to send")
    dev.add_argument("--exit", action="store_true",
                     help="exit after the report: 0 only if every request got a response and a usage row")
    dev.add_argument("--seed", type=int, default=7)
    dev.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the demo")
    dev.add_argument("--latency-scale", type=float, default=1.0,
                     help="simulator latency multiplier (0.1 = ten times faster)")
    dev.set_defaults(func=cmd_dev)

    worker = sub.add_parser("worker", help="run a pipeline worker (settings from LLMPIPE_* variables)")
    worker.add_argument("--processes", type=int, default=1,
                        help="worker processes in one consumer group, each on its own web port "
                             "(LLMPIPE_WEB_PORT + i); a worker is one core (default 1)")
    worker.set_defaults(func=cmd_worker)

    gw = sub.add_parser("gateway", help="serve the OpenAI-compatible HTTP API "
                                        "(settings from LLMPIPE_* variables)")
    gw.add_argument("--host", default=os.environ.get("LLMPIPE_GATEWAY_HOST", "127.0.0.1"))
    gw.add_argument("--port", type=int, default=int(os.environ.get("LLMPIPE_GATEWAY_PORT", "8080")),
                    help="0: a free port (printed)")
    gw.add_argument("--instance", default=os.environ.get("LLMPIPE_GATEWAY_ID") or socket.gethostname(),
                    help="instance id, names its reply topics (default: $LLMPIPE_GATEWAY_ID or "
                         "the host name)")
    gw.set_defaults(func=cmd_gateway)

    from pipeline.ops import deadletters, route
    route.register(sub)

    topics = sub.add_parser("topics", help="manage topics")
    tsub = topics.add_subparsers(dest="action", required=True)
    apply = tsub.add_parser("apply", help="create missing topics and report drift")
    apply.add_argument("--bootstrap")
    apply.add_argument("--prefix", default=None)
    apply.add_argument("--overlay", help="YAML overlay for production (partitions, replication)")
    apply.set_defaults(func=cmd_topics)
    render = tsub.add_parser("render", help="print the topics as Kubernetes resources (YAML)")
    render.add_argument("--format", choices=("strimzi",), required=True,
                        help="strimzi: a KafkaTopic per topic, for the Strimzi topic operator")
    render.add_argument("--overlay", help="YAML overlay for production (partitions, replication)")
    render.add_argument("--namespace", help="the Kafka cluster's namespace (default: none set)")
    render.add_argument("--cluster", default="llmpipe",
                        help="the Strimzi Kafka cluster's name (label strimzi.io/cluster)")
    render.add_argument("--api-version", default="v1", choices=("v1", "v1beta2"),
                        help="kafka.strimzi.io version: v1 (Strimzi >= 0.49) or v1beta2 (< 1.0)")
    render.add_argument("--prefix", default="", help="prepended to every topic name")
    render.set_defaults(func=cmd_topics_render)

    tenants = sub.add_parser("tenants", help="tenant policies on the compacted tenants topic")
    tensub = tenants.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bootstrap", help="default: $LLMPIPE_KAFKA_BOOTSTRAP")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for Kafka")
    tset = tensub.add_parser("set", parents=[common], help="validate and publish a tenant's policy")
    tset.add_argument("tenant")
    source = tset.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="policy file: YAML, or JSON if it ends in .json")
    source.add_argument("--json", help="the policy as a JSON object")
    tget = tensub.add_parser("get", parents=[common], help="print a tenant's policy")
    tget.add_argument("tenant")
    tget.add_argument("--format", choices=("yaml", "json"), default="yaml")
    tlist = tensub.add_parser("list", parents=[common], help="every tenant with a policy")
    tlist.add_argument("--format", choices=("table", "json"), default="table")
    tdel = tensub.add_parser("delete", parents=[common], help="delete a tenant's policy (tombstone)")
    tdel.add_argument("tenant")
    tkey = tensub.add_parser("key", parents=[common],
                             help="make a gateway API key for a tenant (prints it once; stores its hash)")
    tkey.add_argument("tenant")
    tkey.add_argument("--replace", action="store_true", help="revoke the tenant's other keys")
    tenants.set_defaults(func=cmd_tenants)

    cache = sub.add_parser("cache", help="the response cache: clear a tenant's, or its stats")
    csub = cache.add_subparsers(dest="action", required=True)
    cclear = csub.add_parser("clear", help="drop every cached answer of a tenant")
    cclear.add_argument("--tenant", required=True)
    cclear.add_argument("--bootstrap", help="default: $LLMPIPE_KAFKA_BOOTSTRAP")
    cstats = csub.add_parser("stats", help="hits by kind, hit rate, money saved per tenant")
    cstats.add_argument("--tenant", help="only this tenant")
    cstats.add_argument("--from", "--since", dest="since", help="ISO 8601 date or date-time")
    cstats.add_argument("--to", "--until", dest="until", help="end of the period (exclusive)")
    cstats.add_argument("--format", choices=("table", "csv", "json"), default="table")
    cstats.add_argument("--dsn", help="ClickHouse DSN (default: $LLMPIPE_CLICKHOUSE_DSN)")
    cache.set_defaults(func=cmd_cache)

    deadletters.register(sub)

    mig = sub.add_parser("migrate", help="apply ClickHouse migrations")
    mig.add_argument("--dsn", help="default: $LLMPIPE_CLICKHOUSE_DSN")
    mig.set_defaults(func=cmd_migrate)

    from pipeline.analytics.report import add_parsers as add_report_parsers
    add_report_parsers(sub)  # report, reprice

    sub.add_parser("kcat", add_help=False,
                   help="kcat with a librdkafka that speaks to the embedded broker")
    sub.add_parser("simulate-provider", add_help=False,
                   help="run the provider simulator (see --help)").set_defaults(func=cmd_simulate)

    send = sub.add_parser("send", help="send one request and print the response")
    send.add_argument("prompt")
    send.add_argument("--tenant", default="cli")
    send.add_argument("--model")
    send.add_argument("--max-tokens", type=int)
    send.add_argument("--format", choices=("avro", "json"), default="avro")
    send.add_argument("--timeout", type=float, default=60.0)
    send.add_argument("--bootstrap")
    send.set_defaults(func=cmd_send)

    sub.add_parser("bench", add_help=False,
                   help="benchmarks: llmpipe bench [NAME] (latency, batching, batchapi, ingest, "
                        "reports, monitor, faults, savings, classifier, tokens)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate-provider"]:
        return cmd_simulate(argparse.Namespace(), argv[1:])
    if argv[:1] == ["bench"]:
        from pipeline.bench import main as bench_main
        return bench_main(argv[1:])
    if argv[:1] == ["kcat"]:
        from pipeline.embedded.kcat import main as kcat_main
        return kcat_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
