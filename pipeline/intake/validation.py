"""What intake accepts: every field of a request checked against bounds from
pipeline/config/intake.yaml, so that nothing a caller writes can make an output that does
not encode, does not fit the broker, lands on a topic it should not, reaches another
tenant's state or bills outside the present. A refusal names the field and the rule."""

from __future__ import annotations

from aiokafka.partitioner import murmur2

from pipeline.kafka.topics import invalid_topic_name
from pipeline.errors import Rejected
from pipeline.events.ids import SEP
from pipeline.events.models import PRIORITIES, ROLES, Request, TenantPolicy
from pipeline.events.text import invalid_name, invalid_text_in
from pipeline.intake.bounds import RequestBounds
from pipeline.intake.features import check_chat, check_embedding, has_content
from pipeline.settings import Topics

# Names that mean something else: "*" is the global scope of alerts (tenant) and the
# whole-tenant budget row (team).
RESERVED = "*"
MAX_CACHE_CONTROL = 200     # characters of Request.cache_control (HTTP Cache-Control directives)


def tenant_partition(tenant: str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives a record keyed by ``tenant``."""
    return (murmur2(tenant.encode()) & 0x7FFFFFFF) % partitions


def reply_topic_allowed(topic: str, default: str, policy: TenantPolicy | None,
                        topics: Topics | None = None) -> bool:
    """The default topic (responses, or chunks for a chunk topic), an HTTP gateway
    instance's reply topic (given ``topics``), or one the tenant's policy lists
    (``prefix*`` entries match by prefix)."""
    if topic == default or topics is not None and topics.is_gateway_reply(topic):
        return True
    for entry in policy.reply_topics if policy else ():
        if topic == entry or entry.endswith("*") and topic.startswith(entry[:-1]):
            return True
    return False


def check_record(size: int, key: bytes | None, partition: int, tenant: str, partitions: int | None,
                 bounds: RequestBounds, topic: str) -> None:
    """The record itself: its size, and that it sits where the tenant's state lives (the
    record key is the tenant, murmur2-partitioned), so budgets and duplicates stay exact."""
    if size > bounds.max_request_bytes:
        raise Rejected(f"the request is {size:,} bytes; at most {bounds.max_request_bytes:,} "
                       "are accepted")
    if key != tenant.encode():
        shown = "no key" if key is None else f"key {key[:80]!r}"
        raise Rejected(f"the record key must be the tenant id ({tenant!r}); this record has "
                       f"{shown}")
    if partitions and partition >= 0 and partition != tenant_partition(tenant, partitions):
        raise Rejected(f"tenant {tenant!r} belongs on partition "
                       f"{tenant_partition(tenant, partitions)} of {topic} (murmur2 of the "
                       f"key, Kafka's default partitioner); this record came on partition "
                       f"{partition}")


def check_request(r: Request, received_ms: int, bounds: RequestBounds) -> None:
    """Every field of the request; raises Rejected naming the first that is wrong."""
    why = invalid_text_in(r)
    if why:
        raise Rejected(why)
    _name("tenant", r.tenant, bounds)
    for name, value in (("tenant", r.tenant), ("team", r.team)):
        if value == RESERVED:
            raise Rejected(f"{name} {value!r} is reserved")
    for name, value in (("team", r.team), ("end_user", r.end_user), ("model", r.model)):
        if value is not None:
            _name(name, value, bounds)
    if r.created_at_ms is not None and not created_within(r.created_at_ms, received_ms, bounds):
        age = received_ms - r.created_at_ms
        raise Rejected(f"created_at_ms {r.created_at_ms} is {_span(age)} intake's clock "
                           f"({received_ms}); it must be within {bounds.max_age_ms // 1000:,} s "
                           f"before and {bounds.max_ahead_ms // 1000:,} s after")
    check_metadata(r.metadata, bounds)
    _params(r, bounds)
    if r.embedding is not None:
        check_embedding(r, bounds)
        return
    if not r.messages:
        raise Rejected("messages must contain at least one message")
    if len(r.messages) > bounds.max_messages:
        raise Rejected(f"messages holds {len(r.messages):,} messages; at most "
                       f"{bounds.max_messages:,} are accepted")
    for i, m in enumerate(r.messages):
        if m.role not in ROLES:
            raise Rejected(f"messages[{i}].role {m.role[:40]!r} is not one of {', '.join(ROLES)}")
        if m.name is not None:
            _name(f"messages[{i}].name", m.name, bounds)
    check_chat(r, bounds)
    if not any(has_content(m) for m in r.messages):
        raise Rejected("every message is empty")


def created_within(created_ms: int, received_ms: int, bounds: RequestBounds) -> bool:
    age = received_ms - created_ms
    return -bounds.max_ahead_ms <= age <= bounds.max_age_ms


def check_reply_topics(r: Request, topics: Topics, policy: TenantPolicy | None) -> None:
    """``reply_topic`` and ``chunk_topic``: valid names the tenant may write to."""
    for field, topic, default in (("reply_topic", r.reply_topic, topics.responses),
                                  ("chunk_topic", r.chunk_topic, topics.chunks)):
        if topic is None:
            continue
        why = invalid_topic_name(topic)
        if why:
            raise Rejected(f"{field} {why}")
        if not reply_topic_allowed(topic, default, policy, topics):
            raise Rejected(f"{field} {topic!r} is not allowed for tenant {r.tenant!r}: use "
                           f"{default!r} or a topic listed in the tenant policy's reply_topics")


def _name(field: str, value: str, bounds: RequestBounds) -> None:
    why = invalid_name(value, bounds.max_name_length)
    if why is None and SEP in value:
        why = "holds U+001F"
    if why:
        raise Rejected(f"{field} {why}")


def check_metadata(metadata: dict[str, str], bounds: RequestBounds) -> None:
    if len(metadata) > bounds.max_metadata_entries:
        raise Rejected(f"metadata has {len(metadata)} entries; at most "
                       f"{bounds.max_metadata_entries} are accepted")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if size > bounds.max_metadata_bytes:
        raise Rejected(f"metadata is {size:,} bytes; at most {bounds.max_metadata_bytes:,} are "
                       "accepted")
    for key in metadata:
        _name(f"metadata key {key[:40]!r}", key, bounds)


def _params(r: Request, bounds: RequestBounds) -> None:
    p, h = r.params, r.hints
    if len(r.cache_control) > MAX_CACHE_CONTROL:
        raise Rejected(f"cache_control is {len(r.cache_control)} characters; at most "
                       f"{MAX_CACHE_CONTROL} (no-cache, no-store)")
    if p.max_tokens is not None and p.max_tokens < 1:
        raise Rejected(f"params.max_tokens must be at least 1 (got {p.max_tokens})")
    if p.temperature is not None and not 0 <= p.temperature <= 2:
        raise Rejected(f"params.temperature must be within 0..2 (got {p.temperature})")
    if p.top_p is not None and not 0 <= p.top_p <= 1:
        raise Rejected(f"params.top_p must be within 0..1 (got {p.top_p})")
    if len(p.stop) > bounds.max_stop_sequences:
        raise Rejected(f"params.stop has {len(p.stop)} sequences; at most "
                       f"{bounds.max_stop_sequences} are accepted")
    for i, stop in enumerate(p.stop):
        if not stop or len(stop) > bounds.max_stop_length:
            raise Rejected(f"params.stop[{i}] must be 1..{bounds.max_stop_length} characters")
    if h.required_quality is not None and not 0 <= h.required_quality <= 1:
        raise Rejected(f"hints.required_quality must be within 0..1 (got {h.required_quality})")
    if h.max_latency_ms is not None and h.max_latency_ms < 1:
        raise Rejected(f"hints.max_latency_ms must be positive (got {h.max_latency_ms})")
    if h.budget_per_mtok is not None and h.budget_per_mtok < 0:
        raise Rejected(f"hints.budget_per_mtok must not be negative (got {h.budget_per_mtok})")
    if h.priority not in PRIORITIES:
        raise Rejected(f"hints.priority {h.priority[:40]!r} is not one of {', '.join(PRIORITIES)}")


def _span(age_ms: int) -> str:
    if age_ms >= 0:
        return f"{age_ms // 1000:,} s before"
    return f"{-age_ms // 1000:,} s after"
