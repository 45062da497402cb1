"""Where the repository's data directories live (schemas, topics, config)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def data_dir(name: str, env: str) -> Path:
    """A top-level data directory (``schemas``, ``topics``), overridable by ``env``."""
    override = os.environ.get(env)
    if override:
        return Path(override)
    for candidate in (REPO_DIR / name, PACKAGE_DIR / "_data" / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"cannot find the {name}/ directory (set {env})")


def schemas_dir() -> Path:
    return data_dir("schemas", "LLMPIPE_SCHEMAS_DIR")


def config_dir() -> Path:
    return Path(os.environ.get("LLMPIPE_CONFIG_DIR") or PACKAGE_DIR / "config")
