"""`llmpipe route --explain PROMPT`: how a prompt would be routed and why, offline (no
broker, no provider call), with a tenant's policy applied when one is named."""

from __future__ import annotations

import argparse
import asyncio

from pipeline.tenancy.policy_file import describe_policy


def command(args: argparse.Namespace) -> int:
    """Explain the routing decision for a prompt, offline (no broker, no provider call)."""
    import random
    from decimal import Decimal

    from pipeline.catalog import load_catalog
    from pipeline.client import make_request
    from pipeline.providers.deployments import load_deployments
    from pipeline.events.models import RoutingHints
    from pipeline.routing.classifier import RuleClassifier
    from pipeline.routing.policy import Router, load_routing
    from pipeline.routing.tokens import estimate_request_tokens
    from pipeline.intake.step import tenant_rules
    from pipeline.tenancy.state import TenantState

    catalog = load_catalog()
    policy = load_routing(catalog)
    router = Router(catalog, load_deployments(catalog), policy, random.Random(0), RuleClassifier())
    hints = RoutingHints(required_quality=args.quality, max_latency_ms=args.max_latency_ms,
                         budget_per_mtok=Decimal(args.budget) if args.budget else None)
    tenant = _route_tenant(args, catalog)
    req = make_request(tenant.tenant if tenant else "cli", args.prompt, model=args.model,
                       hints=hints, max_tokens=args.max_tokens)
    tokens = estimate_request_tokens(req)
    rules = tenant_rules(tenant, req, TenantState({}), economise=False)[0]
    route = router.route(req, tokens, rules)
    d = route.decision
    if tenant is not None:
        print(f"tenant:     {tenant.tenant} ({describe_policy(tenant) or 'no constraints'})")
    score = f"{d.complexity:.2f}" if d.complexity is not None else "-"
    print(f"class:      {d.task_class or '-'} (complexity {score})")
    print(f"model:      {d.model} via {d.deployment} ({d.provider}, {d.region})")
    print(f"rule:       {d.rule}")
    print(f"why:        {d.reason}")
    print(f"tokens:     ~{tokens} prompt, max_tokens {route.max_tokens}")
    print(f"fallbacks:  {', '.join(route.fallbacks) or '-'}")
    return 0


def _route_tenant(args: argparse.Namespace, catalog):
    """The policy ``route --explain`` applies: from --policy-file, or the tenant's current
    one on llm.tenants (--tenant); None for neither."""
    from pipeline.events.codec import Codec
    from pipeline.settings import Settings
    from pipeline.tenancy.directory import read_policies
    from pipeline.tenancy.policy_file import load_policy_file

    if args.policy_file:
        return load_policy_file(args.policy_file, catalog, tenant=args.tenant)
    if not args.tenant:
        return None
    settings = Settings.from_env()
    policies = asyncio.run(read_policies(args.bootstrap or settings.kafka_bootstrap,
                                         settings.topics.tenants, Codec()))
    if args.tenant not in policies:
        raise SystemExit(f"no policy for tenant {args.tenant!r} on {settings.topics.tenants} "
                         f"(tenants: {', '.join(sorted(policies)) or 'none'})")
    return policies[args.tenant]


def register(sub: argparse._SubParsersAction) -> None:
    route = sub.add_parser("route", help="explain how a prompt would be routed (offline)")
    route.add_argument("--explain", dest="prompt", required=True, metavar="PROMPT")
    route.add_argument("--model", help="pinned model or alias")
    route.add_argument("--quality", type=float, help="required_quality 0..1")
    route.add_argument("--max-latency-ms", type=int)
    route.add_argument("--budget", help="budget_per_mtok in USD")
    route.add_argument("--max-tokens", type=int)
    route.add_argument("--tenant", help="apply this tenant's policy (read from llm.tenants)")
    route.add_argument("--policy-file", help="apply the policy in this YAML/JSON file instead")
    route.add_argument("--bootstrap", help="Kafka bootstrap for --tenant")
    route.set_defaults(func=command)
