"""Deployments: where each logical model is served (provider, base URL, provider-side
model name, key, region, weight), each one's breaker, rate limits and health thresholds,
and the per-call limits of the dispatcher."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.catalog import Catalog
from pipeline.clock import ManualClock
from pipeline.config import ConfigError, Section, config_path, expand_env, load_yaml
from pipeline.resilience.guard import (BreakerSettings, DeploymentGuard, GuardSettings,
                                       HealthSettings, LimitSettings)
from pipeline.resilience.retry import RetryPolicy

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
    guard: GuardSettings    # breaker, rate limits and health thresholds (``resilience:``)


@dataclass(frozen=True)
class CallLimits:
    """Timeouts and retries of provider calls.

    ``connect_timeout_s`` bounds the TCP/TLS connect; ``total_timeout_s`` bounds one whole
    attempt (httpx applies it per read as well, and the dispatcher cuts the attempt at that
    total). A streamed call (``stream: true``) is cut only by the request's deadline as a
    whole, so a long answer that keeps coming is not cut at the total; httpx's per-read
    timeout still ends a stream that stalls (or never starts) for ``total_timeout_s``.
    ``deadline_s`` bounds a request from intake (``received_at_ms``) across every attempt,
    wait and failover."""

    connect_timeout_s: float
    total_timeout_s: float
    retry: RetryPolicy          # backoff, jitter, cap, Retry-After and max_attempts per deployment
    deadline_s: float
    hedge_after_ms: int = 0     # 0: no hedging; see Dispatcher._hedged

    @property
    def max_attempts(self) -> int:
        return self.retry.max_attempts or 1


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
    defaults = _guard_settings(root.section("resilience"), None)
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
            priority=s.int("priority", 1, minimum=0), weight=s.int("weight", 1, minimum=0),
            guard=(_guard_settings(s.section("resilience"), defaults) if s.has("resilience")
                   else defaults))
    c = root.section("calls")
    calls = CallLimits(
        connect_timeout_s=_positive(c, "connect_timeout_s"),
        total_timeout_s=_positive(c, "total_timeout_s"),
        retry=RetryPolicy(base_s=c.number("backoff_base_s"), cap_s=c.number("backoff_cap_s"),
                          jitter=c.number("jitter"), max_attempts=c.int("max_attempts", minimum=1)),
        deadline_s=_positive(c, "deadline_s"),
        hedge_after_ms=c.int("hedge_after_ms", 0, minimum=0))
    return Deployments(by_id, calls)


_GUARD_PARTS = {"breaker": BreakerSettings, "limits": LimitSettings, "health": HealthSettings}


def _guard_settings(section: Section, base: GuardSettings | None) -> GuardSettings:
    """``resilience:`` settings: every key required at the top level (``base`` None); in a
    deployment, any key overrides the top-level value."""
    unknown = set(section.data) - set(_GUARD_PARTS)
    if unknown:
        raise ConfigError(section.path, section.where(sorted(unknown)[0]),
                          f"one of {sorted(_GUARD_PARTS)}")
    parts: dict[str, Any] = {}
    for name, cls in _GUARD_PARTS.items():
        inherited = getattr(base, name) if base is not None else None
        if not section.has(name):
            if inherited is None:
                raise ConfigError(section.path, section.where(name), "a mapping (missing)")
            parts[name] = inherited
            continue
        part = section.section(name)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(part.data) - set(fields)
        if unknown:
            raise ConfigError(part.path, part.where(sorted(unknown)[0]), f"one of {sorted(fields)}")
        values = {}
        for key, f in fields.items():
            default = getattr(inherited, key) if inherited is not None else (
                None if f.default is None else ...)
            if key == "request_burst":
                raw = part.raw(key, default)
                values[key] = None if raw is None else part.int(key, default, minimum=1)
            elif f.type in ("int", int):
                values[key] = part.int(key, default, minimum=1)
            else:
                values[key] = _positive(part, key, default)
        parts[name] = cls(**values)
    settings = GuardSettings(**parts)
    try:        # the breaker, limiter and window check their own consistency
        DeploymentGuard("config-check", settings, ManualClock())
    except ValueError as exc:
        raise ConfigError(section.path, section.key, f"consistent settings: {exc}") from None
    return settings


def _positive(s: Section, name: str, default: Any = ...) -> float:
    value = s.number(name, default)
    if value <= 0:
        raise ConfigError(s.path, s.where(name), "a number > 0", value)
    return value
