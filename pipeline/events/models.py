"""Typed mirrors of the Avro event contracts in schemas/avro (one dataclass per record).

Modules pass these, never loose dicts. ``tests/unit/test_schemas.py`` proves every mirror
matches its schema field by field (names, order, optionality and defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import ClassVar, Optional

from pipeline.events.event import Event

OK = "ok"
ERROR = "error"
PRIORITIES = ("interactive", "standard", "batch")
ROLES = ("system", "user", "assistant", "tool")
TEXT, IMAGE_URL = "text", "image_url"                   # ContentPart.type
TOOL_CHOICE_MODES = ("none", "auto", "required", "function")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")


# --- Request -------------------------------------------------------------------------

@dataclass
class ContentPart(Event):
    type: str
    text: str = ""
    url: Optional[str] = None
    detail: Optional[str] = None


@dataclass
class ToolCall(Event):
    id: str
    name: str
    arguments: str


@dataclass
class ChatMessage(Event):
    role: str
    content: str
    name: Optional[str] = None
    parts: list[ContentPart] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: Optional[str] = None

    @property
    def text(self) -> str:
        """The message's text: its content, or its text parts joined by newlines."""
        if not self.parts:
            return self.content
        return "\n".join(p.text for p in self.parts if p.type == TEXT)

    @property
    def images(self) -> list[ContentPart]:
        return [p for p in self.parts if p.type == IMAGE_URL]


@dataclass
class GenerationParams(Event):
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    n: int = 1
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None


@dataclass
class Tool(Event):
    name: str
    description: Optional[str] = None
    parameters: str = "{}"
    strict: bool = False


@dataclass
class ToolChoice(Event):
    mode: str
    name: Optional[str] = None


@dataclass
class ResponseFormat(Event):
    type: str
    name: Optional[str] = None
    schema: Optional[str] = None
    strict: bool = False


@dataclass
class EmbeddingInput(Event):
    inputs: list[str]
    dimensions: Optional[int] = None


@dataclass
class RoutingHints(Event):
    required_quality: Optional[float] = None
    max_latency_ms: Optional[int] = None
    budget_per_mtok: Optional[Decimal] = None
    priority: str = "standard"


@dataclass
class Request(Event):
    AVRO_NAME: ClassVar[str] = "Request"
    request_id: str
    tenant: str
    messages: list[ChatMessage]
    team: Optional[str] = None
    end_user: Optional[str] = None
    created_at_ms: Optional[int] = None
    model: Optional[str] = None
    params: GenerationParams = field(default_factory=GenerationParams)
    hints: RoutingHints = field(default_factory=RoutingHints)
    reply_topic: Optional[str] = None
    metadata: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    chunk_topic: Optional[str] = None
    tools: list[Tool] = field(default_factory=list)
    tool_choice: Optional[ToolChoice] = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[ResponseFormat] = None
    embedding: Optional[EmbeddingInput] = None
    cache_control: str = ""


# --- RoutedRequest -------------------------------------------------------------------

@dataclass
class RouteDecision(Event):
    deployment: str
    model: str
    provider: str
    rule: str
    region: str = ""
    task_class: str = ""
    complexity: Optional[float] = None
    candidates: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class AttemptRecord(Event):
    deployment: str
    error_code: str
    attempts: int = 1


@dataclass
class RoutedRequest(Event):
    AVRO_NAME: ClassVar[str] = "RoutedRequest"
    request: Request
    route: RouteDecision
    max_tokens: int
    reply_topic: str
    received_at_ms: int
    routed_at_ms: int
    tenant_partition: int = -1
    canary: str = ""
    baseline_model: str = ""
    fallbacks: list[str] = field(default_factory=list)
    tried: list[AttemptRecord] = field(default_factory=list)
    estimated_prompt_tokens: int = 0
    reply_format: str = "avro"
    cache_key: str = ""
    cache_ttl_s: int = 0
    cache_scope: str = ""
    cache_cost_nanos: int = 0
    context_tokens_before: int = 0
    context_tokens_after: int = 0
    context_note: str = ""


@dataclass
class Batch(Event):
    AVRO_NAME: ClassVar[str] = "Batch"
    batch_id: str
    deployment: str
    opened_at_ms: int
    flushed_at_ms: int
    items: list[RoutedRequest]
    priority: str = "standard"
    fill_reason: str = "size"


@dataclass
class BatchJob(Event):
    AVRO_NAME: ClassVar[str] = "BatchJob"
    job_id: str
    deployment: str
    adapter: str
    provider_job_id: str
    submitted_at_ms: int
    updated_at_ms: int
    input_file_id: str = ""
    state: str = "submitted"
    revision: int = 0
    provider_status: str = ""
    succeeded: int = 0
    retried: int = 0
    failed: int = 0
    items: list[RoutedRequest] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)


# --- Response and Usage --------------------------------------------------------------

@dataclass
class ErrorInfo(Event):
    code: str
    message: str
    retryable: bool = False
    retry_after_ms: Optional[int] = None


@dataclass
class Choice(Event):
    index: int
    content: Optional[str] = None
    finish_reason: Optional[str] = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    refusal: Optional[str] = None
    logprobs: Optional[str] = None


@dataclass
class Response(Event):
    AVRO_NAME: ClassVar[str] = "Response"
    request_id: str
    tenant: str
    status: str
    completed_at_ms: int
    content: Optional[str] = None
    finish_reason: Optional[str] = None
    error: Optional[ErrorInfo] = None
    model: Optional[str] = None
    deployment: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_nanos: int = 0
    attempts: int = 0
    tried: list[str] = field(default_factory=list)
    latency_ms: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    tool_calls: list[ToolCall] = field(default_factory=list)
    refusal: Optional[str] = None
    logprobs: Optional[str] = None
    more_choices: list[Choice] = field(default_factory=list)
    embeddings: list[list[float]] = field(default_factory=list)
    cache: str = ""
    cache_similarity: Optional[float] = None
    context: str = ""

    def rest_after(self, sent: str) -> str | None:
        """The answer's text a stream that carried ``sent`` has not carried yet ("" when
        none); None when ``sent`` is not the start of it (a call re-done after a crash
        answered differently)."""
        content = self.content or ""
        return content[len(sent):] if content.startswith(sent) else None


@dataclass
class Usage(Event):
    AVRO_NAME: ClassVar[str] = "Usage"
    request_id: str
    tenant: str
    created_at_ms: int
    completed_at_ms: int
    status: str
    team: str = ""
    end_user: str = ""
    routed_at_ms: int = 0
    first_token_at_ms: int = 0
    error_code: str = ""
    requested_model: str = ""
    routed_model: str = ""
    served_model: str = ""
    provider: str = ""
    deployment: str = ""
    region: str = ""
    route_rule: str = ""
    task_class: str = ""
    attempts: int = 0
    fallbacks: int = 0
    batch_id: str = ""
    batch_size: int = 0
    cache: str = "miss"
    cache_kind: str = ""
    cache_saved_nanos: int = 0
    cache_cost_nanos: int = 0
    context_tokens_before: int = 0
    context_tokens_after: int = 0
    context_saved_nanos: int = 0
    for_request_id: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_nanos: int = 0
    baseline_cost_nanos: int = 0
    price_version: str = ""
    queue_ms: int = 0
    pipeline_ms: int = 0
    provider_ms: int = 0
    canary: str = ""


@dataclass
class ToolCallDelta(Event):
    index: int
    id: Optional[str] = None
    name: Optional[str] = None
    arguments: str = ""


@dataclass
class Chunk(Event):
    AVRO_NAME: ClassVar[str] = "Chunk"
    request_id: str
    tenant: str
    stream_id: str
    seq: int
    delta: str
    at_ms: int
    model: Optional[str] = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


@dataclass
class CacheFill(Event):
    AVRO_NAME: ClassVar[str] = "CacheFill"
    tenant: str
    op: str
    at_ms: int
    key: str = ""
    expires_at_ms: int = 0
    scope: str = ""
    text: str = ""
    answer: Optional[Response] = None


@dataclass
class Cancel(Event):
    AVRO_NAME: ClassVar[str] = "Cancel"
    request_id: str
    tenant: str
    at_ms: int
    reason: str = ""


# --- Alerts, dead letters, tenant policy -----------------------------------------------

@dataclass
class Alert(Event):
    AVRO_NAME: ClassVar[str] = "Alert"
    alert_id: str
    rule: str
    state: str
    value: str
    threshold: str
    at_ms: int
    severity: str = "warning"
    tenant: str = "*"
    subject: str = ""
    window: str = ""
    message: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class DeadLetter(Event):
    AVRO_NAME: ClassVar[str] = "DeadLetter"
    source_topic: str
    source_partition: int
    source_offset: int
    reason_code: str
    reason: str
    agent: str
    at_ms: int
    key: Optional[bytes] = None
    value: Optional[bytes] = None
    request_id: Optional[str] = None
    tenant: Optional[str] = None


@dataclass
class Budget(Event):
    period: str
    team: Optional[str] = None
    soft_usd: Optional[Decimal] = None
    hard_usd: Optional[Decimal] = None


@dataclass
class CanaryRule(Event):
    name: str
    percent: int
    model: str
    min_success_rate: float = 0.995
    max_p95_ms: int = 500
    min_samples: int = 50
    window: int = 200


@dataclass
class TenantPolicy(Event):
    AVRO_NAME: ClassVar[str] = "TenantPolicy"
    tenant: str
    allowed_models: list[str] = field(default_factory=list)
    denied_models: list[str] = field(default_factory=list)
    default_quality: Optional[float] = None
    baseline_model: Optional[str] = None
    budgets: list[Budget] = field(default_factory=list)
    canary: Optional[CanaryRule] = None
    truncation_allowed: bool = False
    cache_enabled: bool = True
    cache_ttl_s: int = 3600
    cache_kinds: list[str] = field(default_factory=list)
    cache_max_entries: int = 10000
    cache_threshold: float = 0.95
    context: str = ""
    updated_at_ms: int = 0
    reply_topics: list[str] = field(default_factory=list)
    api_keys: list[str] = field(default_factory=list)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.AVRO_NAME: cls
    for cls in (Request, RoutedRequest, Batch, BatchJob, Response, Chunk, Cancel, CacheFill, Usage,
                Alert, DeadLetter, TenantPolicy)
}
