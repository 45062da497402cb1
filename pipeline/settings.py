"""Runtime settings from the environment (LLMPIPE_*), with defaults for the embedded stack."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path


# Kafka's producer limit (Faust's producer_max_request_size default): outputs are checked
# against it before they are sent, and intake keeps requests well below it.
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


GATEWAY_TOPIC_PREFIX = "llm.gateway."


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def requests(self) -> str: return self.name("llm.requests")
    @property
    def routed(self) -> str: return self.name("llm.routed")
    @property
    def batches(self) -> str: return self.name("llm.batches")
    @property
    def batch_jobs(self) -> str: return self.name("llm.batch-jobs")
    @property
    def responses(self) -> str: return self.name("llm.responses")
    @property
    def usage(self) -> str: return self.name("llm.usage")
    @property
    def alerts(self) -> str: return self.name("llm.alerts")
    @property
    def dead_letter(self) -> str: return self.name("llm.dead-letter")
    @property
    def tenants(self) -> str: return self.name("llm.tenants")
    @property
    def chunks(self) -> str: return self.name("llm.chunks")
    @property
    def cancels(self) -> str: return self.name("llm.cancels")
    @property
    def cache_fills(self) -> str: return self.name("llm.cache-fills")

    def gateway_replies(self, instance: str) -> tuple[str, str]:
        """The reply topics of one HTTP gateway instance: (responses, chunks). One partition
        each, read only by that instance, so a replica never reads another's answers."""
        base = self.name(f"{GATEWAY_TOPIC_PREFIX}{instance}")
        return f"{base}.responses", f"{base}.chunks"

    def is_gateway_reply(self, topic: str) -> bool:
        """A gateway instance's reply topic: every tenant's requests may name one (the
        gateway, not the caller, chooses it)."""
        return topic.startswith(self.name(GATEWAY_TOPIC_PREFIX)) and \
            topic.endswith((".responses", ".chunks"))


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = "127.0.0.1:9092"
    app_id: str = "llmpipe"
    topics: Topics = field(default_factory=Topics)
    clickhouse_dsn: str = "chdb://.data/clickhouse"
    schema_registry_url: str | None = None
    agents: tuple[str, ...] = ("intake", "dispatch", "ledger", "monitor")
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    session_timeout_s: float = 30.0
    dispatch_concurrency: int = 256
    dispatch_hop_window_s: int = 3600        # how long a finished hop is remembered (re-reads)
    intake_concurrency: int = 64
    intake_dispatch_max: int = 32            # provider calls intake may hold at once (0: none)
    ledger_flush_rows: int = 500
    ledger_flush_s: float = 0.5
    ledger_retry_cap_s: float = 30.0          # longest wait between insert retries (outage)
    replication_factor: int = 1
    log_level: str = "info"
    fetch_max_wait_ms: int = 20
    fetch_min_bytes: int = 1                  # a fetch answers once it has this much (or at the wait)
    idle_fetch_wait_ms: int = 200             # the worker's fetch wait once idle (faust_tuning)
    idle_fetch_after_s: float = 2.0           # ... after this long without a record
    tenants_ready_timeout_s: float = 10.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES   # largest record the broker takes
    publish_stall_s: float = 60.0            # a publish failing this long is rescued or alerted
    shutdown_grace_s: float = 10.0           # SIGTERM: in-flight work may finish within this
    startup_timeout_s: float = 300.0         # wait this long for the broker and ClickHouse (0: ever)
    gc_young: int = 20_000                   # young-generation GC threshold (pipeline/heap.py; 0: Python's)
    seed: int | None = None

    @classmethod
    def from_env(cls) -> "Settings":
        registry = os.environ.get("LLMPIPE_SCHEMA_REGISTRY_URL") or None
        return cls(
            kafka_bootstrap=_env("LLMPIPE_KAFKA_BOOTSTRAP", cls.kafka_bootstrap),
            app_id=_env("LLMPIPE_APP_ID", cls.app_id),
            topics=Topics(os.environ.get("LLMPIPE_TOPIC_PREFIX", "")),
            clickhouse_dsn=_env("LLMPIPE_CLICKHOUSE_DSN", cls.clickhouse_dsn),
            schema_registry_url=registry,
            agents=tuple(a.strip() for a in _env("LLMPIPE_AGENTS", ",".join(cls.agents)).split(",")
                         if a.strip()),
            web_port=int(_env("LLMPIPE_WEB_PORT", str(cls.web_port))),
            web_host=_env("LLMPIPE_WEB_HOST", cls.web_host),
            session_timeout_s=float(_env("LLMPIPE_SESSION_TIMEOUT_S", str(cls.session_timeout_s))),
            dispatch_concurrency=int(_env("LLMPIPE_DISPATCH_CONCURRENCY", str(cls.dispatch_concurrency))),
            dispatch_hop_window_s=int(_env("LLMPIPE_DISPATCH_HOP_WINDOW_S",
                                           str(cls.dispatch_hop_window_s))),
            intake_concurrency=int(_env("LLMPIPE_INTAKE_CONCURRENCY", str(cls.intake_concurrency))),
            intake_dispatch_max=int(_env("LLMPIPE_INTAKE_DISPATCH_MAX", str(cls.intake_dispatch_max))),
            ledger_flush_rows=int(_env("LLMPIPE_LEDGER_FLUSH_ROWS", str(cls.ledger_flush_rows))),
            ledger_flush_s=float(_env("LLMPIPE_LEDGER_FLUSH_S", str(cls.ledger_flush_s))),
            ledger_retry_cap_s=float(_env("LLMPIPE_LEDGER_RETRY_CAP_S", str(cls.ledger_retry_cap_s))),
            replication_factor=int(_env("LLMPIPE_REPLICATION_FACTOR", str(cls.replication_factor))),
            log_level=_env("LLMPIPE_LOG_LEVEL", cls.log_level),
            fetch_max_wait_ms=int(_env("LLMPIPE_FETCH_MAX_WAIT_MS", str(cls.fetch_max_wait_ms))),
            fetch_min_bytes=int(_env("LLMPIPE_FETCH_MIN_BYTES", str(cls.fetch_min_bytes))),
            idle_fetch_wait_ms=int(_env("LLMPIPE_IDLE_FETCH_WAIT_MS", str(cls.idle_fetch_wait_ms))),
            idle_fetch_after_s=float(_env("LLMPIPE_IDLE_FETCH_AFTER_S", str(cls.idle_fetch_after_s))),
            tenants_ready_timeout_s=float(_env("LLMPIPE_TENANTS_READY_TIMEOUT_S",
                                               str(cls.tenants_ready_timeout_s))),
            max_message_bytes=int(_env("LLMPIPE_MAX_MESSAGE_BYTES", str(cls.max_message_bytes))),
            publish_stall_s=float(_env("LLMPIPE_PUBLISH_STALL_S", str(cls.publish_stall_s))),
            shutdown_grace_s=float(_env("LLMPIPE_SHUTDOWN_GRACE_S", str(cls.shutdown_grace_s))),
            startup_timeout_s=float(_env("LLMPIPE_STARTUP_TIMEOUT_S", str(cls.startup_timeout_s))),
            gc_young=int(_env("LLMPIPE_GC_YOUNG", str(cls.gc_young))),
            seed=int(os.environ["LLMPIPE_SEED"]) if os.environ.get("LLMPIPE_SEED") else None,
        )

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env = {
            "LLMPIPE_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "LLMPIPE_APP_ID": self.app_id,
            "LLMPIPE_TOPIC_PREFIX": self.topics.prefix,
            "LLMPIPE_CLICKHOUSE_DSN": self.clickhouse_dsn,
            "LLMPIPE_AGENTS": ",".join(self.agents),
            "LLMPIPE_WEB_PORT": str(self.web_port),
            "LLMPIPE_WEB_HOST": self.web_host,
            "LLMPIPE_SESSION_TIMEOUT_S": str(self.session_timeout_s),
            "LLMPIPE_DISPATCH_CONCURRENCY": str(self.dispatch_concurrency),
            "LLMPIPE_DISPATCH_HOP_WINDOW_S": str(self.dispatch_hop_window_s),
            "LLMPIPE_INTAKE_CONCURRENCY": str(self.intake_concurrency),
            "LLMPIPE_INTAKE_DISPATCH_MAX": str(self.intake_dispatch_max),
            "LLMPIPE_LEDGER_FLUSH_ROWS": str(self.ledger_flush_rows),
            "LLMPIPE_LEDGER_FLUSH_S": str(self.ledger_flush_s),
            "LLMPIPE_LEDGER_RETRY_CAP_S": str(self.ledger_retry_cap_s),
            "LLMPIPE_REPLICATION_FACTOR": str(self.replication_factor),
            "LLMPIPE_LOG_LEVEL": self.log_level,
            "LLMPIPE_FETCH_MAX_WAIT_MS": str(self.fetch_max_wait_ms),
            "LLMPIPE_FETCH_MIN_BYTES": str(self.fetch_min_bytes),
            "LLMPIPE_IDLE_FETCH_WAIT_MS": str(self.idle_fetch_wait_ms),
            "LLMPIPE_IDLE_FETCH_AFTER_S": str(self.idle_fetch_after_s),
            "LLMPIPE_TENANTS_READY_TIMEOUT_S": str(self.tenants_ready_timeout_s),
            "LLMPIPE_MAX_MESSAGE_BYTES": str(self.max_message_bytes),
            "LLMPIPE_PUBLISH_STALL_S": str(self.publish_stall_s),
            "LLMPIPE_SHUTDOWN_GRACE_S": str(self.shutdown_grace_s),
            "LLMPIPE_STARTUP_TIMEOUT_S": str(self.startup_timeout_s),
            "LLMPIPE_GC_YOUNG": str(self.gc_young),
        }
        if self.schema_registry_url:
            env["LLMPIPE_SCHEMA_REGISTRY_URL"] = self.schema_registry_url
        if self.seed is not None:
            env["LLMPIPE_SEED"] = str(self.seed)
        return env


def chdb_path(dsn: str) -> Path | None:
    return Path(dsn[len("chdb://"):]) if dsn.startswith("chdb://") else None
