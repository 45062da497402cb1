"""Deployments: where each logical model is served (provider, base URL, provider-side
model name, key, region, weight), and the per-call limits of the dispatcher."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.catalog import Catalog
from pipeline.config import ConfigError, Section, config_path, expand_env, load_yaml

ADAPTERS = ("openai", "anthropic", "gemini")


@dataclass(frozen=True)
class Deployment:
    id: str
    model: str              # logical model in the catalog
    provider: str
    adapter: str
    base_url: str
    provider_model: str
    api_key_env: str | None
    api_key_file: str | None
    region: str
    priority: int
    weight: int


@dataclass(frozen=True)
class CallLimits:
    connect_timeout_s: float
    total_timeout_s: float
    max_attempts: int
    backoff_base_s: float
    backoff_cap_s: float
    jitter: float


@dataclass(frozen=True)
class Deployments:
    by_id: dict[str, Deployment]
    calls: CallLimits

    def for_model(self, model: str) -> list[Deployment]:
        """Deployments serving ``model``, best priority first."""
        return sorted((d for d in self.by_id.values() if d.model == model),
                      key=lambda d: (d.priority, -d.weight, d.id))


def load_deployments(catalog: Catalog, path: Path | None = None,
                     env: dict[str, str] | None = None) -> Deployments:
    path = path or config_path("deployments.yaml")
    root = Section(path, "", load_yaml(path))
    items = root.raw("deployments")
    if not isinstance(items, list) or not items:
        raise ConfigError(path, "deployments", "a non-empty list")
    by_id: dict[str, Deployment] = {}
    for i, item in enumerate(items):
        s = Section(path, f"deployments[{i}]", item)
        dep_id = s.str("id")
        if dep_id in by_id:
            raise ConfigError(path, f"deployments[{i}].id", "a unique id", dep_id)
        model = s.str("model")
        if model not in catalog.models:
            raise ConfigError(path, f"deployments[{i}].model",
                              f"a catalog model {sorted(catalog.models)}", model)
        adapter = s.str("adapter", "openai")
        if adapter not in ADAPTERS:
            raise ConfigError(path, f"deployments[{i}].adapter", f"one of {ADAPTERS}", adapter)
        try:
            base_url = expand_env(s.str("base_url"), env)
        except KeyError as exc:
            raise ConfigError(path, f"deployments[{i}].base_url",
                              f"environment variable {exc.args[0]} to be set") from None
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(path, f"deployments[{i}].base_url", "an http(s) URL", base_url)
        key_env, key_file = s.raw("api_key_env", None), s.raw("api_key_file", None)
        if not key_env and not key_file:
            raise ConfigError(path, f"deployments[{i}]", "api_key_env or api_key_file")
        by_id[dep_id] = Deployment(
            id=dep_id, model=model, provider=s.str("provider"), adapter=adapter,
            base_url=base_url.rstrip("/"), provider_model=s.str("provider_model", model),
            api_key_env=key_env, api_key_file=key_file, region=s.str("region", "default"),
            priority=s.int("priority", 1, minimum=0), weight=s.int("weight", 1, minimum=0))
    c = root.section("calls")
    calls = CallLimits(
        connect_timeout_s=c.number("connect_timeout_s"), total_timeout_s=c.number("total_timeout_s"),
        max_attempts=c.int("max_attempts", minimum=1), backoff_base_s=c.number("backoff_base_s"),
        backoff_cap_s=c.number("backoff_cap_s"), jitter=c.number("jitter"))
    return Deployments(by_id, calls)
