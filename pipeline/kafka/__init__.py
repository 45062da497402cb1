"""Kafka plumbing shared by the app, the CLI and the tests: declared topics and their admin."""

from pipeline.kafka.topics import (
    Drift,
    TopicsError,
    TopicSpec,
    TopicsReport,
    apply_topics,
    default_topics_file,
    faust_partitions,
    invalid_topic_name,
    load_topic_specs,
    prefixed,
)

__all__ = [
    "Drift",
    "TopicSpec",
    "TopicsError",
    "TopicsReport",
    "apply_topics",
    "default_topics_file",
    "faust_partitions",
    "invalid_topic_name",
    "load_topic_specs",
    "prefixed",
]
