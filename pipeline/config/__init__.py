"""Configuration is data: YAML files in this directory (or $LLMPIPE_CONFIG_DIR), loaded
once into typed objects. Errors name the file, the key and what was expected."""

from __future__ import annotations

import os
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from pipeline.paths import config_dir


class ConfigError(ValueError):
    def __init__(self, path: Path | str, key: str, expected: str, got: Any = None):
        self.path, self.key = str(path), key
        detail = f" (got {got!r})" if got is not None else ""
        super().__init__(f"{path}: {key}: expected {expected}{detail}")


def config_path(name: str) -> Path:
    return config_dir() / name


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(path, "<file>", "an existing YAML file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, "<file>", f"valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "<root>", "a mapping")
    return data


class Section:
    """Typed access to one mapping of a config file, remembering where it is."""

    def __init__(self, path: Path, key: str, data: Any):
        if not isinstance(data, dict):
            raise ConfigError(path, key or "<root>", "a mapping", data)
        self.path, self.key, self.data = path, key, data

    def where(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = ...) -> Any:
        if name not in self.data:
            if default is ...:
                raise ConfigError(self.path, self.where(name), "a value (missing)")
            return default
        return self.data[name]

    def section(self, name: str) -> "Section":
        return Section(self.path, self.where(name), self.raw(name))

    def str(self, name: str, default: Any = ...) -> str:
        value = self.raw(name, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(self.path, self.where(name), "a non-empty string", value)
        return value

    def int(self, name: str, default: Any = ..., minimum: int | None = None) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.path, self.where(name), "an integer", value)
        if minimum is not None and value < minimum:
            raise ConfigError(self.path, self.where(name), f"an integer >= {minimum}", value)
        return value

    def bool(self, name: str, default: Any = ...) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise ConfigError(self.path, self.where(name), "true or false", value)
        return value

    def number(self, name: str, default: Any = ...) -> float:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(self.path, self.where(name), "a number", value)
        return float(value)

    def decimal(self, name: str, default: Any = ..., minimum: Decimal | None = Decimal(0)) -> Decimal:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(self.path, self.where(name), "a decimal number", value)
        try:
            dec = Decimal(str(value))
        except InvalidOperation:
            raise ConfigError(self.path, self.where(name), "a decimal number", value) from None
        if not dec.is_finite() or (minimum is not None and dec < minimum):
            raise ConfigError(self.path, self.where(name), f"a decimal >= {minimum}", value)
        return dec

    def str_list(self, name: str, default: Any = ...) -> list[str]:
        value = self.raw(name, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(self.path, self.where(name), "a list of strings", value)
        return list(value)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: dict[str, str] | None = None) -> str:
    """Expand ${VAR} and ${VAR:-default}; an unset VAR without default is an error."""
    env = os.environ if env is None else env

    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is None:
            raise KeyError(name)
        return default

    return _VAR.sub(sub, text)
