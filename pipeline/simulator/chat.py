"""A chat call and its answer in no particular wire shape: what a shape parses a request
into (``ChatRequest``: messages, tools, output format, n, stop, seed) and what the core
answers with (``Choice``: text or tool calls, finish reason, completion tokens).

Images count a fixed number of prompt tokens each, whatever their size, per shape:
OpenAI 765 (85 with ``detail: low``; 765 is a 1024x1024 high-detail image, 4 tiles of 170
plus 85), Anthropic 1,600 (a ~1.15-megapixel image at (width*height)/750), Gemini 258 (its
documented cost of an image up to 384 px; larger ones are tiled, not simulated)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OPENAI_IMAGE_TOKENS = 765
OPENAI_LOW_DETAIL_IMAGE_TOKENS = 85
ANTHROPIC_IMAGE_TOKENS = 1600
GEMINI_IMAGE_TOKENS = 258

# What a model can be asked for beyond plain text (simulator.yaml ``features``).
FEATURES = frozenset({"vision", "tools", "json_object", "json_schema", "n", "logprobs"})


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str                 # JSON text, as OpenAI carries it


@dataclass(frozen=True)
class Message:
    role: str                      # system | user | assistant | tool
    text: str
    tool_calls: tuple[ToolCall, ...] = ()   # an assistant turn's calls
    tool_name: str | None = None            # a tool result: the tool that answered


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]     # a JSON Schema (OpenAPI's upper-case types too)


@dataclass(frozen=True)
class ToolChoice:
    mode: str = "auto"             # none | auto | required | function
    name: str | None = None        # mode "function": the one to call
    allowed: tuple[str, ...] = ()  # Gemini allowedFunctionNames; empty: every tool


@dataclass(frozen=True)
class OutputFormat:
    kind: str = "text"             # text | json_object | json_schema
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class ChatRequest:
    """A chat call in no particular wire shape."""
    model: str                     # provider-side name as sent
    messages: tuple[Message, ...]
    max_tokens: int | None
    stream: bool = False
    n: int = 1
    stop: tuple[str, ...] = ()
    # Set when the caller asked for a repeatable answer (temperature 0, with a seed where
    # the provider takes one): a digest of everything that shapes the answer.
    repeatable: str | None = None
    output: OutputFormat = OutputFormat()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    parallel_tool_calls: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    extra_prompt_tokens: int = 0   # images and tool/schema definitions
    features: frozenset[str] = field(default_factory=frozenset)  # what the call needs
    call_prefix: str = "call_"     # tool call ids: OpenAI call_..., Anthropic toolu_...


@dataclass(frozen=True)
class Choice:
    content: str | None
    finish_reason: str             # stop | length | tool_calls
    completion_tokens: int
    tool_calls: tuple[ToolCall, ...] = ()
    stop_sequence: str | None = None  # the stop string that ended the text, if one did
