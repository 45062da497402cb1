"""What every provider adapter returns: one completion with the provider's usage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pipeline.events.models import RoutedRequest


@dataclass(frozen=True)
class Completion:
    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    provider_ms: int


class Adapter(Protocol):
    async def complete(self, routed: RoutedRequest) -> Completion: ...
    async def aclose(self) -> None: ...
