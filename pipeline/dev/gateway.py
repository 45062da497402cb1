"""The HTTP gateway on the embedded stack: a `llmpipe gateway` child process and the API
keys to call it with. Used by `llmpipe dev`, `llmpipe bench gateway` and the tests."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipeline.dev.stack import DevStack, StackError, _run_sync
from pipeline.events.codec import Codec
from pipeline.events.models import TenantPolicy
from pipeline.gateway.keys import add_key


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
    key, _ = _run_sync(add_key(stack.bootstrap, stack.topics.tenants, Codec(), tenant,
                               policy=policy))
    return key


def demo_calls(gateway: GatewayProcess, key: str, model: str = "gpt-4o-mini"
               ) -> tuple[list[str], list[str]]:
    """A few calls through the gateway as an OpenAI client makes them: plain, streamed,
    a bad key, an unknown model. Returns lines to print and the request ids answered."""
    auth = {"authorization": f"Bearer {key}"}
    url = f"{gateway.base_url}/chat/completions"
    prompt = [{"role": "user", "content": "Explain in two sentences why caching saves money."}]
    lines, ids = [], []
    started = time.monotonic()
    resp = httpx.post(url, json={"model": model, "messages": prompt}, headers=auth, timeout=60)
    took = (time.monotonic() - started) * 1000
    if resp.status_code == 200:
        ids.append(resp.headers["x-llmpipe-request-id"])
        usage = resp.json()["usage"]
        lines.append(f"  plain     200 in {took:,.0f} ms, {usage['prompt_tokens']} + "
                     f"{usage['completion_tokens']} tokens")
    else:
        lines.append(f"  plain     {resp.status_code}: {resp.text[:200]}")
    started = time.monotonic()
    first_ms, events = None, 0
    body = {"model": model, "messages": prompt, "stream": True}
    # the same question as the plain call: no-cache, so it streams from the provider
    # rather than coming whole from the cache (the repeat below shows the cache)
    with httpx.stream("POST", url, json=body, headers={**auth, "cache-control": "no-cache"},
                      timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: ") and '"content":"' in line.replace(" ", "") and \
                    '"content":""' not in line.replace(" ", ""):
                first_ms = first_ms or (time.monotonic() - started) * 1000
                events += 1
        if stream.status_code == 200:
            ids.append(stream.headers["x-llmpipe-request-id"])
    total = (time.monotonic() - started) * 1000
    lines.append(f"  streamed  {stream.status_code}: {events} content events, first after "
                 f"{first_ms or 0:,.0f} ms, done after {total:,.0f} ms")
    lines += _feature_calls(gateway, auth, model, ids)
    lines.append(_context_call(gateway, auth, model, ids))
    lines.append(_repeat(url, auth, {"model": model, "messages": prompt}, ids))
    for what, headers, payload in (
            ("bad key", {"authorization": "Bearer sk-llmp-wrong"}, {"model": model}),
            ("unknown model", auth, {"model": "gpt-9"})):
        resp = httpx.post(url, json={**payload, "messages": prompt}, headers=headers, timeout=60)
        error = resp.json().get("error", {})
        lines.append(f"  {what:<9} {resp.status_code} {error.get('code')}: "
                     f"{error.get('message', '')[:80]}")
    return lines, ids


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
WEATHER_SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string"}, "temperature_c": {"type": "number"}},
    "required": ["city", "temperature_c"], "additionalProperties": False}


def _feature_calls(gateway: GatewayProcess, auth: dict[str, str], model: str,
                   ids: list[str]) -> list[str]:
    """A forced tool call, a json_schema answer and an embedding: the chat API beyond text."""
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    calls = (
        ("tool call", "chat/completions",
         {"model": model, "messages": ask, "tools": [WEATHER_TOOL],
          "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
         lambda b: "get_weather(" + b["choices"][0]["message"]["tool_calls"][0]["function"]
         ["arguments"] + ")"),
        ("json", "chat/completions",
         {"model": model, "messages": ask, "response_format": {
             "type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA,
                                                    "strict": True}}},
         lambda b: b["choices"][0]["message"]["content"]),
        ("embedding", "embeddings",
         {"model": "text-embedding-3-small", "input": ["where is my parcel", "我的包裹在哪里"]},
         lambda b: f"{len(b['data'])} vectors of {len(b['data'][0]['embedding'])} dimensions"),
    )
    lines = []
    for what, path, body, show in calls:
        resp = httpx.post(f"{gateway.base_url}/{path}", json=body, headers=auth, timeout=60)
        if resp.status_code == 200:
            ids.append(resp.headers["x-llmpipe-request-id"])
            lines.append(f"  {what:<9} 200: {show(resp.json())[:90]}")
        else:
            lines.append(f"  {what:<9} {resp.status_code}: {resp.text[:200]}")
    return lines


def _context_call(gateway: GatewayProcess, auth: dict[str, str], model: str,
                  ids: list[str]) -> str:
    """A RAG question with its retrieved passages (``name: retrieved``) sent with context
    management asked for in a header: what it removed comes back in the same header."""
    import random

    from pipeline.context.workload import DEFAULT_SEED, rag_case

    case = rag_case(random.Random(DEFAULT_SEED), 0, "en")
    messages = [{"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
                for m in case.messages]
    resp = httpx.post(f"{gateway.base_url}/chat/completions", timeout=60,
                      json={"model": model, "messages": messages},
                      headers={**auth, "x-llmpipe-context": "normalise,top_k=4"})
    if resp.status_code != 200:
        return f"  context   {resp.status_code}: {resp.text[:200]}"
    ids.append(resp.headers["x-llmpipe-request-id"])
    return f"  context   200: {resp.headers.get('x-llmpipe-context', '(nothing removed)')[:150]}"


def _repeat(url: str, auth: dict[str, str], body: dict, ids: list[str],
            wait_s: float = 10.0) -> str:
    """The plain call again: the demo tenant has the exact cache on, so once the first
    answer has been kept, the same question is answered from the cache."""
    deadline = time.monotonic() + wait_s
    while True:
        started = time.monotonic()
        resp = httpx.post(url, json=body, headers=auth, timeout=60)
        took = (time.monotonic() - started) * 1000
        if resp.status_code != 200:
            return f"  repeat    {resp.status_code}: {resp.text[:200]}"
        ids.append(resp.headers["x-llmpipe-request-id"])
        cache = resp.headers.get("x-llmpipe-cache")
        if cache or time.monotonic() > deadline:
            return (f"  repeat    200 in {took:,.0f} ms, "
                    + (f"from the cache ({cache}), cost 0" if cache else "not cached yet"))
        time.sleep(0.3)
