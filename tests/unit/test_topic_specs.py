"""The topic declarations load, validate and overlay as operators expect (no broker)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.kafka.topics import (
    DEFAULT_TOPICS_FILE,
    default_topics_file,
    faust_partitions,
    load_topic_specs,
    prefixed,
)

REPO = Path(__file__).resolve().parents[2]
DESIGN_TOPICS = {
    # name: (key, value schema) as in DESIGN.md's topics table
    "llm.requests": ("tenant id", "Request"),
    "llm.routed": ("deployment id", "RoutedRequest"),
    "llm.batches": ("deployment id", "Batch"),
    "llm.batch-jobs": ("job id", "BatchJob"),   # issue 5: Batch API job state
    "llm.responses": ("request id", "Response"),
    "llm.chunks": ("request id", "Chunk"),      # issue 13: streamed answers
    "llm.cancels": ("tenant id", "Cancel"),     # issue 13: callers that went away
    "llm.cache-fills": ("tenant id", "CacheFill"),   # issue 14: the response cache
    "llm.usage": ("tenant id", "Usage"),
    "llm.alerts": ("tenant id", "Alert"),
    "llm.dead-letter": ("source key", "DeadLetter"),
    "llm.tenants": ("tenant id", "TenantPolicy"),
}

MINIMAL = """
defaults: {replication_factor: 1, cleanup_policy: delete, retention_ms: 1000}
partition_groups: {tenant: 4}
topics:
  - name: a.requests
    partition_group: tenant
    key: tenant id
    value_schema: Request
    description: requests
  - name: a.usage
    partition_group: tenant
    key: tenant id
    value_schema: Usage
    description: usage
  - name: a.responses
    partition_group: null
    partitions: 2
    key: request id
    value_schema: Response
    description: responses
"""


def write(tmp_path: Path, text: str, name: str = "topics.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def by_name(specs):
    return {s.name: s for s in specs}


# -- the repository's declarations ------------------------------------------------------

def test_repo_declares_every_design_topic_with_its_key_and_schema():
    specs = by_name(load_topic_specs())
    assert set(specs) == set(DESIGN_TOPICS)
    for name, (key, schema) in DESIGN_TOPICS.items():
        assert specs[name].key.startswith(key), name
        assert specs[name].value_schema == schema, name


def test_every_value_schema_is_an_avro_record_in_schemas():
    records = {json.loads(p.read_text())["name"] for p in (REPO / "schemas" / "avro").glob("*.avsc")}
    missing = {s.name: s.value_schema for s in load_topic_specs() if s.value_schema not in records}
    assert not missing


def test_co_partitioned_topics_share_partition_counts():
    specs = by_name(load_topic_specs())
    assert specs["llm.requests"].partitions == specs["llm.usage"].partitions == \
        specs["llm.tenants"].partitions
    assert {specs[n].partition_group for n in ("llm.requests", "llm.usage", "llm.tenants")} == {"tenant"}
    assert specs["llm.routed"].partitions == specs["llm.batches"].partitions
    assert {specs[n].partition_group for n in ("llm.routed", "llm.batches")} == {"deployment"}


def test_tenants_is_compacted_and_kept_forever_and_the_rest_delete():
    specs = by_name(load_topic_specs())
    compacted = ("llm.tenants", "llm.batch-jobs")
    for name in compacted:
        assert specs[name].config == {"cleanup.policy": "compact", "retention.ms": "-1"}, name
    assert {s.cleanup_policy for n, s in specs.items() if n not in compacted} == {"delete"}
    assert all(s.replication_factor == 1 for s in specs.values())   # one embedded node


def test_default_file_is_the_repo_one_and_env_overrides_it(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMPIPE_TOPICS_FILE", raising=False)
    assert default_topics_file() == DEFAULT_TOPICS_FILE == REPO / "topics" / "topics.yaml"
    custom = write(tmp_path, MINIMAL)
    monkeypatch.setenv("LLMPIPE_TOPICS_FILE", str(custom))
    assert [s.name for s in load_topic_specs()] == ["a.requests", "a.usage", "a.responses"]


def test_faust_partitions_maps_names_to_counts():
    specs = load_topic_specs()
    counts = faust_partitions(specs)
    assert counts["llm.requests"] == counts["llm.usage"]
    assert counts == {s.name: s.partitions for s in specs}
    assert faust_partitions(prefixed(specs, "t1."))["t1.llm.requests"] == counts["llm.requests"]


# -- validation ---------------------------------------------------------------------------

def test_group_members_take_the_group_count(tmp_path):
    specs = by_name(load_topic_specs(write(tmp_path, MINIMAL)))
    assert specs["a.requests"].partitions == specs["a.usage"].partitions == 4
    assert specs["a.responses"].partitions == 2
    assert specs["a.responses"].partition_group is None


def test_explicit_partitions_disagreeing_with_the_group_are_rejected(tmp_path):
    path = write(tmp_path, MINIMAL.replace(
        "  - name: a.usage\n    partition_group: tenant\n",
        "  - name: a.usage\n    partition_group: tenant\n    partitions: 8\n"))
    with pytest.raises(ConfigError) as err:
        load_topic_specs(path)
    message = str(err.value)
    assert str(path) in message
    assert "topics[a.usage].partitions" in message
    assert "'tenant'" in message and "4" in message and "got 8" in message


def test_explicit_partitions_agreeing_with_the_group_are_accepted(tmp_path):
    path = write(tmp_path, MINIMAL.replace(
        "  - name: a.usage\n    partition_group: tenant\n",
        "  - name: a.usage\n    partition_group: tenant\n    partitions: 4\n"))
    assert by_name(load_topic_specs(path))["a.usage"].partitions == 4


@pytest.mark.parametrize(("old", "new", "key", "expected"), [
    ("partition_group: tenant\n    key: tenant id\n    value_schema: Usage",
     "partition_group: tenants\n    key: tenant id\n    value_schema: Usage",
     "topics[a.usage].partition_group", "one of partition_groups"),
    ("    partitions: 2\n", "",
     "topics[a.responses].partitions", "no partition_group"),
    ("value_schema: Usage", "value_schema: 'io.llmpipe.Usage v2'",
     "topics[a.usage].value_schema", "Avro record name"),
    ("    description: usage\n", "",
     "topics[a.usage].description", "missing"),
    ("    description: usage\n", "    description: usage\n    partitons: 3\n",
     "topics[a.usage].partitons", "one of"),
    ("cleanup_policy: delete", "cleanup_policy: compacted",
     "defaults.cleanup_policy", "delete | compact"),
    ("retention_ms: 1000", "retention_ms: -2",
     "defaults.retention_ms", "integer >= -1"),
    ("replication_factor: 1", "replication_factor: 0",
     "defaults.replication_factor", "integer >= 1"),
    ("name: a.responses", "name: a.requests",
     "topics[a.requests]", "declared once"),
    ("name: a.responses", "name: 'a responses'",
     "topics[2].name", "Kafka topic name"),
    ("partition_groups: {tenant: 4}", "partition_groups: {tenant: 0}",
     "partition_groups.tenant", "partition count >= 1"),
])
def test_invalid_declarations_name_the_file_topic_and_key(tmp_path, old, new, key, expected):
    assert old in MINIMAL
    path = write(tmp_path, MINIMAL.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_topic_specs(path)
    assert str(err.value).startswith(f"{path}: {key}: "), str(err.value)
    assert expected in str(err.value)


def test_retention_and_policy_cannot_hide_in_configs(tmp_path):
    path = write(tmp_path, MINIMAL.replace(
        "    description: usage\n", "    description: usage\n    configs: {retention.ms: 5}\n"))
    with pytest.raises(ConfigError, match=r"topics\[a.usage\].configs.retention.ms: expected the retention_ms field"):
        load_topic_specs(path)


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="an existing YAML file"):
        load_topic_specs(tmp_path / "nope.yaml")


# -- overlay ----------------------------------------------------------------------------

def test_overlay_overrides_defaults_groups_and_topic_fields(tmp_path):
    base = write(tmp_path, MINIMAL)
    overlay = write(tmp_path, """
        defaults:
          replication_factor: 3
          configs: {min.insync.replicas: 2}
        partition_groups: {tenant: 12}
        topics:
          - name: a.usage
            retention_ms: -1
            configs: {max.message.bytes: 2097152}
    """, "prod.yaml")
    specs = by_name(load_topic_specs(base, overlay=overlay))
    assert {s.replication_factor for s in specs.values()} == {3}
    assert specs["a.requests"].partitions == specs["a.usage"].partitions == 12
    assert specs["a.responses"].partitions == 2
    assert specs["a.usage"].config == {"cleanup.policy": "delete", "retention.ms": "-1",
                                       "min.insync.replicas": "2", "max.message.bytes": "2097152"}
    assert specs["a.requests"].config == {"cleanup.policy": "delete", "retention.ms": "1000",
                                          "min.insync.replicas": "2"}
    # the base file is untouched by an overlay
    assert by_name(load_topic_specs(base))["a.usage"].partitions == 4


def test_overlay_cannot_add_topics(tmp_path):
    base = write(tmp_path, MINIMAL)
    overlay = write(tmp_path, "topics:\n  - {name: a.usage2, retention_ms: 5}\n", "prod.yaml")
    with pytest.raises(ConfigError) as err:
        load_topic_specs(base, overlay=overlay)
    assert str(err.value).startswith(f"{overlay}: topics[a.usage2]: expected a topic declared in")


def test_overlay_group_change_blames_the_overlay_for_a_mismatch(tmp_path):
    base = write(tmp_path, MINIMAL.replace(
        "  - name: a.usage\n    partition_group: tenant\n",
        "  - name: a.usage\n    partition_group: tenant\n    partitions: 4\n"))
    overlay = write(tmp_path, "partition_groups: {tenant: 12}\n", "prod.yaml")
    with pytest.raises(ConfigError) as err:
        load_topic_specs(base, overlay=overlay)
    assert "topics[a.usage].partitions" in str(err.value)
    assert f"partition_groups.tenant in {overlay}" in str(err.value)


def test_overlay_errors_name_the_overlay_file(tmp_path):
    base = write(tmp_path, MINIMAL)
    overlay = write(tmp_path, "topics:\n  - {name: a.usage, replication_factor: three}\n", "prod.yaml")
    with pytest.raises(ConfigError) as err:
        load_topic_specs(base, overlay=overlay)
    assert str(err.value).startswith(f"{overlay}: topics[a.usage].replication_factor: ")


# -- prefix -------------------------------------------------------------------------------

def test_prefix_is_prepended_verbatim_and_keeps_everything_else(tmp_path):
    specs = load_topic_specs(write(tmp_path, MINIMAL))
    out = prefixed(specs, "test-7f3a.")
    assert [s.name for s in out] == ["test-7f3a.a.requests", "test-7f3a.a.usage",
                                     "test-7f3a.a.responses"]
    for before, after in zip(specs, out):
        assert (after.partitions, after.config, after.value_schema, after.partition_group) == \
            (before.partitions, before.config, before.value_schema, before.partition_group)
    assert specs[0].name == "a.requests"     # the input specs are not modified


def test_a_prefix_that_makes_an_invalid_topic_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="invalid Kafka topic name"):
        prefixed(load_topic_specs(write(tmp_path, MINIMAL)), "my tests/")


# -- apply without DescribeConfigs (a broker that lacks it) ------------------------------

class _AdminWithoutDescribeConfigs:
    """Just enough of AIOKafkaAdminClient: topics exist, DescribeConfigs is unsupported."""

    def __init__(self, partitions: dict[str, int]):
        self.partitions = partitions

    async def describe_topics(self):
        return [{"topic": name, "error_code": 0,
                 "partitions": [{"partition": i, "replicas": [1]} for i in range(count)]}
                for name, count in self.partitions.items()]

    async def create_topics(self, new_topics):
        raise AssertionError("nothing should be created")

    async def describe_configs(self, resources):
        from aiokafka.errors import UnsupportedVersionError
        raise UnsupportedVersionError("DescribeConfigs")


async def test_apply_degrades_to_configs_not_checked_when_describe_configs_fails(tmp_path):
    from pipeline.kafka import topics

    specs = load_topic_specs(write(tmp_path, MINIMAL))
    admin = _AdminWithoutDescribeConfigs({"a.requests": 4, "a.usage": 3, "a.responses": 2})

    report = await topics._apply(admin, "fake:9092", specs)

    assert report.unchanged == ["a.requests", "a.responses"]
    assert [str(d) for d in report.drift] == ["a.usage: partitions is 3, declared 4"]
    assert report.configs_not_checked == ["a.requests", "a.usage", "a.responses"]
    assert "configs not checked" in report.format()
    assert "UnsupportedVersionError" in report.format()


def test_production_overlay_keeps_co_partitioned_groups_equal():
    from pipeline.paths import REPO_DIR
    specs = {s.name: s for s in load_topic_specs(overlay=REPO_DIR / "deploy" / "topics.prod.yaml")}
    assert specs["llm.requests"].partitions == specs["llm.usage"].partitions == specs["llm.tenants"].partitions
    assert specs["llm.routed"].partitions == specs["llm.batches"].partitions
    assert all(s.replication_factor == 3 for s in specs.values())
