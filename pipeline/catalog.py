"""The model catalog: logical models, their prices and limits, aliases, and exact cost.

Money is integer nano-dollars (1e-9 USD). A price of P USD per million tokens is
P * 1000 nano-dollars per token, so costs are exact for prices with up to three decimals
of a dollar per MTok; finer prices are rounded half-even to the nano-dollar per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

from pipeline.config import ConfigError, Section, config_path, load_yaml

CHAT, EMBEDDING = "chat", "embedding"           # Model.kind
# What a chat request may need of its model (routing only picks a model that has them all):
# tools and tool calls, json_object / json_schema response formats, image parts, n > 1
# (served by fanning out where the provider has no n), logprobs, parallel_tool_calls,
# presence/frequency penalties.
FEATURES = ("tools", "json_object", "json_schema", "vision", "n", "logprobs",
            "parallel_tool_calls", "penalties")

NANOS_PER_USD = 10**9
TOKENS_PER_MTOK = 10**6


@dataclass(frozen=True)
class Model:
    name: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    batch_discount: Decimal          # fraction off for provider Batch APIs, 0..1
    context_window: int
    max_output_tokens: int
    quality: float
    typical_latency_ms: int
    kind: str = CHAT
    features: frozenset[str] = frozenset()
    dimensions: int = 0              # an embedding model's vector size

    def lacks(self, needed: frozenset[str]) -> list[str]:
        """The features of ``needed`` this model does not have, sorted."""
        return sorted(needed - self.features)


@dataclass(frozen=True)
class Catalog:
    models: dict[str, Model]
    aliases: dict[str, str]
    price_version: str
    effective_date: str
    baseline_model: str

    def resolve(self, name: str) -> str | None:
        """Normalise a model name or alias to a logical model, None if unknown."""
        key = name.strip().lower()
        key = self.aliases.get(key, key)
        return key if key in self.models else None

    def model(self, name: str) -> Model:
        resolved = self.resolve(name)
        if resolved is None:
            raise KeyError(f"unknown model {name!r}")
        return self.models[resolved]

    def cost_nanos(self, model: str, prompt_tokens: int, completion_tokens: int,
                   cached_tokens: int = 0, batch: bool = False) -> int:
        """Exact cost in nano-dollars. Cached tokens are part of prompt_tokens (OpenAI
        semantics) and are billed at the cached-input price instead of the input price."""
        m = self.model(model)
        if min(prompt_tokens, completion_tokens, cached_tokens) < 0:
            raise ValueError("token counts must not be negative")
        cached = min(cached_tokens, prompt_tokens)
        usd = ((prompt_tokens - cached) * m.input_per_mtok
               + cached * m.cached_input_per_mtok
               + completion_tokens * m.output_per_mtok) / TOKENS_PER_MTOK
        if batch:
            usd *= 1 - m.batch_discount
        return int((usd * NANOS_PER_USD).to_integral_value(ROUND_HALF_EVEN))


def nanos_to_usd(nanos: int) -> Decimal:
    return Decimal(nanos).scaleb(-9)


def load_catalog(path: Path | None = None) -> Catalog:
    path = path or config_path("catalog.yaml")
    root = Section(path, "", load_yaml(path))
    models: dict[str, Model] = {}
    for name in root.section("models").data:
        s = root.section("models").section(name)
        model = Model(
            name=name,
            input_per_mtok=s.decimal("input_per_mtok"),
            output_per_mtok=s.decimal("output_per_mtok"),
            cached_input_per_mtok=s.decimal("cached_input_per_mtok"),
            batch_discount=s.decimal("batch_discount", "0"),
            context_window=s.int("context_window", minimum=1),
            max_output_tokens=s.int("max_output_tokens", minimum=1),
            quality=s.number("quality"),
            typical_latency_ms=s.int("typical_latency_ms", minimum=0),
            kind=_kind(path, name, s.raw("kind", CHAT)),
            features=frozenset(_features(path, name, s.raw("features", []) or [])),
            dimensions=s.int("dimensions", 0, minimum=0),
        )
        if model.kind == EMBEDDING and model.dimensions < 1:
            raise ConfigError(path, f"models.{name}.dimensions", "the vector size of an "
                              "embedding model", model.dimensions)
        if not Decimal(0) <= model.batch_discount <= 1:
            raise ConfigError(path, f"models.{name}.batch_discount", "a fraction 0..1",
                              str(model.batch_discount))
        if not 0 <= model.quality <= 1:
            raise ConfigError(path, f"models.{name}.quality", "a score 0..1", model.quality)
        models[name] = model
    aliases = {}
    for alias, target in (root.raw("aliases", {}) or {}).items():
        if target not in models:
            raise ConfigError(path, f"aliases.{alias}", f"one of the models {sorted(models)}", target)
        aliases[str(alias).lower()] = target
    baseline = root.str("baseline_model")
    if baseline not in models:
        raise ConfigError(path, "baseline_model", f"one of the models {sorted(models)}", baseline)
    return Catalog(models, aliases, root.str("price_version"), str(root.raw("effective_date")),
                   baseline)


def _features(path: Path, name: str, raw: object) -> list[str]:
    if not isinstance(raw, list) or any(f not in FEATURES for f in raw):
        raise ConfigError(path, f"models.{name}.features", f"a list of {', '.join(FEATURES)}",
                          raw)
    return raw


def _kind(path: Path, name: str, raw: object) -> str:
    if raw not in (CHAT, EMBEDDING):
        raise ConfigError(path, f"models.{name}.kind", f"{CHAT} or {EMBEDDING}", raw)
    return str(raw)
