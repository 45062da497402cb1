"""The event contracts (schemas/avro) as typed Python: one dataclass per record, the codec
that reads and writes them (Avro in the Confluent wire format, or JSON), and the rules for
the text and ids they carry. What other packages may use is listed in ``__all__``; the
modules behind it (registry, schemas, compat) are the codec's own business."""

from pipeline.events.codec import Codec, DecodeError, is_json
from pipeline.events.ids import SEP, request_key
from pipeline.events.models import (
    ERROR,
    EVENT_TYPES,
    OK,
    PRIORITIES,
    ROLES,
    Alert,
    AttemptRecord,
    Batch,
    BatchJob,
    Budget,
    Cancel,
    CanaryRule,
    ChatMessage,
    Chunk,
    DeadLetter,
    ErrorInfo,
    Event,
    GenerationParams,
    Request,
    Response,
    RouteDecision,
    RoutedRequest,
    RoutingHints,
    TenantPolicy,
    Usage,
)
from pipeline.events.text import invalid_name, invalid_text, invalid_text_in, scrub

__all__ = [
    "ERROR", "EVENT_TYPES", "OK", "PRIORITIES", "ROLES", "SEP",
    "Alert", "AttemptRecord", "Batch", "BatchJob", "Budget", "Cancel", "CanaryRule", "ChatMessage",
    "Chunk", "Codec", "DeadLetter", "DecodeError", "ErrorInfo", "Event", "GenerationParams",
    "Request", "Response", "RouteDecision", "RoutedRequest", "RoutingHints", "TenantPolicy", "Usage",
    "invalid_name", "invalid_text", "invalid_text_in", "is_json", "request_key", "scrub",
]
