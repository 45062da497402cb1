"""Strimzi ``KafkaTopic`` resources from the declared topics (`llmpipe topics render
--format strimzi`), so a cluster run by the Strimzi topic operator gets its topics from
topics/topics.yaml plus an overlay, never from a hand-written copy that can drift.

Strimzi serves ``KafkaTopic`` as ``kafka.strimzi.io/v1`` since 0.49 and only as v1 since
1.0; ``v1beta2`` (same ``spec``) is kept for operators older than 1.0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from pipeline.kafka.topics import TopicSpec

API_GROUP = "kafka.strimzi.io"
API_VERSIONS = ("v1", "v1beta2")
CLUSTER_LABEL = "strimzi.io/cluster"
PART_OF = {"app.kubernetes.io/part-of": "llmpipe", "app.kubernetes.io/managed-by": "llmpipe-topics"}

# A Kubernetes object name (DNS-1123 subdomain): what metadata.name must be.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_INTEGER = re.compile(r"^-?[0-9]+$")


def is_object_name(name: str) -> bool:
    """Whether ``name`` is a valid Kubernetes object name (DNS-1123 subdomain)."""
    return len(name) <= 253 and bool(_DNS_SUBDOMAIN.match(name))


def resource_name(topic: str) -> str:
    """The KafkaTopic's metadata.name for ``topic``: the topic name itself when Kubernetes
    takes it (then Strimzi needs no ``topicName``), else a lower-cased, dash-for-underscore
    form."""
    if is_object_name(topic):
        return topic
    name = re.sub(r"[^a-z0-9.-]", "-", topic.lower())[:253]
    name = ".".join(part.strip("-") for part in name.split(".") if part.strip("-"))
    if not is_object_name(name):
        raise ValueError(f"topic {topic!r} has no valid Kubernetes object name ({name!r})")
    return name


def kafka_topic(spec: TopicSpec, *, cluster: str, namespace: str | None = None,
                api_version: str = "v1") -> dict[str, Any]:
    """One KafkaTopic resource (a plain mapping, ready for YAML) for ``spec``."""
    if api_version not in API_VERSIONS:
        raise ValueError(f"api_version must be one of {API_VERSIONS}, got {api_version!r}")
    if not _DNS_LABEL.match(cluster) or len(cluster) > 63:
        raise ValueError(f"cluster {cluster!r} is not a valid Kubernetes label value "
                         "(lower-case letters, digits and '-')")
    name = resource_name(spec.name)
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        if not _DNS_LABEL.match(namespace):
            raise ValueError(f"namespace {namespace!r} is not a valid Kubernetes namespace")
        metadata["namespace"] = namespace
    metadata["labels"] = {CLUSTER_LABEL: cluster, **PART_OF}
    annotations = {"llmpipe.io/key": spec.key, "llmpipe.io/value-schema": spec.value_schema}
    if spec.partition_group:
        annotations["llmpipe.io/partition-group"] = spec.partition_group
    metadata["annotations"] = annotations
    body: dict[str, Any] = {}
    if name != spec.name:
        body["topicName"] = spec.name
    body["partitions"] = spec.partitions
    body["replicas"] = spec.replication_factor
    body["config"] = {key: _config_value(value) for key, value in sorted(spec.config.items())}
    return {"apiVersion": f"{API_GROUP}/{api_version}", "kind": "KafkaTopic",
            "metadata": metadata, "spec": body}


def kafka_topics(specs: Iterable[TopicSpec], *, cluster: str, namespace: str | None = None,
                 api_version: str = "v1") -> list[dict[str, Any]]:
    """A KafkaTopic per spec, in declaration order; two topics that would share a
    resource name are refused."""
    out, seen = [], {}
    for spec in specs:
        resource = kafka_topic(spec, cluster=cluster, namespace=namespace, api_version=api_version)
        name = resource["metadata"]["name"]
        if name in seen:
            raise ValueError(f"topics {seen[name]!r} and {spec.name!r} would both be KafkaTopic {name!r}")
        seen[name] = spec.name
        out.append(resource)
    return out


def render_yaml(resources: Sequence[dict[str, Any]], header: Sequence[str] = ()) -> str:
    """A multi-document YAML stream, ``header`` lines as leading comments."""
    lines = [f"# {line}".rstrip() for line in header]
    docs = [yaml.safe_dump(r, sort_keys=False, default_flow_style=False, width=100)
            for r in resources]
    return "\n".join(lines + [""] if lines else []) + "".join(f"---\n{doc}" for doc in docs)


def _config_value(value: str) -> str | int:
    # Kafka configs travel as strings; Strimzi takes numbers as numbers, which reads better.
    return int(value) if _INTEGER.match(value) else value
