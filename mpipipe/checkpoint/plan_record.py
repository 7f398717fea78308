"""What a checkpoint records of how its schedule's order was chosen, so a resume can choose it
again without measuring.

    schedule_costs          OpCosts.to_text() of the costs the order was planned for
                            ('' for an order not planned for costs: a reference order, a file)
    schedule_memory_cap     the cap it was planned within, micro-batches of L/D layers per
                            rank (0 where not planned)
    schedule_costs_measured whether those costs are a run's measured op times
                            (parallel.costs = 'measured' after its re-plan)

They come from the schedule's options, where plan() and the re-plan put them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpipipe.checkpoint.schedule_identity import DIGEST_ATTRIBUTE, SOURCE_ATTRIBUTE
from mpipipe.errors import UsageError
from mpipipe.schedules.schedule import Schedule
from mpipipe.schedules.simulate import OpCosts

COSTS_ATTRIBUTE = "schedule_costs"
MEMORY_CAP_ATTRIBUTE = "schedule_memory_cap"
MEASURED_ATTRIBUTE = "schedule_costs_measured"
MEASURED_OPTION = "measured"  # the Schedule.options key the re-plan sets


def plan_attributes(schedule: Schedule) -> dict[str, object]:
    options = schedule.options
    return {
        COSTS_ATTRIBUTE: str(options.get("costs", "")),
        MEMORY_CAP_ATTRIBUTE: np.float64(options.get("memory_cap", 0.0)),
        MEASURED_ATTRIBUTE: np.bool_(bool(options.get(MEASURED_OPTION, False))),
    }


@dataclass(frozen=True)
class PlanRecord:
    step: int
    source: str  # parallel.schedule the checkpoint was trained with ('' if not recorded)
    digest: str
    costs: str
    memory_cap: float
    measured: bool


def read_plan_record(path: str) -> PlanRecord:
    """The plan attributes of the checkpoint at `path` (empty where an older file lacks them).

    Read before the checkpoint is loaded (the resume chooses its order first), so odd
    values of the other attributes read as empty here: loading names what is wrong."""
    from mpipipe.checkpoint.load import open_checkpoint  # load -> attributes -> this module

    with open_checkpoint(path) as file:
        attrs = file.attrs
        step = attrs.get("step")
        costs = attrs.get(COSTS_ATTRIBUTE, "")
        if not isinstance(costs, str):
            costs = ""
        if costs:
            try:
                OpCosts.from_text(costs)
            except UsageError:
                raise UsageError(
                    f"checkpoint {path}: attribute {COSTS_ATTRIBUTE} is {costs!r}, not costs "
                    "as OpCosts.to_text writes them: the file's metadata is damaged; resume "
                    "from an earlier checkpoint"
                ) from None
        cap = attrs.get(MEMORY_CAP_ATTRIBUTE, 0.0)
        measured = attrs.get(MEASURED_ATTRIBUTE, False)
        return PlanRecord(
            step=int(step) if isinstance(step, (int, np.integer)) else 0,
            source=str(attrs.get(SOURCE_ATTRIBUTE, "")),
            digest=str(attrs.get(DIGEST_ATTRIBUTE, "")),
            costs=costs,
            memory_cap=float(cap) if isinstance(cap, (float, np.floating)) else 0.0,
            measured=isinstance(measured, (bool, np.bool_)) and bool(measured),
        )
