"""Provider Batch API offload: batch-priority micro-batches become OpenAI or Anthropic batch
jobs (about 50% cheaper, results within hours), their state on the compacted topic
llm.batch-jobs, polled with backoff and turned back into ordinary Responses and Usage."""
