"""The search's figures for the benchmarks, each search run once per output folder.

A search (`mpipipe schedule search`) takes seconds to minutes, and the
emulated table and the schedule table ask for some of the same ones
(BitPipe's placement at the same D, N and costs), so every result is kept in
`searches.json` in the bench's folder under everything that decides it:
placement, split or not, D, N, the costs per op of the placement's own stage,
the memory cap, the time limit and the solver threads. A later part, or a
later run into the same folder, reads it instead of searching again. Without
OR-Tools there are no figures (`available()` is False) and the tables say so.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from mpipipe.bench.optional import installed
from mpipipe.schedules import stage_count
from mpipipe.schedules.simulate import OpCosts

CACHE_FILE = "searches.json"
DEFAULT_TIME_LIMIT_S = 20.0  # per search, in the emulated column and the schedule table
QUICK_TIME_LIMIT_S = 2.0
SKIPPED = "the search needs OR-Tools (pip install mpipipe[search])"


@dataclass
class SearchFigures:
    best: float  # makespan of the best order found
    bound: float  # the solver's proven lower bound on any order's makespan
    optimal: bool

    @property
    def gap(self) -> float:
        return (self.best - self.bound) / self.best if self.best else 0.0


def available() -> bool:
    return installed("ortools")


def same_model_costs(profile: str, placement: str, ranks: int) -> OpCosts:
    """The profile F,B[,W] per op of the placement's own stage, on the same model: scaled by
    D/S (each placement is named after the kind it comes from)."""
    return OpCosts.parse(profile).scaled(ranks / stage_count(placement, ranks))


class SearchCache:
    """Search figures by everything that decides them, kept in `folder`/searches.json."""

    def __init__(self, folder: str | None, time_limit_s: float, workers: int):
        self.path = None if folder is None else os.path.join(folder, CACHE_FILE)
        self.time_limit_s = time_limit_s
        self.workers = workers
        self.entries: dict[str, dict] = {}
        if self.path is not None and os.path.exists(self.path):
            with open(self.path) as handle:
                self.entries = json.load(handle)

    def figures(
        self, placement: str, ranks: int, microbatches: int, costs: OpCosts, split: bool,
        memory_cap: float | None = None,
    ) -> SearchFigures:
        """The search of `placement` (cap: the kind's own peak unless given), from the file
        when it has been run with the same settings, else run now and kept."""
        from mpipipe.schedules.search import default_memory_cap, search

        cap = default_memory_cap(placement, ranks, microbatches) if memory_cap is None else (
            memory_cap)
        if not split and not costs.per_stage:  # whole backwards: W's share does not matter
            costs = OpCosts(costs.forward, costs.backward, latency=costs.latency)
        key = "|".join(map(str, (placement, split, ranks, microbatches, costs.to_text(), cap,
                                 self.time_limit_s, self.workers)))
        if key not in self.entries:
            result = search(placement, ranks, microbatches, costs, split, cap,
                            self.time_limit_s, self.workers)
            self.entries[key] = asdict(SearchFigures(result.makespan, result.bound,
                                                     result.optimal))
            self._write()
        return SearchFigures(**self.entries[key])

    def _write(self) -> None:
        if self.path is None:
            return
        partial = self.path + ".partial"
        with open(partial, "w") as handle:
            json.dump(self.entries, handle, indent=1, sort_keys=True)
        os.replace(partial, self.path)
