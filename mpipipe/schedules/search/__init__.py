"""The yardstick: the best order of one placement's ops that CP-SAT finds, with a proven bound.

    result = search("bitpipe", ranks=4, microbatches=8, costs=OpCosts(1, 2, backward_weight=1),
                    split_backward=True, time_limit=30)
    result.makespan, result.bound, result.gap, result.schedule

The model (model.py) has every op of the placement with its duration, the
simulator's dependencies (plus the latency across ranks), no two ops at
once on a rank, at most `memory_cap` micro-batches of L/D layers held per
rank (a chunk-micro-batch from its F's start to its B's or W's end) and
minimises the makespan. The solver starts from the best order the planners
find (hint.py). OR-Tools is optional (`pip install mpipipe[search]`) and
imported only when a search runs.
"""

from __future__ import annotations

from mpipipe.schedules.search.run import SearchResult, default_memory_cap, search

__all__ = ["SearchResult", "default_memory_cap", "search"]
