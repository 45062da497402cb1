"""The embedded stack on loopback: Tansu broker, provider simulator, topics, ClickHouse
(chDB, owned by the worker process that runs the ledger) and pipeline workers as child
processes. Used by `llmpipe dev`, `llmpipe bench` and the integration tests."""

from __future__ import annotations

import asyncio
import copy
import os
import secrets as _secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import httpx
import yaml

from pipeline.embedded.broker import EmbeddedBroker
from pipeline.embedded.ports import free_port
from pipeline.events.codec import Codec, DecodeError
from pipeline.events.models import (Alert, Batch, DeadLetter, Event, Request, Response,
                                    RoutedRequest, Usage)
from pipeline.kafka import clients
from pipeline.kafka.clients import read_to_end
from pipeline.kafka.topics import apply_topics, load_topic_specs, prefixed
from pipeline.paths import config_dir as default_config_dir
from pipeline.settings import Settings, Topics

E = TypeVar("E", bound=Event)

PROVIDER_URL_VARS = ("LLMPIPE_OPENAI_BASE_URL", "LLMPIPE_ANTHROPIC_BASE_URL",
                     "LLMPIPE_GEMINI_BASE_URL", "LLMPIPE_DEEPSEEK_BASE_URL")
PROVIDER_KEY_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "DEEPSEEK_API_KEY")
#: A ledger worker is on no request's path: its fetches wait for 64 KiB or 250 ms, so it
#: reads a few large fetches a second instead of one per record or two (docs/ARCHITECTURE.md,
#: "Processes and scaling out"). deploy/ sets the same for its ledger workers.
LEDGER_FETCH = {"fetch_max_wait_ms": 250, "fetch_min_bytes": 64 * 1024}


class StackError(RuntimeError):
    pass


@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    web_port: int
    log_path: Path
    agents: tuple[str, ...]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def health(self) -> dict:
        """The worker's /llmpipe/health/ view: app id, agents, assigned partitions."""
        resp = httpx.get(f"{self.url}/llmpipe/health/", timeout=10)
        resp.raise_for_status()
        return resp.json()

    # --- the ledger's read views (the worker owns the chDB path) -------------------------

    def _ledger(self, view: str, request_ids: list[str]) -> dict:
        resp = httpx.post(f"{self.url}/llmpipe/ledger/{view}/", json={"request_ids": request_ids},
                          timeout=60)
        resp.raise_for_status()
        return resp.json()

    def usage_counts(self, request_ids: list[str]) -> dict[str, int]:
        """Usage rows per request id, after deduplication."""
        return self._ledger("counts", request_ids)["counts"]

    def usage_rows(self, request_ids: list[str]) -> list[dict]:
        return self._ledger("usage", request_ids)["rows"]

    def usage_totals(self, request_ids: list[str]) -> dict:
        """Rows, distinct ids and cost of these requests ("final" and "raw"), and the
        ledger sinks' state ("sinks": pending rows, failures, ...)."""
        return self._ledger("totals", request_ids)

    def wait_for_usage(self, request_ids: list[str], timeout: float = 60.0) -> dict[str, int]:
        """Poll until every request id has a usage row (or the timeout); the last counts."""
        deadline = time.monotonic() + timeout
        counts = self.usage_counts(request_ids)
        while not all(counts.get(r, 0) >= 1 for r in request_ids) and time.monotonic() < deadline:
            time.sleep(0.3)
            counts = self.usage_counts(request_ids)
        return counts

    def spend(self, tenant: str, detail: bool = False) -> dict:
        """The tenant's budget state on this worker: {"rows": [...], "policy": bool} and,
        with ``detail``, "admissions" per request id."""
        params = {"tenant": tenant, **({"detail": "1"} if detail else {})}
        resp = httpx.get(f"{self.url}/llmpipe/tenancy/spend/", params=params, timeout=30)
        resp.raise_for_status()
        return resp.json()

    def report(self, since_ms: int) -> str:
        resp = httpx.get(f"{self.url}/llmpipe/ledger/report/", params={"since_ms": since_ms}, timeout=60)
        resp.raise_for_status()
        return resp.json()["text"]

    def dispatch_health(self) -> dict:
        """This worker's deployment guards: {"deployments": {id: {"breaker": ..., "limits":
        ..., "health": ...}}, "partitions": {id: llm.routed partition}}."""
        resp = httpx.get(f"{self.url}/llmpipe/dispatch/health/", timeout=30)
        resp.raise_for_status()
        return resp.json()

    def batcher_stats(self) -> dict:
        """This worker's micro-batcher: open windows and, per priority, batches, sizes, fill
        reasons and added wait (GET /llmpipe/batcher/stats/)."""
        resp = httpx.get(f"{self.url}/llmpipe/batcher/stats/", timeout=10)
        resp.raise_for_status()
        return resp.json()

    def breaker_state(self, deployment: str) -> str | None:
        """``closed``/``open``/``half_open``, or None if this worker has no guard for it."""
        guard = self.dispatch_health()["deployments"].get(deployment)
        return guard["breaker"]["state"] if guard else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class DevStack:
    data_dir: Path
    kafka_port: int = 0
    topic_prefix: str = ""
    app_id: str = "llmpipe"
    simulator_args: list[str] = field(default_factory=list)
    session_timeout_s: float = 6.0
    fresh: bool = True
    broker: EmbeddedBroker | None = None
    simulator: subprocess.Popen | None = None
    simulator_url: str = ""
    workers: list[Worker] = field(default_factory=list)
    children: list[subprocess.Popen] = field(default_factory=list)   # gateways, stopped first
    provider_keys: dict[str, str] = field(default_factory=dict)
    extra_key_vars: tuple[str, ...] = ()        # more key variables a config dir names
    owns_broker: bool = True
    # Workers read their YAML configuration here (LLMPIPE_CONFIG_DIR); None: the packaged
    # config. See write_config_dir for a copy with some settings changed.
    config_dir: Path | None = None

    # --- lifecycle --------------------------------------------------------------------

    def start(self, broker: EmbeddedBroker | None = None) -> "DevStack":
        if self.fresh and self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.owns_broker = broker is None
        self.broker = broker or EmbeddedBroker(self.kafka_port, self.data_dir / "broker.log").start()
        # Fresh fake keys per stack: nothing secret-shaped lives in the code. The simulator
        # accepts these and no others (401 otherwise), as a provider checks its keys.
        self.provider_keys = {var: f"sk-dev-{_secrets.token_hex(16)}"
                              for var in PROVIDER_KEY_VARS + self.extra_key_vars}
        self.start_simulator()
        _run_sync(self.apply_topics())
        return self

    def start_simulator(self) -> None:
        log = open(self.data_dir / "simulator.log", "ab")
        self.simulator = subprocess.Popen(
            [sys.executable, "-m", "pipeline.simulator", "--port", "0", *self.simulator_args],
            stdout=subprocess.PIPE, stderr=log, start_new_session=True,
            env={**os.environ, "LLMPIPE_SIM_KEYS": ",".join(self.provider_keys.values())})
        assert self.simulator.stdout is not None
        line = self.simulator.stdout.readline().decode().strip()
        if "listening on " not in line:
            self.stop()
            raise StackError(f"provider simulator did not start (said {line!r}); see "
                             f"{self.data_dir / 'simulator.log'}")
        self.simulator_url = line.rsplit(" ", 1)[-1]

    async def apply_topics(self):
        report = await apply_topics(self.bootstrap, prefixed(load_topic_specs(), self.topic_prefix))
        if not report.ok:
            raise StackError(report.format())
        return report

    def stop(self) -> None:
        for child in self.children:
            _terminate(child)
        self.children.clear()
        for worker in self.workers:
            _terminate(worker.process)
        self.workers.clear()
        if self.simulator:
            _terminate(self.simulator)
            self.simulator = None
        if self.broker and self.owns_broker:
            self.broker.stop()

    def __enter__(self) -> "DevStack":
        # `with stack.start():` as well as `with stack:` (starting twice would leave the
        # first broker and simulator running, unowned)
        return self if self.broker is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- properties -------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        assert self.broker is not None
        return self.broker.bootstrap

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def clickhouse_dsn(self) -> str:
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    def settings(self, **overrides) -> Settings:
        base = Settings(kafka_bootstrap=self.bootstrap, app_id=self.app_id, topics=self.topics,
                        clickhouse_dsn=self.clickhouse_dsn,
                        session_timeout_s=self.session_timeout_s)
        return base.with_(**overrides)

    def worker_env(self, settings: Settings) -> dict[str, str]:
        env = dict(os.environ)
        env.update(settings.to_env())
        env.update({var: f"{self.simulator_url}/v1" for var in PROVIDER_URL_VARS})
        env.update(self.provider_keys)
        env["PYTHONUNBUFFERED"] = "1"
        if self.config_dir is not None:
            env["LLMPIPE_CONFIG_DIR"] = str(Path(self.config_dir).resolve())
        return env

    # --- the provider simulator's control plane ----------------------------------------

    def set_faults(self, faults: dict[str, dict[str, Any]]) -> dict:
        """Replace the simulator's injected faults, by provider-side model name, e.g.
        ``{"gpt-4.1": {"kind": "server_error", "rate": 0.3, "status": 503}}``."""
        resp = httpx.put(f"{self.simulator_url}/_sim/faults", json=faults, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def clear_faults(self) -> None:
        httpx.delete(f"{self.simulator_url}/_sim/faults", timeout=10).raise_for_status()

    def simulator_stats(self) -> dict:
        """Calls per model (and per key fingerprint: counts by status, call times in ms
        since the simulator started)."""
        resp = httpx.get(f"{self.simulator_url}/_sim/stats", timeout=10)
        resp.raise_for_status()
        return resp.json()

    def simulator_requests(self) -> list[dict]:
        """The bodies of the simulator's latest chat and OpenAI embedding calls, oldest
        first (what providers received, for tests that check nothing was dropped on the
        way)."""
        resp = httpx.get(f"{self.simulator_url}/_sim/requests", timeout=10)
        resp.raise_for_status()
        return resp.json()["requests"]

    def reset_simulator(self) -> None:
        """Forget the simulator's stats and call counters (faults stay)."""
        httpx.post(f"{self.simulator_url}/_sim/reset", timeout=10).raise_for_status()

    # --- what the pipeline published ----------------------------------------------------

    async def publish_raw(self, records: list[tuple[str, bytes | None, bytes]],
                          partitions: list[int | None] | None = None) -> list[tuple[int, int]]:
        """Publish (topic, key, value) records as they are — poison bytes, JSON lines, events
        already encoded, records up to 4 MiB — in one burst (all sent, then every broker
        acknowledgement awaited), in order. ``partitions``: per record, a partition to put it
        on instead of the key's. Returns each record's (partition, offset)."""
        producer = clients.producer(self.bootstrap, max_request_size=4 * 1024 * 1024)
        await producer.start()
        try:
            wanted = partitions or [None] * len(records)
            futures = [await producer.send(topic, value, key=key, partition=partition)
                       for (topic, key, value), partition in zip(records, wanted)]
            return [(m.partition, m.offset) for m in await asyncio.gather(*futures)]
        finally:
            await producer.stop()

    def read_events(self, topic: str, cls: type[E], timeout: float = 30.0) -> list[E]:
        """Every record on ``topic`` up to its current end, decoded as ``cls`` (records that
        do not decode are skipped)."""
        codec, found = Codec(), []
        for rec in _run_sync(read_to_end(self.bootstrap, topic, timeout)):
            try:
                found.append(codec.decode(rec.value, cls))
            except DecodeError:
                pass
        return found

    def trail(self, request_ids: list[str]) -> dict[str, list[str]]:
        """Where each request appears on the pipeline's topics, in topic order: its request,
        routed hops, Batches, responses, usage and dead letters, with partition and offset.
        For failure messages: a request that never got an answer shows where it stopped."""
        wanted = set(request_ids)
        codec, out = Codec(), {rid: [] for rid in request_ids}
        t = self.topics
        views: list[tuple[str, type[Event], Callable[[Any], list[tuple[str, str]]]]] = [
            (t.requests, Request, lambda e: [(e.request_id, f"tenant {e.tenant}")]),
            (t.routed, RoutedRequest, lambda e: [(e.request.request_id,
                f"{e.route.deployment} rule {e.route.rule} tried {len(e.tried)}")]),
            (t.batches, Batch, lambda e: [(i.request.request_id,
                f"batch {e.batch_id[:8]} {i.route.deployment} {e.fill_reason} of {len(e.items)}")
                for i in e.items]),
            (t.responses, Response, lambda e: [(e.request_id, f"{e.status} {e.error and e.error.code}")]),
            (t.usage, Usage, lambda e: [(e.request_id, f"{e.status} {e.cost_nanos} nanos")]),
            (t.dead_letter, DeadLetter, lambda e: [(e.request_id, f"{e.agent} {e.reason_code}")]),
        ]
        for topic, cls, describe in views:
            for rec in _run_sync(read_to_end(self.bootstrap, topic)):
                try:
                    event = codec.decode(rec.value, cls)
                except DecodeError:
                    continue
                for rid, text in describe(event):
                    if rid in wanted:
                        out[rid].append(f"{topic}[{rec.partition}]@{rec.offset} {text}")
        return out

    def alerts(self, since_ms: int = 0, rules: tuple[str, ...] | None = None) -> list[Alert]:
        """Alerts on llm.alerts with ``at_ms >= since_ms`` (and a rule in ``rules``), by
        ``at_ms`` (ties in partition order). Not partition order alone: dispatch publishes a
        breaker transition with whichever request or timer tick drained it, and those
        publishes race, so e.g. ``breaker_closed`` can land before the ``breaker_half_open``
        that preceded it."""
        found = [a for a in self.read_events(self.topics.alerts, Alert)
                 if a.at_ms >= since_ms and (rules is None or a.rule in rules)]
        return sorted(found, key=lambda a: a.at_ms)

    # --- workers ----------------------------------------------------------------------

    def start_worker(self, name: str = "worker-1",
                     agents: tuple[str, ...] = ("intake", "dispatch", "ledger", "monitor"),
                     **overrides) -> Worker:
        settings = self.settings(agents=agents, web_port=free_port(), **overrides)
        log_path = self.data_dir / f"{name}.log"
        log = open(log_path, "ab")
        process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"],
                                   env=self.worker_env(settings), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        worker = Worker(name, process, settings.web_port, log_path, tuple(agents))
        self.workers.append(worker)
        self.wait_web(worker)
        return worker

    def wait_web(self, worker: Worker, timeout: float = 60.0, wait_assigned: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not worker.alive():
                raise StackError(f"{worker.name} exited with {worker.process.returncode}:\n"
                                 f"{worker.log_tail()}")
            try:
                resp = httpx.get(f"{worker.url}/llmpipe/health/", timeout=1.0)
                # ready once the consumer group has given it partitions (or never will:
                # a worker with nothing assigned is still a healthy standby after the timeout)
                if resp.status_code == 200 and (not wait_assigned
                                                or resp.json().get("assigned_partitions", 0) > 0):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise StackError(f"{worker.name} did not answer on {worker.url} within {timeout}s:\n"
                         f"{worker.log_tail()}")

    def kill_worker(self, worker: Worker) -> None:
        """SIGKILL: no shutdown hooks, no final commit — a crash."""
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(10)
        self.workers.remove(worker)

    def stop_worker(self, worker: Worker) -> None:
        _terminate(worker.process)
        self.workers.remove(worker)

    def start_split(self, **overrides) -> tuple[Worker, Worker]:
        """The request path and the ledger in two processes, as production runs them: a
        front worker (intake, batcher, dispatch) and a ledger worker (ledger, monitor) in
        its own consumer group, so chDB inserts never share the request path's CPU or GIL.
        ``overrides``: settings for both (over the ledger's :data:`LEDGER_FETCH`).
        Returns (front, ledger)."""
        ledger = self.start_worker("ledger", agents=("ledger", "monitor"),
                                   **{"app_id": f"{self.app_id}-ledger", **LEDGER_FETCH,
                                      **overrides})
        return self.start_worker("worker-1", agents=("intake", "dispatch"), **overrides), ledger

    def ledger_worker(self) -> Worker:
        for w in self.workers:
            if w.alive() and "ledger" in w.agents:
                return w
        raise StackError("no worker running the ledger")


def write_config_dir(dest: Path, *, calls: dict[str, Any] | None = None,
                     resilience: dict[str, Any] | None = None,
                     deployments: dict[str, dict[str, Any]] | None = None) -> Path:
    """A copy of the configuration directory at ``dest`` whose deployments.yaml has
    ``calls`` and ``resilience`` merged into its top-level blocks and ``deployments`` (by
    deployment id) merged into those entries, e.g. ``{"openai-gpt-4o": {"resilience":
    {"limits": {"rpm": 60}}}}``. Pass it as ``DevStack(config_dir=...)``."""
    source = default_config_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*.yaml"):
        shutil.copyfile(path, dest / path.name)
    data = yaml.safe_load((source / "deployments.yaml").read_text())
    _merge(data.setdefault("calls", {}), calls or {})
    _merge(data.setdefault("resilience", {}), resilience or {})
    entries = {d["id"]: d for d in data["deployments"]}
    unknown = set(deployments or {}) - set(entries)
    if unknown:
        raise KeyError(f"no deployment {sorted(unknown)} in {source / 'deployments.yaml'}")
    for dep_id, changes in (deployments or {}).items():
        _merge(entries[dep_id], changes)
    (dest / "deployments.yaml").write_text(
        f"# {source / 'deployments.yaml'} with test overrides (pipeline.dev.stack.write_config_dir)\n"
        + yaml.safe_dump(data, sort_keys=False))
    return dest


def _merge(into: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _run_sync(coro):
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _terminate(process: subprocess.Popen, timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(5)
