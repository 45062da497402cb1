"""The HTTP door: an OpenAI-compatible API (``llmpipe gateway``) in front of the Kafka
pipeline. Callers authenticate with an API key, which names their tenant; the gateway
publishes their request to llm.requests and answers from its own reply topics."""
