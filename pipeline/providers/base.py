"""What every provider adapter returns: one completion with the provider's usage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from pipeline.events.models import RoutedRequest

# Awaited with each piece of text a streamed call receives, in order, as it arrives.
OnDelta = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Completion:
    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    provider_ms: int
    # ms from the call's start to its first text delta; 0 when the call was not streamed
    # (or streamed no text), since then the first token comes with the whole answer.
    ttft_ms: int = 0


class Adapter(Protocol):
    async def complete(self, routed: RoutedRequest,
                       on_delta: OnDelta | None = None) -> Completion: ...
    async def aclose(self) -> None: ...
