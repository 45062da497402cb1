"""Batch API settings from ``batchapi.yaml`` (errors name the file and key)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ConfigError, Section, config_path, load_yaml

BATCH_PROVIDERS = ("openai", "anthropic")    # providers with a Batch API client


@dataclass(frozen=True)
class PollSettings:
    initial_s: float = 2.0
    factor: float = 2.0
    max_s: float = 60.0

    def delay(self, polls: int) -> float:
        """Seconds before status check number ``polls + 1`` (0 = the first after submit)."""
        return min(self.initial_s * self.factor ** polls, self.max_s)


@dataclass(frozen=True)
class BatchApiConfig:
    providers: tuple[str, ...] = BATCH_PROVIDERS
    disabled_deployments: tuple[str, ...] = ()
    completion_window: str = "24h"
    poll: PollSettings = PollSettings()
    max_wait_s: float = 90000.0
    http_timeout_s: float = 60.0


def load_batchapi_config(path: Path | None = None) -> BatchApiConfig:
    path = path or config_path("batchapi.yaml")
    if not path.exists():
        return BatchApiConfig()
    root = Section(path, "", load_yaml(path)).section("batch_api")
    providers = tuple(root.str_list("providers", list(BATCH_PROVIDERS)))
    for i, name in enumerate(providers):
        if name not in BATCH_PROVIDERS:
            raise ConfigError(path, f"batch_api.providers[{i}]", f"one of {BATCH_PROVIDERS}", name)
    poll = root.section("poll") if root.has("poll") else Section(path, "batch_api.poll", {})
    settings = PollSettings(initial_s=_positive(poll, "initial_s", 2.0),
                            factor=_positive(poll, "factor", 2.0),
                            max_s=_positive(poll, "max_s", 60.0))
    if settings.factor < 1:
        raise ConfigError(path, "batch_api.poll.factor", "a number >= 1", settings.factor)
    return BatchApiConfig(
        providers=providers,
        disabled_deployments=tuple(root.str_list("disabled_deployments", [])),
        completion_window=root.str("completion_window", "24h"),
        poll=settings,
        max_wait_s=_positive(root, "max_wait_s", 90000.0),
        http_timeout_s=_positive(root, "http_timeout_s", 60.0))


def _positive(s: Section, name: str, default: float) -> float:
    value = s.number(name, default)
    if value <= 0:
        raise ConfigError(s.path, s.where(name), "a number > 0", value)
    return value
