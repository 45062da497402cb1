"""The HTTP gateway on the embedded stack: a `llmpipe gateway` child process and the API
keys to call it with. Used by `llmpipe dev`, `llmpipe bench gateway` and the tests."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipeline.dev.stack import DevStack, StackError, _run_sync
from pipeline.events.codec import Codec
from pipeline.events.models import TenantPolicy
from pipeline.gateway.keys import hash_key, new_key
from pipeline.tenancy.directory import put_policy, read_policies


@dataclass
class GatewayProcess:
    instance: str
    url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def base_url(self) -> str:
        """What an OpenAI SDK takes as ``base_url``."""
        return f"{self.url}/v1"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_gateway(stack: DevStack, instance: str = "gw-1", **overrides) -> GatewayProcess:
    """A gateway on a free loopback port; returns once it is healthy (keys loaded)."""
    settings = stack.settings(**overrides)
    log_path = stack.data_dir / f"gateway-{instance}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "gateway", "--port", "0", "--instance", instance],
        env=stack.worker_env(settings), stdout=subprocess.PIPE,
        stderr=open(log_path, "ab"), start_new_session=True)
    stack.children.append(process)
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    if "listening on " not in line:
        raise StackError(f"gateway {instance} did not start (said {line!r}); see {log_path}")
    gateway = GatewayProcess(instance, line.rsplit(" ", 1)[-1], process, log_path)
    resp = httpx.get(f"{gateway.url}/healthz", timeout=10)
    if resp.status_code != 200:
        raise StackError(f"gateway {instance} is not healthy: {resp.text}")
    return gateway


def issue_key(stack: DevStack, tenant: str, policy: TenantPolicy | None = None) -> str:
    """A new API key for ``tenant``, its hash added to the tenant's policy (``policy``
    replaces the stored one, keeping its keys)."""
    key = new_key()

    async def put() -> None:
        codec = Codec()
        stored = (await read_policies(stack.bootstrap, stack.topics.tenants, codec)).get(tenant)
        base = policy or stored or TenantPolicy(tenant=tenant)
        keys = (stored.api_keys if stored else []) + base.api_keys
        await put_policy(stack.bootstrap, stack.topics.tenants, codec,
                         base.replace(api_keys=list(dict.fromkeys(keys + [hash_key(key)]))))

    _run_sync(put())
    return key
