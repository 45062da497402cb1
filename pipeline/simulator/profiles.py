"""What the provider simulator simulates: per-model latency, error and limit profiles and
the injected faults, loaded from simulator.yaml into frozen, validated objects."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from statistics import NormalDist
from types import MappingProxyType
from typing import Any

from pipeline.config import ConfigError, Section, config_path, load_yaml
from pipeline.simulator.chat import FEATURES

ANY_MODEL = "*"
_Z99 = NormalDist().inv_cdf(0.99)


@dataclass(frozen=True)
class ModelProfile:
    name: str
    mean_ms: float
    p99_ms: float
    ttft_ms: float
    tokens_per_s: float
    error_rate: float              # fraction of calls answered 500 when base errors are on
    context_window: int
    max_output_tokens: int
    # What the model can be asked for beyond text (chat.FEATURES); absent in the YAML: all.
    features: frozenset[str] = FEATURES
    kind: str = "chat"             # chat | embedding
    dimensions: int | None = None  # embedding models: the vector's length

    def lognormal(self) -> tuple[float, float]:
        """(mu, sigma) of the lognormal latency with this profile's mean and P99."""
        return lognormal_fit(self.mean_ms, self.p99_ms)


def lognormal_fit(mean: float, p99: float) -> tuple[float, float]:
    """The lognormal with the given mean and 99th percentile.

    mean = exp(mu + sigma^2/2) and p99 = exp(mu + z*sigma) give
    sigma^2/2 - z*sigma + ln(p99/mean) = 0; the smaller root is the lighter tail.
    """
    if not 0 < mean < p99:
        raise ValueError(f"need 0 < mean < p99, got mean={mean} p99={p99}")
    gap = math.log(p99 / mean)
    discriminant = _Z99 * _Z99 - 2 * gap
    if discriminant < 0:
        raise ValueError(f"no lognormal has mean {mean} and p99 {p99} "
                         f"(p99 must be below {math.exp(_Z99 * _Z99 / 2):.1f} x mean)")
    sigma = _Z99 - math.sqrt(discriminant)
    return math.log(mean) - sigma * sigma / 2, sigma


class FaultKind(str, Enum):
    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    HANG = "hang"
    MALFORMED = "malformed"
    CONTEXT_LENGTH = "context_length"
    UNAUTHORIZED = "unauthorized"


SERVER_ERROR_STATUSES = (500, 502, 503)
# The settings each kind reads besides kind and rate; anything else is a typo.
_FAULT_SETTINGS = {
    FaultKind.RATE_LIMIT: {"retry_after_s"},
    FaultKind.SERVER_ERROR: {"status"},
    FaultKind.HANG: {"hang_s"},
    FaultKind.MALFORMED: set(),
    FaultKind.CONTEXT_LENGTH: set(),
    FaultKind.UNAUTHORIZED: set(),
}


@dataclass(frozen=True)
class FaultSpec:
    kind: FaultKind
    rate: float = 1.0              # probability per call
    retry_after_s: float = 1.0     # rate_limit: the Retry-After the 429 carries
    status: int = 503              # server_error: 500, 502 or 503
    hang_s: float | None = None    # hang: None = until the client disconnects
    # Only calls made with the API key of this fingerprint (Secret.fingerprint, as the
    # stats and the pipeline's logs show keys), e.g. one revoked key; None: every call.
    key: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value, "rate": self.rate}
        for name in sorted(_FAULT_SETTINGS[self.kind]):
            out[name] = getattr(self, name)
        if self.key is not None:
            out["key"] = self.key
        return out

    def applies_to(self, key_fingerprint: str) -> bool:
        return self.key is None or self.key == key_fingerprint


def parse_fault(data: Any, source: Path | str, key: str) -> FaultSpec:
    """One fault from YAML, JSON or the CLI; errors name ``source`` and ``key``."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, key, "a mapping with kind and rate", data)
    kinds = [k.value for k in FaultKind]
    try:
        kind = FaultKind(data.get("kind"))
    except ValueError:
        raise ConfigError(source, f"{key}.kind", f"one of {kinds}", data.get("kind")) from None
    unknown = set(data) - {"kind", "rate", "key"} - _FAULT_SETTINGS[kind]
    if unknown:
        allowed = sorted({"kind", "rate", "key"} | _FAULT_SETTINGS[kind])
        raise ConfigError(source, f"{key}.{sorted(unknown)[0]}",
                          f"only {allowed} for a {kind.value} fault")
    values: dict[str, Any] = {"kind": kind}
    rate = data.get("rate", 1.0)
    if not _is_number(rate) or not 0 <= rate <= 1:
        raise ConfigError(source, f"{key}.rate", "a probability 0..1", rate)
    values["rate"] = float(rate)
    if "retry_after_s" in data:
        retry = data["retry_after_s"]
        if not _is_number(retry) or retry < 0:
            raise ConfigError(source, f"{key}.retry_after_s", "seconds >= 0", retry)
        values["retry_after_s"] = float(retry)
    if "status" in data:
        if data["status"] not in SERVER_ERROR_STATUSES:
            raise ConfigError(source, f"{key}.status", f"one of {list(SERVER_ERROR_STATUSES)}",
                              data["status"])
        values["status"] = int(data["status"])
    if data.get("hang_s") is not None:
        hang = data["hang_s"]
        if not _is_number(hang) or hang < 0:
            raise ConfigError(source, f"{key}.hang_s", "seconds >= 0 (or null: forever)", hang)
        values["hang_s"] = float(hang)
    if data.get("key") is not None:
        if not isinstance(data["key"], str) or not data["key"]:
            raise ConfigError(source, f"{key}.key", "an API key fingerprint (a string)", data["key"])
        values["key"] = data["key"]
    return FaultSpec(**values)


def parse_faults(data: Any, source: Path | str, key: str,
                 known_models: set[str]) -> dict[str, FaultSpec]:
    """A ``{model: fault}`` mapping; ``*`` stands for every model."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(source, key or "<root>", "a mapping of model to fault", data)
    faults = {}
    for model, spec in data.items():
        where = f"{key}.{model}" if key else str(model)
        if model != ANY_MODEL and model not in known_models:
            raise ConfigError(source, where, f"'*' or one of the models {sorted(known_models)}")
        faults[str(model)] = parse_fault(spec, source, where)
    return faults


def parse_fault_flag(flag: str, known_models: set[str]) -> tuple[str, FaultSpec]:
    """``MODEL=KIND[:RATE][:name=value...]``, e.g. ``gpt-4.1=rate_limit:0.5:retry_after_s=2``."""
    model, sep, rest = flag.partition("=")
    if not sep or not model or not rest:
        raise ConfigError("--fault", flag, "MODEL=KIND[:RATE][:name=value...]")
    kind, *parts = rest.split(":")
    data: dict[str, Any] = {"kind": kind}
    for part in parts:
        name, has_value, value = part.partition("=")
        if not has_value:
            name, value = "rate", part
        data[name] = _flag_value(value)
    faults = parse_faults({model: data}, "--fault", "", known_models)
    return model, faults[model]


def _flag_value(text: str) -> Any:
    if text.lower() in ("none", "null", "forever"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class CompletionRange:
    min_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class PromptCacheRule:
    min_tokens: int
    increment_tokens: int


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything a simulator run needs: profiles from YAML plus the run's options."""

    profiles: Mapping[str, ModelProfile]
    aliases: Mapping[str, str] = field(default_factory=dict)
    completion_tokens: CompletionRange = CompletionRange(20, 600)
    prompt_cache: PromptCacheRule = PromptCacheRule(1024, 128)
    faults: Mapping[str, FaultSpec] = field(default_factory=dict)
    seed: int = 7
    latency_scale: float = 1.0           # multiplies every sampled latency (0.01 for tests)
    fixed_latency_ms: float | None = None  # replaces sampling (benchmarks)
    base_errors: bool = True             # profile error rates yield 500s
    # The API keys answered; empty: any non-empty key (what the dev stack relies on).
    api_keys: frozenset[str] = frozenset()
    max_body_bytes: int = 64 * 2**20     # a 1M-token prompt is ~4 MB of JSON

    def __post_init__(self) -> None:
        object.__setattr__(self, "profiles", MappingProxyType(dict(self.profiles)))
        object.__setattr__(self, "aliases", MappingProxyType(dict(self.aliases)))
        object.__setattr__(self, "faults", MappingProxyType(dict(self.faults)))
        object.__setattr__(self, "api_keys", frozenset(self.api_keys))
        if not _is_number(self.latency_scale) or self.latency_scale < 0:
            raise ValueError(f"latency_scale must be >= 0, got {self.latency_scale!r}")
        if self.fixed_latency_ms is not None and (
                not _is_number(self.fixed_latency_ms) or self.fixed_latency_ms < 0):
            raise ValueError(f"fixed_latency_ms must be >= 0, got {self.fixed_latency_ms!r}")
        for alias, target in self.aliases.items():
            if target not in self.profiles:
                raise ValueError(f"alias {alias!r} points at unknown profile {target!r}")

    def profile(self, model: str) -> ModelProfile | None:
        """The profile answering for a provider-side model name (or alias), None if unknown."""
        return self.profiles.get(self.aliases.get(model, model))

    def model_names(self) -> list[str]:
        return sorted(set(self.profiles) | set(self.aliases))

    def accepts_key(self, api_key: str | None) -> bool:
        """A key the simulator answers: any non-empty one unless keys are configured."""
        return bool(api_key) and (not self.api_keys or api_key in self.api_keys)


def load_config(path: Path | None = None, **options: Any) -> SimulatorConfig:
    """Load simulator.yaml (the packaged one by default); ``options`` set the run's
    seed, latency_scale, fixed_latency_ms and base_errors, and may replace faults."""
    path = path or config_path("simulator.yaml")
    root = Section(path, "", load_yaml(path))
    models = root.section("models")
    profiles = {str(name): _profile(path, str(name), models.section(name)) for name in models.data}
    if not profiles:
        raise ConfigError(path, "models", "at least one model profile")
    aliases = {}
    for alias, target in (root.raw("aliases", {}) or {}).items():
        if target not in profiles:
            raise ConfigError(path, f"aliases.{alias}", f"one of the models {sorted(profiles)}",
                              target)
        aliases[str(alias)] = target
    tokens = root.section("completion_tokens")
    completion = CompletionRange(tokens.int("min", minimum=1), tokens.int("max", minimum=1))
    if completion.max_tokens < completion.min_tokens:
        raise ConfigError(path, "completion_tokens.max", "a value >= completion_tokens.min",
                          completion.max_tokens)
    cache = root.section("prompt_cache")
    cache_rule = PromptCacheRule(cache.int("min_tokens", minimum=1),
                                 cache.int("increment_tokens", minimum=1))
    known = set(profiles) | set(aliases)
    faults = parse_faults(root.raw("faults", {}), path, "faults", known)
    unknown = set(options) - {f.name for f in fields(SimulatorConfig)}
    if unknown:
        raise TypeError(f"unknown simulator options {sorted(unknown)}")
    keys = root.raw("keys", []) or []
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise ConfigError(path, "keys", "a list of API keys (strings)", keys)
    options = {**options, "api_keys": frozenset(keys) | frozenset(options.get("api_keys", ()))}
    values: dict[str, Any] = {"faults": faults, **options}
    return SimulatorConfig(profiles=profiles, aliases=aliases, completion_tokens=completion,
                           prompt_cache=cache_rule, **values)


def _profile(path: Path, name: str, s: Section) -> ModelProfile:
    profile = ModelProfile(
        name=name,
        mean_ms=_positive(path, s, "mean_ms"),
        p99_ms=_positive(path, s, "p99_ms"),
        ttft_ms=_positive(path, s, "ttft_ms"),
        tokens_per_s=_positive(path, s, "tokens_per_s"),
        error_rate=s.number("error_rate"),
        context_window=s.int("context_window", minimum=1),
        max_output_tokens=s.int("max_output_tokens", minimum=1),
        features=_features(path, s),
        kind=s.str("kind", "chat"),
        dimensions=s.int("dimensions", minimum=1) if s.has("dimensions") else None,
    )
    if profile.kind not in ("chat", "embedding"):
        raise ConfigError(path, f"{s.key}.kind", "chat or embedding", profile.kind)
    if profile.kind == "embedding" and profile.dimensions is None:
        raise ConfigError(path, f"{s.key}.dimensions", "the vector length of an embedding model")
    if not 0 <= profile.error_rate <= 1:
        raise ConfigError(path, f"{s.key}.error_rate", "a fraction 0..1", profile.error_rate)
    try:
        profile.lognormal()
    except ValueError as exc:
        raise ConfigError(path, f"{s.key}.p99_ms", f"a P99 a lognormal can fit ({exc})",
                          profile.p99_ms) from None
    if profile.ttft_ms > profile.mean_ms:
        raise ConfigError(path, f"{s.key}.ttft_ms", "at most mean_ms", profile.ttft_ms)
    if profile.max_output_tokens > profile.context_window:
        raise ConfigError(path, f"{s.key}.max_output_tokens", "at most context_window",
                          profile.max_output_tokens)
    return profile


def _features(path: Path, s: Section) -> frozenset[str]:
    if not s.has("features"):
        return FEATURES
    listed = s.raw("features")
    if not isinstance(listed, list) or not set(listed) <= FEATURES:
        raise ConfigError(path, f"{s.key}.features", f"a list of {sorted(FEATURES)}", listed)
    return frozenset(listed)


def _positive(path: Path, s: Section, name: str) -> float:
    value = s.number(name)
    if value <= 0:
        raise ConfigError(path, f"{s.key}.{name}", "a number > 0", value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
