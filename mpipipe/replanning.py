"""parallel.costs = 'measured': time the ops of the first steps, then re-plan the order once.

'unit' and F,B[,W] ratios are decided before the first step
(plan.choose_schedule). With 'measured', the first parallel.plan_after
steps run the unit order while the engine times every op per stage and
kind (runtime/op_costs.py). After the last of them every rank gathers every
rank's rows of those steps (one meeting of the trainer's rendezvous, its
waits watched) and computes from the same numbers the same costs and the
same order:

- per step, stage and kind: the seconds of every holder's ops over their
  count (a mean over mirror copies and data-parallel replicas);
- per stage and kind: the median over the measured steps, so the first
  step's one-time costs (allocation, kernel compilation) do not count
  unless it is the only one;
- in units of the fastest stage's forward, rounded to 1/COST_GRID (and at
  least that): the costs are the plan's only input, short and exact in the
  checkpoint;
- `plan(kind, D, N, costs)` within the kind's default memory cap (D
  micro-batches of L/D layers per rank), which replaces the unit order
  only where it simulates faster under those costs. Messages are not
  timed: the plan takes no latency.

The decision and its costs go into the schedule's options, which the
checkpoint records (checkpoint/plan_record.py), so a resume makes the same
decision from the saved costs, without measuring, and continues bitwise;
a resume before the re-plan goes on measuring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from mpipipe.checkpoint.plan_record import MEASURED_OPTION, PlanRecord
from mpipipe.cost_modes import MEASURED, UNIT
from mpipipe.plan import RunPlan
from mpipipe.runtime.op_costs import KINDS, OpTimes
from mpipipe.schedules import SCHEDULE_KINDS, OpCosts, order_depends_on_costs, plan, simulate
from mpipipe.schedules.schedule import Schedule

COST_GRID = 100  # measured costs are rounded to 1/100 of the fastest stage's forward


def measured_costs(rows: np.ndarray, stages: int, split_backward: bool) -> tuple[OpCosts, float]:
    """(costs per stage in units of the fastest stage's forward, that unit in seconds) from
    `rows` of shape (ranks, steps, 2 * stages * KINDS): every rank's OpTimes rows."""
    slots = stages * KINDS
    seconds = rows[:, :, :slots].sum(axis=0)
    counts = rows[:, :, slots:].sum(axis=0)
    per_step = np.divide(seconds, counts, out=np.zeros_like(seconds), where=counts > 0)
    typical = np.median(per_step, axis=0).reshape(stages, KINDS)
    unit = float(typical[:, 0].min())
    if not unit > 0:
        raise RuntimeError("parallel.costs = 'measured': some stage's forwards took no time")
    # At least one step of the grid: an op of no length has no place in a schedule's grid.
    grid = np.maximum(np.round(typical / unit * COST_GRID), 1) / COST_GRID
    per_stage = tuple(
        (float(forward), float(gradient), float(weight) if split_backward else 0.0)
        for forward, gradient, weight in grid
    )
    return OpCosts(per_stage=per_stage), unit


@dataclass(frozen=True)
class Choice:
    schedule: Schedule  # the order to run, its options saying what it was chosen for
    switched: bool  # the planned order replaces the unit order
    unit_makespan: float  # both simulated under the costs
    makespan: float


def choose_order(unit: Schedule, costs: OpCosts, memory_cap: float | None = None) -> Choice:
    """The order `unit`'s kind runs for measured `costs`: planned for them, where that
    simulates faster than `unit`; else `unit`. A function of its arguments alone."""
    planned = plan(unit.kind, unit.ranks, unit.microbatches, costs, memory_cap,
                   unit.options.get("chunks", 2))
    before = simulate(unit, costs).makespan
    after = simulate(planned, costs).makespan
    switched = after < before
    chosen = planned if switched else unit
    options = {**chosen.options, "costs": costs.to_text(),
               "memory_cap": planned.options["memory_cap"], MEASURED_OPTION: True}
    return Choice(replace(chosen, options=options), switched, before, after)


class Replanning:
    """What parallel.costs asks of a run once it trains: the notes to print, the steps to
    measure, and the re-plan."""

    def __init__(self, plan: RunPlan):
        parallel = plan.config.parallel
        schedule = plan.schedule
        self.enabled = parallel.costs == MEASURED and order_depends_on_costs(
            schedule.kind, schedule.ranks, schedule.microbatches
        )
        self.plan_after = parallel.plan_after
        self.replan_at: int | None = parallel.plan_after if self.enabled else None
        self.rows: list[list[float]] = []
        self.first_measured = 0
        self.notes = _notes(plan)

    @property
    def measuring(self) -> bool:
        return self.replan_at is not None

    def record(self, op_times: OpTimes) -> None:
        """Keep the op times of the step just run (call while `measuring`)."""
        self.rows.append(op_times.row())

    def due(self, next_step: int) -> bool:
        """Whether the re-plan comes before `next_step`."""
        return self.replan_at is not None and next_step >= self.replan_at

    def replan(
        self, gather: Callable[[object], list], run_plan: RunPlan
    ) -> tuple[RunPlan, str]:
        """Collective: the plan to run from now on, and the line that says what changed.
        `gather(record)` gives every rank the records of ranks 0, 1, ... (the trainer's
        rendezvous, whose waits are watched)."""
        gathered = np.asarray(gather(np.asarray(self.rows, dtype=np.float64)))
        schedule = run_plan.schedule
        costs, unit_s = measured_costs(gathered, schedule.stages, schedule.split_backward)
        choice = choose_order(schedule, costs)
        steps = f"{self.first_measured}-{self.first_measured + len(self.rows) - 1}"
        self.replan_at, self.rows = None, []
        what = (
            f"parallel.costs = 'measured': the op times of steps {steps}, per stage in units of "
            f"{unit_s * 1e3:.3g} ms, are {costs.describe(schedule.split_backward)}"
        )
        if choice.switched:
            change = choice.makespan / choice.unit_makespan - 1
            message = (
                f"{what}; re-planned {schedule.kind} for them: simulated step "
                f"{choice.unit_makespan:g} -> {choice.makespan:g} units ({change:+.1%}), ops "
                f"{choice.schedule.digest()}"
            )
        else:
            message = (
                f"{what}; {schedule.kind} keeps its order: the order planned for them simulates "
                f"no faster ({choice.makespan:g} units, against {choice.unit_makespan:g})"
            )
        return replace(run_plan, schedule=choice.schedule), message

    def resume(self, record: PlanRecord, run_plan: RunPlan) -> tuple[RunPlan, str]:
        """The plan to continue the checkpoint `record` describes with, and a line for the log
        ('' for none): the order chosen again from its measured costs where they fit this run,
        else the unit order, measured again."""
        if not self.enabled:
            return run_plan, ""
        schedule = run_plan.schedule
        if record.measured and record.source == run_plan.config.parallel.schedule:
            costs = OpCosts.from_text(record.costs)
            if len(costs.per_stage) == schedule.stages:
                choice = choose_order(schedule, costs, record.memory_cap or None)
                self.replan_at, self.rows = None, []
                return replace(run_plan, schedule=choice.schedule), (
                    "parallel.costs = 'measured': the order is chosen again for the "
                    f"checkpoint's measured costs ({costs.describe(schedule.split_backward)}), "
                    "not measured again"
                )
        self.rows = []
        self.first_measured = record.step
        before = record.step < self.plan_after
        self.replan_at = self.plan_after if before else record.step + self.plan_after
        note = (
            "" if not record.measured else
            "parallel.costs = 'measured': the checkpoint's measured costs are for another "
            "schedule or stage count; measuring again"
        )
        return run_plan, note


def _notes(run_plan: RunPlan) -> list[str]:
    """What parallel.costs does not do for this run, said once."""
    parallel = run_plan.config.parallel
    if parallel.costs == UNIT:
        return []
    if parallel.schedule not in SCHEDULE_KINDS:
        return [f"note: parallel.costs = {parallel.costs!r} is not used with a schedule file: "
                "its order runs as written"]
    schedule = run_plan.schedule
    if order_depends_on_costs(schedule.kind, schedule.ranks, schedule.microbatches):
        return []
    consequence = "not measured or re-planned" if parallel.costs == MEASURED else "not planned"
    return [
        f"note: parallel.costs = {parallel.costs!r}: {schedule.kind}'s order at "
        f"D={schedule.ranks}, N={schedule.microbatches} does not depend on the op costs, so "
        f"it is {consequence}; it runs its reference order"
    ]
