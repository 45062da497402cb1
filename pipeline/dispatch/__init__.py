"""Dispatch: each routed request called on its deployment behind the deployment's guard,
retried, hedged or failed over, and ended with one Response and one Usage
(dispatcher.py); which hops already ended, so a re-read Batch does not call the provider
again (hops.py). Plain Python; its Faust wiring is pipeline/agents/dispatch.py."""

from pipeline.dispatch.dispatcher import DEGRADED, NO_FAILOVER, Dispatcher
from pipeline.dispatch.hops import FinishedHops, hop_key

__all__ = ["DEGRADED", "NO_FAILOVER", "Dispatcher", "FinishedHops", "hop_key"]
