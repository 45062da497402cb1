"""Provider adapters: one per wire protocol, chosen by a deployment's ``adapter``."""

from __future__ import annotations

import httpx

from pipeline.providers.deployments import CallLimits, Deployment
from pipeline.providers.anthropic import AnthropicAdapter
from pipeline.providers.base import Adapter, Completion
from pipeline.providers.gemini import GeminiAdapter
from pipeline.providers.http import HTTPAdapter
from pipeline.providers.openai import OpenAIAdapter
from pipeline.secrets import Secret

ADAPTER_CLASSES: dict[str, type[HTTPAdapter]] = {
    "openai": OpenAIAdapter,
    "anthropic": AnthropicAdapter,
    "gemini": GeminiAdapter,
}


def make_adapter(deployment: Deployment, key: Secret, limits: CallLimits,
                 transport: httpx.AsyncBaseTransport | None = None) -> Adapter:
    """The adapter speaking ``deployment.adapter``'s protocol to ``deployment``."""
    try:
        cls = ADAPTER_CLASSES[deployment.adapter]
    except KeyError:
        raise ValueError(f"{deployment.id}: unknown adapter {deployment.adapter!r} "
                         f"(expected one of {sorted(ADAPTER_CLASSES)})") from None
    return cls(deployment, key, limits, transport=transport)


__all__ = ["ADAPTER_CLASSES", "Adapter", "AnthropicAdapter", "Completion", "GeminiAdapter",
           "OpenAIAdapter", "make_adapter"]
