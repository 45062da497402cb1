"""Everything a worker needs, built once from settings and configuration and validated
at start-up: catalog, deployments (with their keys), routing policy, codec."""

from __future__ import annotations

import random
from dataclasses import dataclass

from pipeline.catalog import Catalog, load_catalog
from pipeline.providers.deployments import Deployments, load_deployments
from pipeline.events.codec import Codec
from pipeline.events.registry import LocalRegistry, SchemaRegistryClient
from pipeline.routing.classifier import RuleClassifier
from pipeline.routing.policy import Router, RoutingPolicy, load_routing
from pipeline.secrets import Secret, SecretError, load_secret
from pipeline.settings import Settings
from pipeline.intake.bounds import RequestBounds, load_bounds


@dataclass
class Runtime:
    settings: Settings
    catalog: Catalog
    deployments: Deployments
    policy: RoutingPolicy
    codec: Codec
    rng: random.Random
    bounds: RequestBounds = RequestBounds()

    def router(self) -> Router:
        return Router(self.catalog, self.deployments, self.policy, self.rng, RuleClassifier())

    def load_keys(self) -> dict[str, Secret]:
        """Every deployment's API key, or one error listing every missing/implausible key."""
        keys, problems = {}, []
        for dep in self.deployments.by_id.values():
            try:
                keys[dep.id] = load_secret(dep.api_key_env, dep.api_key_file, f"deployment {dep.id}")
            except SecretError as exc:
                problems.append(str(exc))
        if problems:
            raise SecretError("API keys are not usable:\n  " + "\n  ".join(problems))
        return keys


def build_runtime(settings: Settings) -> Runtime:
    catalog = load_catalog()
    registry = LocalRegistry()
    if settings.schema_registry_url:
        registry = SchemaRegistryClient(settings.schema_registry_url, registry)
    return Runtime(settings, catalog, load_deployments(catalog), load_routing(catalog),
                   Codec(registry), random.Random(settings.seed),
                   load_bounds(max_message_bytes=settings.max_message_bytes))
