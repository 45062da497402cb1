"""What every provider adapter returns: one completion with the provider's usage."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pipeline.events.models import Choice, RoutedRequest, ToolCall, ToolCallDelta


class OnDelta(Protocol):
    """Awaited with each piece of a streamed answer, in order, as it arrives: text, and
    the function-call pieces that came with it (OpenAI's index/id/name/arguments shape)."""

    def __call__(self, text: str, tool_calls: Sequence[ToolCallDelta] = ()) -> Awaitable[None]: ...


@dataclass(frozen=True)
class Completion:
    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int          # every choice's output tokens
    cached_tokens: int
    provider_ms: int
    # ms from the call's start to its first streamed piece (text or tool call); 0 when the
    # call was not streamed (or streamed nothing), since then the first token comes with
    # the whole answer.
    ttft_ms: int = 0
    tool_calls: tuple[ToolCall, ...] = ()        # the first choice's function calls
    refusal: str | None = None
    logprobs: str | None = None                  # the first choice's, as JSON text
    more_choices: tuple[Choice, ...] = ()        # choices 1.. of a request with n > 1
    embeddings: tuple[list[float], ...] = ()     # an embedding call's vectors, in input order


class Adapter(Protocol):
    async def complete(self, routed: RoutedRequest,
                       on_delta: OnDelta | None = None) -> Completion: ...
    async def embed(self, routed: RoutedRequest) -> Completion: ...
    async def aclose(self) -> None: ...


def provider_call(adapter: Adapter, routed: RoutedRequest,
                  on_delta: OnDelta | None = None) -> Awaitable[Completion]:
    """The call a routed request needs: its embeddings, or its chat completion (streamed
    when ``on_delta`` is given)."""
    if routed.request.embedding is not None:
        return adapter.embed(routed)
    return adapter.complete(routed) if on_delta is None else adapter.complete(routed, on_delta)
