"""API keys: read from the environment or a file, validated at start-up, never printed.

``Secret`` hides its value from repr/str/format so a key cannot leak into a log line,
an exception message or an event by accident; only ``reveal()`` gives it to the adapter
that puts it in an HTTP header.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MIN_KEY_LENGTH = 16


class SecretError(ValueError):
    pass


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self._value.encode()).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"Secret(sha256:{self.fingerprint})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self):
        raise TypeError("secrets are not picklable")


def load_secret(env_var: str | None, file_path: str | None, owner: str,
                env: dict[str, str] | None = None) -> Secret:
    """The key named by ``env_var`` or stored in ``file_path`` (first line), validated."""
    env = os.environ if env is None else env
    value = None
    if file_path:
        try:
            value = Path(file_path).read_text().strip()
        except OSError as exc:
            raise SecretError(f"{owner}: cannot read API key file {file_path}: {exc.strerror}") from None
    elif env_var:
        value = env.get(env_var, "").strip()
        if not value:
            raise SecretError(f"{owner}: API key variable {env_var} is not set")
    else:
        raise SecretError(f"{owner}: neither api_key_env nor api_key_file is configured")
    if len(value) < MIN_KEY_LENGTH or any(c.isspace() for c in value):
        raise SecretError(f"{owner}: the API key from {env_var or file_path} is not plausible "
                          f"(expected at least {MIN_KEY_LENGTH} characters, no spaces)")
    return Secret(value)
