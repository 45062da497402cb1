"""Tenant policies as operators write them (YAML or JSON, keys exactly the TenantPolicy
fields) to the typed ``TenantPolicy`` published on llm.tenants, and back.

Validation happens here, before anything is published: model names are normalised through
the catalog, money becomes an exact ``Decimal``, and every error is a ``PolicyError`` whose
message starts with the key path, e.g. ``budgets[1].hard_usd: must be >= soft_usd (50 < 80)``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from pipeline.catalog import Catalog
from pipeline.context.policy import ContextPolicy, ContextPolicyError
from pipeline.kafka.topics import invalid_topic_name
from pipeline.events.models import Budget, CanaryRule, TenantPolicy

PERIODS = ("day", "week", "month")
USD_PLACES = 9                          # the Avro decimal's scale (nano-dollars)
USD_LIMIT = Decimal(10) ** 9            # precision 18 - scale 9 digits before the point
INT_MAX = 2**31 - 1                     # Avro int

POLICY_KEYS = tuple(f.name for f in dataclasses.fields(TenantPolicy))
BUDGET_KEYS = tuple(f.name for f in dataclasses.fields(Budget))
CANARY_KEYS = tuple(f.name for f in dataclasses.fields(CanaryRule))

_POLICY_DEFAULTS = TenantPolicy(tenant="-")
_CANARY_DEFAULTS = CanaryRule(name="-", percent=0, model="-")


class PolicyError(ValueError):
    """An invalid policy document. ``key`` is the path of the offending value
    (``budgets[1].hard_usd``, ``<root>`` for the document itself)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


# --- reading -------------------------------------------------------------------------------

def policy_from_mapping(data: Any, catalog: Catalog, *, tenant: str | None = None) -> TenantPolicy:
    """Validate a YAML/JSON-shaped policy and build the TenantPolicy it describes.

    ``tenant``, when given, is the tenant being configured: the document may omit its
    ``tenant`` key, and must agree with it if it has one. ``updated_at_ms`` is accepted
    (so ``policy_to_mapping`` output round-trips) but the writer stamps its own.
    """
    if not isinstance(data, dict):
        raise PolicyError("<root>", f"must be a mapping of policy keys, got {_kind(data)}")
    _no_unknown_keys(data, POLICY_KEYS, "")

    policy_tenant = _tenant(data, tenant)
    allowed = _models(data.get("allowed_models", []), catalog, "allowed_models")
    denied = _models(data.get("denied_models", []), catalog, "denied_models")
    for i, model in enumerate(denied):
        if model in allowed:
            raise PolicyError(f"denied_models[{i}]", f"{model!r} is also in allowed_models")

    quality = data.get("default_quality")
    if quality is not None:
        quality = _fraction(quality, "default_quality")
    baseline = data.get("baseline_model")
    if baseline is not None:
        baseline = _model(baseline, catalog, "baseline_model")

    budgets = _budgets(data.get("budgets", []))
    canary = data.get("canary")
    if canary is not None:
        canary = _canary(canary, catalog, allowed, denied)

    return TenantPolicy(
        tenant=policy_tenant,
        allowed_models=allowed,
        denied_models=denied,
        default_quality=quality,
        baseline_model=baseline,
        budgets=budgets,
        canary=canary,
        truncation_allowed=_bool(data, "truncation_allowed", _POLICY_DEFAULTS.truncation_allowed),
        cache_enabled=_bool(data, "cache_enabled", _POLICY_DEFAULTS.cache_enabled),
        cache_ttl_s=_int(data, "cache_ttl_s", "", _POLICY_DEFAULTS.cache_ttl_s, minimum=1),
        cache_kinds=_cache_kinds(data.get("cache_kinds", [])),
        cache_max_entries=_int(data, "cache_max_entries", "", _POLICY_DEFAULTS.cache_max_entries,
                               minimum=1),
        cache_threshold=float(_fraction(data.get("cache_threshold",
                                                 _POLICY_DEFAULTS.cache_threshold),
                                        "cache_threshold")),
        context=_context(data.get("context")),
        updated_at_ms=_int(data, "updated_at_ms", "", 0, minimum=0, maximum=2**63 - 1),
        reply_topics=_reply_topics(data.get("reply_topics", [])),
        api_keys=_api_keys(data.get("api_keys", [])),
    )


def parse_policy_text(text: str, catalog: Catalog, *, tenant: str | None = None,
                      fmt: str = "yaml", source: str = "") -> TenantPolicy:
    """A policy from YAML or JSON text. JSON numbers are read as Decimal so money stays
    exact; YAML floats go through their shortest repr (``80.1`` stays 80.1). A syntax error
    is a PolicyError on ``<root>``; ``source`` (a file name) prefixes every message."""
    try:
        if fmt == "json":
            data = json.loads(text, parse_float=Decimal)
        else:
            data = yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise _located(PolicyError("<root>", f"not valid {fmt.upper()}: {exc}"), source) from None
    try:
        return policy_from_mapping(data, catalog, tenant=tenant)
    except PolicyError as exc:
        raise _located(exc, source) from None


def load_policy_file(path: str | Path, catalog: Catalog, *, tenant: str | None = None) -> TenantPolicy:
    """A policy from a ``.json`` file (JSON) or any other file (YAML, which JSON also is)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(str(path), f"cannot read the policy file: {exc.strerror or exc}") from None
    fmt = "json" if path.suffix.lower() == ".json" else "yaml"
    return parse_policy_text(text, catalog, tenant=tenant, fmt=fmt, source=str(path))


def _located(exc: PolicyError, source: str) -> PolicyError:
    return PolicyError(f"{source}: {exc.key}", exc.problem) if source else exc


def _tenant(data: dict, tenant: str | None) -> str:
    value = data.get("tenant", tenant)
    if value is None:
        raise PolicyError("tenant", "required (the tenant id the policy applies to)")
    if not isinstance(value, str) or not value.strip():
        raise PolicyError("tenant", f"must be a non-empty string, got {_kind(value)}")
    if value != value.strip():
        raise PolicyError("tenant", f"must not start or end with whitespace ({value!r})")
    if tenant is not None and value != tenant:
        raise PolicyError("tenant", f"{value!r} does not match the tenant being set ({tenant!r})")
    return value


def _models(value: Any, catalog: Catalog, key: str) -> list[str]:
    if not isinstance(value, list):
        raise PolicyError(key, f"must be a list of model names, got {_kind(value)}")
    out: list[str] = []
    for i, name in enumerate(value):
        model = _model(name, catalog, f"{key}[{i}]")
        if model not in out:            # "gpt-4" and "gpt-4.1" are one model
            out.append(model)
    return out


def _model(name: Any, catalog: Catalog, key: str) -> str:
    if not isinstance(name, str):
        raise PolicyError(key, f"must be a model name, got {_kind(name)}")
    model = catalog.resolve(name)
    if model is None:
        known = ", ".join(sorted(catalog.models))
        aliases = ", ".join(sorted(catalog.aliases))
        raise PolicyError(key, f"unknown model {name!r} (models: {known}; aliases: {aliases})")
    return model


def _cache_kinds(value: Any) -> list[str]:
    kinds = ("exact", "semantic")
    if not isinstance(value, list) or any(k not in kinds for k in value):
        raise PolicyError("cache_kinds", f"must be a list of {', '.join(kinds)}, got {value!r}")
    return list(dict.fromkeys(value))


def _context(value: Any) -> str:
    """The context policy, stored in its override form: a mapping of ContextPolicy's
    fields, or that form itself ("normalise,top_k=4"); "" when every strategy is off."""
    try:
        policy = (ContextPolicy.parse(value) if isinstance(value, str)
                  else ContextPolicy.from_mapping(value))
    except ContextPolicyError as exc:
        key = exc.key if exc.key.startswith("context") else "context"
        raise PolicyError(key, exc.problem) from None
    return policy.to_override() if policy.enabled else ""


def _reply_topics(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise PolicyError("reply_topics", f"must be a list of topic names, got {_kind(value)}")
    for i, entry in enumerate(value):
        name = entry[:-1] if isinstance(entry, str) and entry.endswith("*") else entry
        why = invalid_topic_name(name) if isinstance(name, str) else f"got {_kind(entry)}"
        if why:
            raise PolicyError(f"reply_topics[{i}]", f"must be a topic name or a prefix ending in *: {why}")
    return list(value)


def _api_keys(value: Any) -> list[str]:
    """Key hashes only: a policy never holds a usable key (``llmpipe tenants key`` makes a
    key and stores its hash)."""
    if not isinstance(value, list):
        raise PolicyError("api_keys", f"must be a list of key hashes, got {_kind(value)}")
    for i, entry in enumerate(value):
        if not isinstance(entry, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", entry):
            raise PolicyError(f"api_keys[{i}]", "must be 'sha256:' + 64 lowercase hex digits "
                              "(the hash of a key, never the key itself; `llmpipe tenants key "
                              "TENANT` makes a key and stores its hash)")
    return list(dict.fromkeys(value))


def _budgets(value: Any) -> list[Budget]:
    if not isinstance(value, list):
        raise PolicyError("budgets", f"must be a list of budgets, got {_kind(value)}")
    budgets: list[Budget] = []
    seen: dict[tuple[str, str | None], int] = {}
    for i, item in enumerate(value):
        where = f"budgets[{i}]"
        if not isinstance(item, dict):
            raise PolicyError(where, f"must be a mapping with period, team, soft_usd, hard_usd, "
                                     f"got {_kind(item)}")
        _no_unknown_keys(item, BUDGET_KEYS, where)
        period = item.get("period")
        if period not in PERIODS:
            problem = "required" if period is None else f"{period!r} is not a period"
            raise PolicyError(f"{where}.period", f"{problem}: one of {', '.join(PERIODS)}")
        team = item.get("team")
        if team is not None and (not isinstance(team, str) or not team.strip()):
            raise PolicyError(f"{where}.team", f"must be a non-empty string or null, got {_kind(team)}")
        soft = _usd(item.get("soft_usd"), f"{where}.soft_usd")
        hard = _usd(item.get("hard_usd"), f"{where}.hard_usd")
        if soft is None and hard is None:
            raise PolicyError(where, "set soft_usd, hard_usd or both")
        if soft is not None and hard is not None and hard < soft:
            raise PolicyError(f"{where}.hard_usd",
                              f"must be >= soft_usd ({usd_str(hard)} < {usd_str(soft)})")
        if (period, team) in seen:
            raise PolicyError(where, f"repeats budgets[{seen[period, team]}] (period {period}, "
                                     f"team {team or 'whole tenant'}): one budget per period and team")
        seen[period, team] = i
        budgets.append(Budget(period=period, team=team, soft_usd=soft, hard_usd=hard))
    return budgets


def _usd(value: Any, key: str) -> Decimal | None:
    """Money from a string or number, exactly: ``Decimal(str(x))``, never via binary floats."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise PolicyError(key, f"must be an amount in USD (a number or a string), got {_kind(value)}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise PolicyError(key, f"{value!r} is not an amount in USD") from None
    if not amount.is_finite():
        raise PolicyError(key, f"must be a finite amount, got {value!r}")
    if amount < 0:
        raise PolicyError(key, f"must be >= 0, got {usd_str(amount)}")
    if amount >= USD_LIMIT:
        raise PolicyError(key, f"must be < {USD_LIMIT}, got {usd_str(amount)}")
    if amount != amount.quantize(Decimal(1).scaleb(-USD_PLACES)):
        raise PolicyError(key, f"at most {USD_PLACES} decimal places (nano-dollars), got {value!r}")
    return amount + 0                   # drops the sign of -0


def _canary(value: Any, catalog: Catalog, allowed: list[str], denied: list[str]) -> CanaryRule:
    if not isinstance(value, dict):
        raise PolicyError("canary", f"must be a mapping or null, got {_kind(value)}")
    _no_unknown_keys(value, CANARY_KEYS, "canary")
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PolicyError("canary.name", "required: a non-empty string" if name is None
                          else f"must be a non-empty string, got {_kind(name)}")
    if "percent" not in value:
        raise PolicyError("canary.percent", "required: the share of end users (0..100)")
    percent = _int(value, "percent", "canary.", None, minimum=0, maximum=100)
    if "model" not in value:
        raise PolicyError("canary.model", "required: the model the canary arm is routed to")
    model = _model(value["model"], catalog, "canary.model")
    if model in denied:
        raise PolicyError("canary.model", f"{model!r} is in denied_models")
    if allowed and model not in allowed:
        raise PolicyError("canary.model", f"{model!r} is not in allowed_models")
    success = value.get("min_success_rate", _CANARY_DEFAULTS.min_success_rate)
    min_samples = _int(value, "min_samples", "canary.", _CANARY_DEFAULTS.min_samples, minimum=1)
    window = _int(value, "window", "canary.", _CANARY_DEFAULTS.window, minimum=1)
    if window < min_samples:
        raise PolicyError("canary.window", f"must be >= min_samples ({window} < {min_samples})")
    return CanaryRule(
        name=name, percent=percent, model=model,
        min_success_rate=_fraction(success, "canary.min_success_rate"),
        max_p95_ms=_int(value, "max_p95_ms", "canary.", _CANARY_DEFAULTS.max_p95_ms, minimum=1),
        min_samples=min_samples, window=window)


def _no_unknown_keys(data: dict, allowed: tuple[str, ...], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise PolicyError(where, f"unknown key; expected one of {', '.join(allowed)}")


def _bool(data: dict, key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise PolicyError(key, f"must be true or false, got {_kind(value)}")
    return value


def _int(data: dict, key: str, prefix: str, default: int | None, *, minimum: int,
         maximum: int = INT_MAX) -> int:
    value = data.get(key, default)
    where = f"{prefix}{key}"
    if isinstance(value, Decimal) and value == value.to_integral_value():
        value = int(value)              # JSON read with parse_float=Decimal: 500.0
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(where, f"must be an integer, got {_kind(value)}")
    if not minimum <= value <= maximum:
        bound = f">= {minimum}" if maximum == INT_MAX else f"in {minimum}..{maximum}"
        raise PolicyError(where, f"must be {bound}, got {value}")
    return value


def _fraction(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise PolicyError(key, f"must be a number in 0..1, got {_kind(value)}")
    if not 0 <= value <= 1:
        raise PolicyError(key, f"must be in 0..1, got {value}")
    return float(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return f"{type(value).__name__} {value!r}"


# --- writing -------------------------------------------------------------------------------

def usd_str(amount: Decimal) -> str:
    """``Decimal('80.000000000')`` -> ``'80'``: plain notation, no trailing zeros."""
    text = format(amount, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def describe_policy(p: TenantPolicy) -> str:
    """The policy's constraints in one line ("" when it has none): budgets, canary, default
    quality, allowed and denied models, truncation."""
    parts = [" ".join([b.period] + [f"{level} ${usd_str(limit)}" for level, limit in
                                    (("soft", b.soft_usd), ("hard", b.hard_usd)) if limit is not None]
                      + ([f"team {b.team}"] if b.team else []))
             for b in p.budgets]
    if p.canary:
        parts.append(f"canary {p.canary.percent}% -> {p.canary.model}")
    if p.default_quality is not None:
        parts.append(f"default quality {p.default_quality}")
    if p.allowed_models:
        parts.append("allowed " + ", ".join(p.allowed_models))
    if p.denied_models:
        parts.append("denied " + ", ".join(p.denied_models))
    if p.truncation_allowed:
        parts.append("truncation allowed")
    return "; ".join(parts)


def policy_to_mapping(policy: TenantPolicy) -> dict[str, Any]:
    """The policy as a plain mapping (money as strings), in field order; it round-trips
    through ``policy_from_mapping`` and dumps as YAML or JSON unchanged."""
    out = policy.to_dict()
    out["budgets"] = [
        {**b, "soft_usd": None if b["soft_usd"] is None else usd_str(b["soft_usd"]),
         "hard_usd": None if b["hard_usd"] is None else usd_str(b["hard_usd"])}
        for b in out["budgets"]]
    return out
