"""Declared Kafka topics: load `topics/topics.yaml` (plus an optional overlay) into typed
specs, and apply them to a cluster — create what is missing, report drift on the rest.

``apply_topics`` never deletes or alters a topic: a topic with the wrong partition count or
configs is reported, and fixing it is an operator's decision (repartitioning moves keys,
so tables built on the old layout must be rebuilt).

Against the embedded Tansu broker (0.6.0): CreateTopics stores the configs verbatim and
DescribeConfigs echoes back only the configs set at creation, so drift is checked, but a
config that was never set reads as "not set" rather than as the broker default; Tansu does
not enforce retention or compaction. A Metadata request that names a missing topic makes
Tansu auto-create it with 4 partitions, so this module only ever asks for all topics.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, load_yaml
from pipeline.paths import data_dir

DEFAULT_TOPICS_FILE = Path(__file__).resolve().parents[2] / "topics" / "topics.yaml"
TOPICS_FILE_ENV = "LLMPIPE_TOPICS_FILE"

CLEANUP_POLICIES = ("delete", "compact", "compact,delete")
# What Apache Kafka assumes for a config that was never set; a broker that reports only
# explicitly set configs (Tansu) is not drifting when the declared value is this.
KAFKA_TOPIC_DEFAULTS = {"cleanup.policy": "delete", "retention.ms": "604800000"}

_ROOT_KEYS = {"defaults", "partition_groups", "topics"}
_DEFAULT_KEYS = {"replication_factor", "retention_ms", "cleanup_policy", "configs"}
_TOPIC_KEYS = {"name", "partition_group", "partitions", "key", "value_schema", "description"} | _DEFAULT_KEYS
_REQUIRED_TOPIC_KEYS = ("name", "partition_group", "key", "value_schema", "description")
_FIELD_CONFIGS = {"retention_ms": "retention.ms", "cleanup_policy": "cleanup.policy"}
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_AVRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def invalid_topic_name(name: str) -> str | None:
    """Why Kafka would refuse ``name`` as a topic name (kafka.common.internals.Topic), or
    None when it would take it."""
    if not isinstance(name, str) or not _TOPIC_NAME.match(name) or name in (".", ".."):
        return (f"{str(name)[:80]!r} is not a valid Kafka topic name (1..249 characters of "
                "A-Z a-z 0-9 . _ -)")
    return None
_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicSpec:
    """One declared topic. ``config`` holds Kafka topic configs as strings, as sent in
    CreateTopics (``cleanup.policy``, ``retention.ms``, anything from ``configs:``)."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(hash=False)
    key: str
    value_schema: str
    description: str
    partition_group: str | None = None

    @property
    def cleanup_policy(self) -> str:
        return self.config.get("cleanup.policy", "delete")

    @property
    def retention_ms(self) -> int:
        return int(self.config.get("retention.ms", KAFKA_TOPIC_DEFAULTS["retention.ms"]))


# -- loading ------------------------------------------------------------------------

def default_topics_file() -> Path:
    """$LLMPIPE_TOPICS_FILE, else the repository's topics/topics.yaml."""
    override = os.environ.get(TOPICS_FILE_ENV)
    if override:
        return Path(override)
    if DEFAULT_TOPICS_FILE.exists():
        return DEFAULT_TOPICS_FILE
    return data_dir("topics", "LLMPIPE_TOPICS_DIR") / "topics.yaml"   # installed package


def load_topic_specs(path: str | Path | None = None,
                     overlay: str | Path | None = None) -> list[TopicSpec]:
    """Topic specs from ``path`` (default: ``default_topics_file()``), with ``overlay``'s
    defaults, partition groups and per-topic fields laid over them. Raises ConfigError
    naming the file that supplied the bad value, the topic and the key."""
    base_path = Path(path) if path is not None else default_topics_file()
    doc = _Document(base_path, load_yaml(base_path))
    if overlay is not None:
        overlay_path = Path(overlay)
        doc.lay_over(overlay_path, load_yaml(overlay_path))
    return doc.specs()


def prefixed(specs: Iterable[TopicSpec], prefix: str) -> list[TopicSpec]:
    """The same specs named ``prefix + name`` (the prefix is prepended verbatim)."""
    out = [replace(s, name=prefix + s.name) for s in specs]
    for spec in out:
        if invalid_topic_name(spec.name):
            raise ValueError(f"prefix {prefix!r} makes an invalid Kafka topic name {spec.name!r}")
    return out


def faust_partitions(specs: Iterable[TopicSpec]) -> dict[str, int]:
    """Topic name -> partition count, for declaring the Faust app's topics."""
    return {s.name: s.partitions for s in specs}


class _Document:
    """The raw YAML of topics.yaml with an overlay merged in, remembering which file
    supplied each value so that errors point at the right one."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.base = path
        self._check_keys(path, "<root>", data, _ROOT_KEYS)
        self.defaults = self._mapping(path, "defaults", data.get("defaults", {}))
        self._check_keys(path, "defaults", self.defaults, _DEFAULT_KEYS)
        self.groups = self._mapping(path, "partition_groups", data.get("partition_groups", {}))
        topics = data.get("topics")
        if not isinstance(topics, list) or not topics:
            raise ConfigError(path, "topics", "a non-empty list of topics", topics)
        self.topics: dict[str, dict[str, Any]] = {}
        self.origin: dict[str, Path] = {}      # "topics[x].key" / "defaults.key" -> file
        for index, entry in enumerate(topics):
            name = self._entry_name(path, index, entry)
            if name in self.topics:
                raise ConfigError(path, f"topics[{name}]", "each topic declared once (duplicate)")
            self._check_keys(path, f"topics[{name}]", entry, _TOPIC_KEYS)
            self.topics[name] = dict(entry)

    def lay_over(self, path: Path, data: dict[str, Any]) -> None:
        self._check_keys(path, "<root>", data, _ROOT_KEYS)
        defaults = self._mapping(path, "defaults", data.get("defaults", {}))
        self._check_keys(path, "defaults", defaults, _DEFAULT_KEYS)
        for key, value in defaults.items():
            self.defaults[key] = _merge_configs(self.defaults, key, value)
            self.origin[f"defaults.{key}"] = path
        for group, count in self._mapping(path, "partition_groups",
                                          data.get("partition_groups", {})).items():
            self.groups[group] = count
            self.origin[f"partition_groups.{group}"] = path
        topics = data.get("topics", [])
        if not isinstance(topics, list):
            raise ConfigError(path, "topics", "a list of topic overrides", topics)
        for index, entry in enumerate(topics):
            name = self._entry_name(path, index, entry)
            if name not in self.topics:
                raise ConfigError(path, f"topics[{name}]",
                                  f"a topic declared in {self.base} (overlays cannot add topics)")
            self._check_keys(path, f"topics[{name}]", entry, _TOPIC_KEYS)
            for key, value in entry.items():
                if key != "name":
                    self.topics[name][key] = _merge_configs(self.topics[name], key, value)
                    self.origin[f"topics[{name}].{key}"] = path

    def specs(self) -> list[TopicSpec]:
        for group, count in self.groups.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigError(self._file(f"partition_groups.{group}"),
                                  f"partition_groups.{group}", "a partition count >= 1", count)
        return [self._spec(name, entry) for name, entry in self.topics.items()]

    def _spec(self, name: str, entry: dict[str, Any]) -> TopicSpec:
        where = f"topics[{name}]"
        for key in _REQUIRED_TOPIC_KEYS:
            if key not in entry:
                raise ConfigError(self._file(where), f"{where}.{key}", "a value (missing)")
        for key in ("key", "description"):
            if not isinstance(entry[key], str) or not entry[key].strip():
                raise ConfigError(self._file(f"{where}.{key}"), f"{where}.{key}",
                                  "a non-empty string", entry[key])
        schema = entry["value_schema"]
        if not isinstance(schema, str) or not _AVRO_NAME.match(schema):
            raise ConfigError(self._file(f"{where}.value_schema"), f"{where}.value_schema",
                              "an Avro record name such as Request", schema)
        group, partitions = self._partitions(name, entry)

        def setting(key: str) -> tuple[Any, str]:
            if key in entry:
                return entry[key], f"{where}.{key}"
            if key in self.defaults:
                return self.defaults[key], f"defaults.{key}"
            raise ConfigError(self._file(where), f"{where}.{key}", "a value (missing, no default)")

        replication, at = setting("replication_factor")
        _require_int(self._file(at), at, replication, minimum=1)
        retention, at = setting("retention_ms")
        _require_int(self._file(at), at, retention, minimum=-1)
        policy, at = setting("cleanup_policy")
        policy = _cleanup_policy(self._file(at), at, policy)
        config = self._configs(name, entry)
        config.update({"cleanup.policy": policy, "retention.ms": str(retention)})
        return TopicSpec(name=name, partitions=partitions, replication_factor=replication,
                         config=config, key=entry["key"].strip(), value_schema=schema,
                         description=" ".join(entry["description"].split()),
                         partition_group=group)

    def _partitions(self, name: str, entry: dict[str, Any]) -> tuple[str | None, int]:
        where = f"topics[{name}]"
        group = entry["partition_group"]
        explicit = entry.get("partitions")
        if explicit is not None:
            _require_int(self._file(f"{where}.partitions"), f"{where}.partitions", explicit,
                         minimum=1)
        if group is None:
            if explicit is None:
                raise ConfigError(self._file(where), f"{where}.partitions",
                                  "a partition count (the topic has no partition_group)")
            return None, explicit
        if not isinstance(group, str) or group not in self.groups:
            raise ConfigError(self._file(f"{where}.partition_group"), f"{where}.partition_group",
                              f"one of partition_groups {sorted(self.groups)} or null", group)
        count = self.groups[group]
        if explicit is not None and explicit != count:
            group_file = self._file(f"partition_groups.{group}")
            raise ConfigError(
                self._file(f"{where}.partitions"), f"{where}.partitions",
                f"{count}, the partition count of its co-partitioned group {group!r} "
                f"(partition_groups.{group} in {group_file}); set the count on the group, "
                f"not on one topic", explicit)
        return group, count

    def _configs(self, name: str, entry: dict[str, Any]) -> dict[str, str]:
        merged: dict[str, str] = {}
        for source, configs in (("defaults.configs", self.defaults.get("configs", {})),
                                (f"topics[{name}].configs", entry.get("configs", {}))):
            path = self._file(source)
            if not isinstance(configs, Mapping):
                raise ConfigError(path, source, "a mapping of Kafka topic configs", configs)
            for key, value in configs.items():
                if key in _FIELD_CONFIGS.values():
                    field_name = next(f for f, c in _FIELD_CONFIGS.items() if c == key)
                    raise ConfigError(path, f"{source}.{key}", f"the {field_name} field instead")
                if isinstance(value, bool):
                    value = "true" if value else "false"
                if not isinstance(value, (str, int)):
                    raise ConfigError(path, f"{source}.{key}", "a string or integer", value)
                merged[str(key)] = str(value)
        return merged

    def _file(self, where: str) -> Path:
        """The file that supplied the value at ``where`` (or its parent's)."""
        while where:
            if where in self.origin:
                return self.origin[where]
            where = where.rpartition(".")[0] if "." in where.rpartition("]")[2] else ""
        return self.base

    @staticmethod
    def _entry_name(path: Path, index: int, entry: Any) -> str:
        if not isinstance(entry, dict):
            raise ConfigError(path, f"topics[{index}]", "a mapping", entry)
        name = entry.get("name")
        if invalid_topic_name(name):
            raise ConfigError(path, f"topics[{index}].name",
                              "a Kafka topic name (letters, digits, '.', '_', '-')", name)
        return name

    @staticmethod
    def _mapping(path: Path, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ConfigError(path, key, "a mapping", value)
        return dict(value)

    @staticmethod
    def _check_keys(path: Path, where: str, data: Mapping[str, Any], allowed: set[str]) -> None:
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(path, f"{where}.{unknown[0]}" if where != "<root>" else unknown[0],
                              f"one of {sorted(allowed)}", unknown[0])


def _merge_configs(target: Mapping[str, Any], key: str, value: Any) -> Any:
    """Overlay ``configs`` maps merge key by key; every other field is replaced."""
    if key == "configs" and isinstance(value, Mapping) and isinstance(target.get(key), Mapping):
        return {**target[key], **value}
    return value


def _require_int(path: Path, where: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(path, where, f"an integer >= {minimum}", value)


def _cleanup_policy(path: Path, where: str, value: Any) -> str:
    normal = ",".join(sorted(p.strip() for p in value.split(","))) if isinstance(value, str) else None
    if normal not in CLEANUP_POLICIES:
        raise ConfigError(path, where, " | ".join(CLEANUP_POLICIES), value)
    return normal


# -- applying -------------------------------------------------------------------------

class TopicsError(RuntimeError):
    """Topics could not be applied (broker unreachable, a creation refused)."""


@dataclass(frozen=True)
class Drift:
    """One way an existing topic differs from its declaration."""

    topic: str
    setting: str        # "partitions", "replication_factor" or a Kafka config name
    declared: str
    actual: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.setting} is {self.actual}, declared {self.declared}"


@dataclass
class TopicsReport:
    bootstrap: str
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)
    # Existing topics whose configs could not be compared (DescribeConfigs unsupported or
    # failed); their partitions and replication were still checked.
    configs_not_checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.drift

    @property
    def drifted(self) -> list[str]:
        return sorted({d.topic for d in self.drift})

    def format(self) -> str:
        lines = [f"topics on {self.bootstrap}: {len(self.created)} created, "
                 f"{len(self.unchanged)} unchanged, {len(self.drifted)} drifted"]
        lines += [f"  created    {name}" for name in self.created]
        lines += [f"  unchanged  {name}" for name in self.unchanged]
        lines += [f"  DRIFT      {d}" for d in self.drift]
        if self.configs_not_checked:
            lines.append(f"  configs not checked: {', '.join(self.configs_not_checked)}")
        lines += [f"  note: {note}" for note in self.notes]
        if self.drift:
            lines.append("  apply never alters a topic: fix drift by hand (or recreate the "
                         "topic), or change the declaration to match")
        return "\n".join(lines)


async def apply_topics(bootstrap: str, specs: Sequence[TopicSpec], *,
                       timeout: float = 30.0) -> TopicsReport:
    """Create the declared topics missing on ``bootstrap``; report drift on existing ones."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate topic names in specs: {sorted(names)}")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="llmpipe-topics",
                                request_timeout_ms=int(min(timeout, 30.0) * 1000))
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            return await _apply(admin, bootstrap, list(specs))
    except (KafkaError, OSError, TimeoutError) as exc:
        raise TopicsError(f"cannot apply topics on {bootstrap}: "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        await admin.close()


async def _apply(admin: Any, bootstrap: str, specs: list[TopicSpec]) -> TopicsReport:
    report = TopicsReport(bootstrap)
    # All topics, never named ones: naming a missing topic auto-creates it on Tansu.
    existing = {t["topic"]: t for t in await admin.describe_topics()}
    missing = [s for s in specs if s.name not in existing]
    raced: list[str] = []
    if missing:
        raced = await _create(admin, missing, report)
        if raced:       # created by someone else since we looked: check them too
            existing = {t["topic"]: t for t in await admin.describe_topics()}
    present = [s for s in specs if s.name not in report.created]
    for spec in present:
        report.drift += _layout_drift(spec, existing.get(spec.name))
    await _config_drift(admin, present, report)
    report.unchanged = [s.name for s in present if s.name not in set(report.drifted)]
    return report


async def _create(admin: Any, specs: list[TopicSpec], report: TopicsReport) -> list[str]:
    from aiokafka.admin import NewTopic

    response = await admin.create_topics(
        [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.config))
         for s in specs])
    raced, failures = [], []
    for result in response.to_object()["topic_errors"]:
        topic, code, message = result["topic"], result["error_code"], result.get("error_message")
        if code == 0:
            report.created.append(topic)
        elif code == _TOPIC_ALREADY_EXISTS:
            raced.append(topic)
        else:
            failures.append(f"{topic}: error {code} {message or ''}".strip())
    if failures:
        raise TopicsError("the broker refused to create topics: " + "; ".join(failures)
                          + (f" (created: {', '.join(report.created)})" if report.created else ""))
    return raced


def _layout_drift(spec: TopicSpec, metadata: Mapping[str, Any] | None) -> list[Drift]:
    if metadata is None:
        return [Drift(spec.name, "existence", "exists", "missing after create")]
    partitions = metadata.get("partitions") or []
    if metadata.get("error_code") and not partitions:
        return [Drift(spec.name, "metadata", "error 0", f"error {metadata['error_code']}")]
    drift = []
    if len(partitions) != spec.partitions:
        drift.append(Drift(spec.name, "partitions", str(spec.partitions), str(len(partitions))))
    replicas = {len(p.get("replicas") or []) for p in partitions}
    if replicas and replicas != {spec.replication_factor}:
        drift.append(Drift(spec.name, "replication_factor", str(spec.replication_factor),
                           "/".join(str(r) for r in sorted(replicas))))
    return drift


async def _config_drift(admin: Any, specs: list[TopicSpec], report: TopicsReport) -> None:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import KafkaError

    if not specs:
        return
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs])
    except (KafkaError, NotImplementedError) as exc:
        report.configs_not_checked += [s.name for s in specs]
        report.notes.append(f"configs not checked: DescribeConfigs failed "
                            f"({type(exc).__name__}: {exc})")
        return
    described: dict[str, Mapping[str, Any]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            described[resource["resource_name"]] = resource
    by_name = {s.name: s for s in specs}
    for name, spec in by_name.items():
        resource = described.get(name)
        if resource is None or resource.get("error_code"):
            report.configs_not_checked.append(name)
            detail = (f"error {resource['error_code']} {resource.get('error_message') or ''}"
                      if resource else "no answer")
            report.notes.append(f"configs not checked for {name}: {detail.strip()}")
            continue
        actual = {}
        for entry in resource.get("config_entries") or []:
            key = entry.get("config_names", entry.get("config_name"))
            if entry.get("config_value") is not None:
                actual[key] = entry["config_value"]
        for key, declared in spec.config.items():
            value = actual.get(key)
            if value is None:
                if KAFKA_TOPIC_DEFAULTS.get(key) == declared:
                    continue
                report.drift.append(Drift(name, key, declared, "not set"))
            elif _normal(key, value) != _normal(key, declared):
                report.drift.append(Drift(name, key, declared, value))


def _normal(key: str, value: str) -> str:
    if key == "cleanup.policy":
        return ",".join(sorted(p.strip() for p in value.split(",")))
    return value.strip()
