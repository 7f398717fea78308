"""Show a simulated schedule as a text grid or a Chrome/Perfetto trace.

The PNG figure is drawn by `mpipipe.plots.schedule`: this layer knows no plotting library.
"""

from __future__ import annotations

import math
from fractions import Fraction

from mpipipe.errors import UsageError
from mpipipe.schedules.ops import OpType
from mpipipe.schedules.schedule import Schedule
from mpipipe.schedules.simulate import OpCosts, Simulation

_MAX_SLOTS = 20000


def timeline_text(simulation: Simulation) -> str:
    """One row per rank, one column per time slot (mpipipe/DESIGN.md, "The reference grid").

    A slot is the largest time unit that divides every start and end; an op
    fills its first slot with its name and the rest with '=', '.' is idle.
    SYNC ops take no time; their start times follow the grid.
    """
    timed_ops = [
        timed
        for rank_ops in simulation.timeline
        for timed in rank_ops
        if timed.op.type is not OpType.SYNC
    ]
    times = [_exact(time) for timed in timed_ops for time in (timed.start, timed.end)]
    unit = _common_divisor([time for time in times if time > 0]) or Fraction(1)
    slots = math.ceil(_exact(simulation.makespan) / unit)
    if slots > _MAX_SLOTS:
        raise UsageError(
            f"--format text: these costs need {float(slots):.3g} time slots of {float(unit):g} "
            "per row "
            f"(at most {_MAX_SLOTS}); use rounder costs, or --format png or json"
        )
    width = max([len(str(timed.op)) for timed in timed_ops] + [len(str(slots - 1))])
    rows = []
    for rank, rank_ops in enumerate(simulation.timeline):
        cells = ["."] * slots
        for timed in rank_ops:
            if timed.op.type is OpType.SYNC:
                continue
            first = round(_exact(timed.start) / unit)
            last = round(_exact(timed.end) / unit)
            cells[first] = str(timed.op)
            for slot in range(first + 1, last):
                cells[slot] = "="
        rows.append(f"r{rank:<4} " + " ".join(f"{cell:<{width}}" for cell in cells).rstrip())
    header = "slot  " + " ".join(f"{slot:<{width}}" for slot in range(slots)).rstrip()
    unit_note = f"one slot = {float(unit):g} time units" if unit != 1 else "one slot = 1 time unit"
    return "\n".join([header, *rows, "", unit_note, *_summary_lines(simulation)]) + "\n"


def _planned_for(schedule: Schedule) -> str:
    """Which costs the order was planned for: computed orders keep them in their options."""
    if "costs" not in schedule.options:
        return "order planned for any costs (it does not depend on them)"
    planned = OpCosts.from_text(schedule.options["costs"]).describe(schedule.split_backward)
    cap = schedule.options.get("memory_cap")
    held = f", at most {cap:g} micro-batches of L/D layers per rank" if cap is not None else ""
    return f"order planned for costs per stage {planned}{held}"


def _summary_lines(simulation: Simulation) -> list[str]:
    def numbers(values: list[float], digits: int) -> str:
        return " ".join(f"{value:.{digits}f}" for value in values)

    costs = simulation.costs
    schedule = simulation.schedule
    types = {op.type for rank_ops in schedule.ops for op in rank_ops}
    backward = " ".join(
        [f"B={costs.backward:g}"] * (OpType.BACKWARD in types)
        + [f"I={costs.backward_input:g} W={costs.backward_weight:g}"] * schedule.split_backward
    )
    lines = [
        f"{schedule.kind}: D={schedule.ranks} N={schedule.microbatches} S={schedule.stages} "
        f"costs per stage F={costs.forward:g} {backward} latency={costs.latency:g}",
        _planned_for(schedule),
        f"makespan          {simulation.makespan:g}",
        f"bubble per rank   {numbers(simulation.bubble, 3)}",
        f"peak activations  {numbers(simulation.peak_activations, 2)} "
        "(micro-batches of L/D layers)",
        f"messages          {simulation.messages}",
    ]
    for rank, starts in enumerate(simulation.sync_starts):
        syncs = " ".join(f"{name}@{start:g}" for name, start in starts.items())
        lines.append(f"sync starts r{rank:<4}{syncs}")
    return lines


def chrome_trace(simulation: Simulation) -> dict:
    """Trace Event Format for chrome://tracing or ui.perfetto.dev: one track per rank.

    One time unit of the simulation is shown as one millisecond.
    """
    schedule = simulation.schedule
    events: list[dict] = [
        {"name": "process_name", "ph": "M", "pid": 0, "args": {"name": f"{schedule.kind} schedule"}}
    ]
    for rank, rank_ops in enumerate(simulation.timeline):
        name = {"name": f"rank {rank}"}
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": rank, "args": name})
        for timed in rank_ops:
            op = timed.op
            event = {
                "name": str(op),
                "cat": op.type.value,
                "pid": 0,
                "tid": rank,
                "ts": timed.start * 1000.0,
                "args": {"pipe": op.pipe, "stage": op.stage, "microbatch": op.microbatch},
            }
            if op.type is OpType.SYNC:
                event.update(ph="i", s="t")
            else:
                event.update(ph="X", dur=(timed.end - timed.start) * 1000.0)
            events.append(event)
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def _exact(time: float) -> Fraction:
    return Fraction(time).limit_denominator(10**6)


def _common_divisor(values: list[Fraction]) -> Fraction | None:
    if not values:
        return None
    numerator = 0
    denominator = 1
    for value in values:
        denominator = denominator * value.denominator // math.gcd(denominator, value.denominator)
    for value in values:
        numerator = math.gcd(numerator, int(value * denominator))
    return Fraction(numerator, denominator)
