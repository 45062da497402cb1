"""Context management: pure transforms over a request's messages that cut the prompt tokens
sent (normalise.py: whitespace and duplicates; retrieved.py and relevance.py: retrieved-
passage pruning by BM25; window.py and summary.py: the history window and its summary),
chosen per tenant and per request by policy.py and applied in order by compress.py.
workload.py is the long-conversation and RAG workload `llmpipe bench context` measures."""

from pipeline.context.compress import Decision, Step, compress
from pipeline.context.normalise import Normalised, normalise, normalise_text
from pipeline.context.policy import OVERRIDE_KEY, ContextPolicy, ContextPolicyError
from pipeline.context.relevance import bm25_scores, relevance, terms
from pipeline.context.retrieved import (RETRIEVED, Pruned, is_passage, last_question,
                                       prune_retrieved)
from pipeline.context.summary import (SUMMARY_PREFIX, prefix_key, splice_summary, summary_prompt,
                                      transcript)
from pipeline.context.window import Windowed, turns_of, window

__all__ = [
    "OVERRIDE_KEY", "RETRIEVED", "SUMMARY_PREFIX", "ContextPolicy", "ContextPolicyError",
    "Decision", "Normalised", "Pruned", "Step", "Windowed", "bm25_scores", "compress",
    "is_passage", "last_question", "normalise", "normalise_text", "prefix_key",
    "prune_retrieved", "relevance", "splice_summary", "summary_prompt", "terms", "transcript",
    "turns_of", "window",
]
