"""The cyclic garbage collector, set for a long-running process (worker, gateway).

Python's defaults collect the young generation every 700 net allocations, and the whole
heap whenever the old generations have grown by a quarter. In a worker that heap is mostly
what start-up made and keeps until exit: Faust, aiokafka, aiohttp, chDB's bindings, the
catalog, ~140,000 objects. A c=200 bench run of the front worker made four full collections
of ~100 ms of CPU each, the event loop held for every one of them, and ~0.2 ms of CPU per
request in the collector (docs/BENCHMARKS.md, "the garbage collector").

:func:`settle_heap` moves what start-up made out of the collector's sight (``gc.freeze``)
and collects the young generation every ``young`` allocations instead of 700. Reference
counting frees everything else at once, as before; only garbage caught in reference cycles
waits longer, a collection of at most ``young`` young objects.
"""

from __future__ import annotations

import gc


def settle_heap(young: int) -> None:
    """Call once, when start-up is done. ``young`` <= 0 leaves Python's collector as it is."""
    if young <= 0:
        return
    gc.collect()        # what start-up left as garbage goes now, not frozen forever
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
