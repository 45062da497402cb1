"""Gateway API keys: made here, stored only as hashes in the tenant policy (``api_keys``),
and looked up by hash, so neither a policy, a log nor ClickHouse ever holds a usable key.

A key is random (256 bits) and high-entropy, so a plain SHA-256 is the right hash: a slow
password hash protects guessable secrets, and would cost every request milliseconds."""

from __future__ import annotations

import hashlib
import logging
import secrets

from pipeline.events.codec import Codec
from pipeline.events.models import TenantPolicy
from pipeline.tenancy.directory import put_policy, read_policies

log = logging.getLogger("llmpipe.gateway")

PREFIX = "sk-llmp-"
HASH_SCHEME = "sha256:"


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return HASH_SCHEME + hashlib.sha256(key.encode()).hexdigest()


def valid_hash(entry: str) -> bool:
    digest = entry[len(HASH_SCHEME):]
    return entry.startswith(HASH_SCHEME) and len(digest) == 64 and \
        all(c in "0123456789abcdef" for c in digest)


class KeyRing:
    """Key hash -> tenant, kept current from the tenant directory's changes."""

    def __init__(self) -> None:
        self._tenant_of: dict[str, str] = {}
        self._hashes_of: dict[str, set[str]] = {}

    def update(self, tenant: str, policy: TenantPolicy | None) -> None:
        for digest in self._hashes_of.pop(tenant, set()):
            self._tenant_of.pop(digest, None)
        if policy is None:
            return
        hashes = {h for h in policy.api_keys if valid_hash(h)}
        for digest in hashes:
            owner = self._tenant_of.get(digest)
            if owner is not None and owner != tenant:
                # one key cannot name two tenants: refuse it for both rather than guess
                log.error("api_key_conflict tenants=%s,%s: the key is disabled", owner, tenant)
                self._tenant_of[digest] = ""
                continue
            self._tenant_of[digest] = tenant
        self._hashes_of[tenant] = hashes

    def tenant(self, key: str | None) -> str | None:
        """The tenant ``key`` belongs to, or None."""
        if not key:
            return None
        tenant = self._tenant_of.get(hash_key(key))
        return tenant or None

    def __len__(self) -> int:
        return sum(1 for t in self._tenant_of.values() if t)


def bearer(header: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header."""
    scheme, _, key = (header or "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


async def add_key(bootstrap: str, topic: str, codec: Codec, tenant: str, *,
                  policy: TenantPolicy | None = None, replace: bool = False,
                  timeout_s: float = 30.0) -> tuple[str, int]:
    """A new key for ``tenant``, its hash added to the tenant's policy on the tenants topic
    (a policy with only the key if it has none; ``policy`` replaces the stored one, keeping
    its keys; ``replace`` revokes the others). Returns the key, which exists nowhere else,
    and how many keys the tenant now has."""
    key = new_key()
    stored = (await read_policies(bootstrap, topic, codec, timeout_s=timeout_s)).get(tenant)
    base = policy or stored or TenantPolicy(tenant=tenant)
    kept = [] if replace else list(dict.fromkeys((stored.api_keys if stored else [])
                                                 + base.api_keys))
    keys = kept + [hash_key(key)]
    await put_policy(bootstrap, topic, codec, base.replace(api_keys=keys), timeout_s=timeout_s)
    return key, len(keys)
