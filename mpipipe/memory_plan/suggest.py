"""The smallest change that makes a run fit a memory budget, tried on the planner itself.

Candidates, from the least to the most disruptive, each a set of config
values (`--set` overrides): recompute the attention probabilities, then
whole blocks (more compute, same numbers); shard the optimizer state over
the replicas (parallel.zero = 1, where data_parallel >= 2); split each
micro-batch in 2, 4, ... while doubling the micro-batches (the same global
batch); then more pipeline ranks (2x, 4x the MPI ranks). Every single
change is tried first, then each pair. A candidate the run would refuse
(a schedule that needs N a multiple of D, blocks that do not divide into
stages) is skipped; the first that the planner predicts fits is the answer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from itertools import combinations

from mpipipe.config.schema import Config
from mpipipe.errors import UsageError
from mpipipe.memory_plan.predict import MemoryPlan, predict_memory
from mpipipe.recompute_policy import RECOMPUTE_POLICIES


@dataclass(frozen=True)
class Change:
    """Config values to set (section.key -> value), the world size they need, the result."""

    values: dict[str, object]
    world_size: int
    plan: MemoryPlan

    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.values.items()]

    def describe(self) -> str:
        sets = " ".join(f"--set {override}" for override in self.overrides())
        return sets + (f" --ranks {self.world_size}" if "parallel.pipeline" in self.values else "")


def candidate_changes(plan: MemoryPlan) -> list[tuple[dict[str, object], int]]:
    """Single changes in the order tried: (config values, world size)."""
    config, world = plan.config, plan.world_size
    parallel, runtime, data = config.parallel, config.runtime, config.data
    singles: list[tuple[dict[str, object], int]] = []
    current = RECOMPUTE_POLICIES.index(runtime.recompute)
    singles += [({"runtime.recompute": policy}, world)
                for policy in RECOMPUTE_POLICIES[current + 1:]]
    if parallel.data_parallel >= 2 and parallel.zero == 0:
        singles.append(({"parallel.zero": 1}, world))
    factor = 2
    while data.microbatch_size % factor == 0:
        singles.append(({"data.microbatch_size": data.microbatch_size // factor,
                         "parallel.microbatches": parallel.microbatches * factor}, world))
        factor *= 2
    for factor in (2, 4):
        singles.append(({"parallel.pipeline": parallel.pipeline * factor}, world * factor))
    return singles


def smallest_fix(plan: MemoryPlan, budget: int) -> Change | None:
    """The first candidate (singles, then pairs) the planner predicts fits `budget`."""
    singles = candidate_changes(plan)
    pairs = [
        ({**first, **second}, max(world_a, world_b))
        for (first, world_a), (second, world_b) in combinations(singles, 2)
        if not set(first) & set(second)
    ]
    for values, world in singles + pairs:
        changed = _predict_with(plan.config, values, world)
        if changed is not None and changed.fits(budget):
            return Change(values, world, changed)
    return None


def _predict_with(config: Config, values: dict[str, object], world: int) -> MemoryPlan | None:
    changed = copy.deepcopy(config)
    for name, value in values.items():
        section, key = name.split(".")
        setattr(getattr(changed, section), key, value)
    try:
        return predict_memory(changed, world)
    except UsageError:
        return None  # a layout the run would refuse
